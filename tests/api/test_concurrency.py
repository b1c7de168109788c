"""Many writers at once: turns on one chat are paired and FIFO, different chats never wait."""

import asyncio
import time

import aiohttp
import httpx
import pytest

from tests.support.app import llm_settings, serve
from tests.support.chats import assert_paired, messages_of, new_chat, post, post_after
from tests.support.fake_openai import FakeOpenAI, Scripted


async def test_concurrent_posts_to_one_chat_are_paired_and_fifo(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.latency = 0.25
    chat_id = await new_chat(client, system_prompt="S")
    # 100 ms apart, each arrives while the one before waits or runs: a client orders them by time alone
    responses = await asyncio.gather(*(post_after(client, chat_id, f"question {n}", n * 0.1) for n in range(6)))
    assert all(r.status_code == 201 for r in responses)
    messages = await messages_of(client, chat_id)
    assert_paired(messages)
    assert [m["content"] for m in messages[::2]] == [f"question {n}" for n in range(6)]
    for n, prompt in enumerate(fake_llm.prompts):  # each reply saw every earlier turn, and only those
        expected = [{"role": "system", "content": "S"}]
        expected += [{"role": m["role"], "content": m["content"]} for m in messages[: 2 * n + 1]]
        assert prompt == expected


async def test_twenty_chats_with_five_writers_each_stay_paired(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.01
    chats = [await new_chat(client) for _ in range(20)]
    posts = [post(client, chat_id, f"{chat_id} writer {w}") for w in range(5) for chat_id in chats]
    responses = await asyncio.gather(*posts)
    assert all(r.status_code == 201 for r in responses)
    for chat_id in chats:
        messages = await messages_of(client, chat_id)
        assert len(messages) == 10
        assert_paired(messages)
        assert {m["content"] for m in messages[::2]} == {f"{chat_id} writer {w}" for w in range(5)}


async def test_two_hundred_chats_with_a_one_second_llm_take_about_a_second(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chats = [await new_chat(client) for _ in range(200)]
    fake_llm.latency = 1.0
    base = str(client.base_url)
    # aiohttp, not httpx: httpx's own cost for 200 requests at once would dwarf the server's.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def turn(chat_id: str) -> int:
            async with session.post(f"{base}/chats/{chat_id}/messages", json={"content": "hi"}) as response:
                return response.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(turn(chat_id) for chat_id in chats))
        elapsed = time.monotonic() - started
    assert statuses == [201] * 200
    assert elapsed < 3, f"200 one-second turns on 200 chats took {elapsed:.1f}s: chats waited on each other"


async def test_a_slow_chat_does_not_hold_up_another(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    slow, quick = await new_chat(client), await new_chat(client)
    fake_llm.queue(Scripted(delay=3))
    slow_turn = asyncio.create_task(post(client, slow, "take your time"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert (await post(client, quick, "quick one")).status_code == 201
    assert time.monotonic() - started < 1.5
    assert not slow_turn.done()
    assert (await slow_turn).status_code == 201


async def test_too_many_waiting_turns_on_one_chat_is_a_429(fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.3
    async with serve(llm_settings(fake_llm, max_waiting_turns=3)) as client:
        chat_id = await new_chat(client)
        accepted = [asyncio.create_task(post_after(client, chat_id, f"q{n}", n * 0.01)) for n in range(4)]
        await asyncio.sleep(0.15)  # one turn runs, three wait
        refused = await post(client, chat_id, "one too many")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"].endswith("chat-busy")
        assert all(r.status_code == 201 for r in await asyncio.gather(*accepted))
        messages = await messages_of(client, chat_id)
        assert_paired(messages)
        assert "one too many" not in [m["content"] for m in messages]
        assert (await post(client, chat_id, "room again")).status_code == 201


@pytest.mark.parametrize("failing_turn", [0, 2])
async def test_a_failed_turn_releases_the_chat_for_those_waiting(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, failing_turn: int
) -> None:
    fake_llm.latency = 0.2
    for n in range(4):
        fake_llm.queue(Scripted(status=400) if n == failing_turn else Scripted())
    chat_id = await new_chat(client)
    responses = await asyncio.gather(*(post_after(client, chat_id, f"q{n}", n * 0.05) for n in range(4)))
    assert [r.status_code for r in responses] == [502 if n == failing_turn else 201 for n in range(4)]
    roles = [m["role"] for m in await messages_of(client, chat_id)]
    assert roles.count("user") == 4
    assert roles.count("assistant") == 3
