"""Stopping a reply while it is written: what was written is stored, marked incomplete, and the chat moves on."""

import asyncio
import time
from typing import Any

import httpx

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import messages_of, new_chat, post
from tests.support.conditions import until
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.sse import sse_events

WORDS = " ".join(f"word{n}" for n in range(60))
KEYS = "alice=alice-key-0123456789,bob=bob-key-0123456789ab"


async def started_stream(client: httpx.AsyncClient, chat_id: str, seen: list[tuple[str, Any]]) -> None:
    """Stream a turn, recording (event, data) until its end."""
    body = {"content": "a long answer please", "stream": True}
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
        async for event in sse_events(response.aiter_lines()):
            if "event" in event:
                seen.append((event["event"], event["data"]))


async def test_a_stopped_stream_stores_what_was_written_and_frees_the_chat(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content=WORDS, chunk_delay=0.05))
    chat_id = await new_chat(client)
    seen: list[tuple[str, Any]] = []
    stream = asyncio.create_task(started_stream(client, chat_id, seen))
    await until(lambda: sum(kind == "delta" for kind, _ in seen) >= 5)
    question = seen[0][1]
    stopped = await client.post(f"/chats/{chat_id}/messages/{question['id']}/cancel")
    assert stopped.status_code == 200, stopped.text
    reply = stopped.json()
    await stream
    written = "".join(data["content"] for kind, data in seen if kind == "delta")
    assert seen[-1] == ("assistant_message", reply), "the stream ends with the stored, stopped reply"
    assert reply["status"] == "incomplete"
    assert reply["content"] == written
    assert WORDS.startswith(written)
    assert 0 < len(written) < len(WORDS)
    started = time.monotonic()
    assert (await post(client, chat_id, "next")).status_code == 201
    assert time.monotonic() - started < 1, "the chat is free at once"
    stored = await messages_of(client, chat_id)
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "completed"),
        ("assistant", "incomplete"),
        ("user", "completed"),
        ("assistant", "completed"),
    ]
    await until(lambda: fake_llm.abandoned == 1)  # the upstream call was dropped, not read to its end


async def test_a_stopped_plain_turn_answers_an_empty_incomplete_reply(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(delay=3.0))
    chat_id = await new_chat(client)
    turn = asyncio.create_task(post(client, chat_id, "slow"))
    await until(lambda: len(fake_llm.requests) == 1)
    question = (await messages_of(client, chat_id))[0]
    stopped = await client.post(f"/chats/{chat_id}/messages/{question['id']}/cancel")
    answered = await turn
    assert stopped.status_code == 200
    assert answered.status_code == 201
    assert answered.json()["assistant_message"] == stopped.json()
    assert (stopped.json()["content"], stopped.json()["status"]) == ("", "incomplete")


async def test_stopping_a_turn_that_is_not_running_is_a_409(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(client)
    ended = (await post(client, chat_id, "quick")).json()
    response = await client.post(f"/chats/{chat_id}/messages/{ended['user_message']['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("turn-not-running")
    fake_llm.queue(Scripted(status=400))
    failed = (await post(client, chat_id, "refused")).json()
    assert (await client.post(f"/chats/{chat_id}/messages/{failed['user_message_id']}/cancel")).status_code == 409


async def test_stopping_an_unknown_turn_or_anothers_is_a_404() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS)) as client:
        alice = {"Authorization": "Bearer alice-key-0123456789"}
        bob = {"Authorization": "Bearer bob-key-0123456789ab"}
        chat_id = (await client.post("/chats", headers=alice)).json()["id"]
        turn = (await client.post(f"/chats/{chat_id}/messages", json={"content": "hi"}, headers=alice)).json()
        question = turn["user_message"]["id"]
        for url, headers in [
            (f"/chats/{chat_id}/messages/msg_unknown/cancel", alice),
            (f"/chats/chat_unknown/messages/{question}/cancel", alice),
            (f"/chats/{chat_id}/messages/{question}/cancel", bob),
        ]:
            response = await client.post(url, headers=headers)
            assert response.status_code == 404, url
            assert response.headers["content-type"] == "application/problem+json"


async def test_a_stop_racing_the_end_of_the_reply_answers_once(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm)) as client:
        chat_id = await new_chat(client)
        for _ in range(5):
            fake_llm.queue(Scripted(content=WORDS, chunk_delay=0.001))
            seen: list[tuple[str, Any]] = []
            stream = asyncio.create_task(started_stream(client, chat_id, seen))
            await until(lambda: bool(seen))  # noqa: B023 (awaited here, before seen is rebound)
            stopped = await client.post(f"/chats/{chat_id}/messages/{seen[0][1]['id']}/cancel")
            await stream
            assert stopped.status_code in (200, 409)
            if stopped.status_code == 200:
                assert seen[-1] == ("assistant_message", stopped.json())
        stored = await messages_of(client, chat_id)
        assert [m["role"] for m in stored] == ["user", "assistant"] * 5


async def test_stopping_a_turn_that_has_its_reply_answers_at_once_on_every_store(store_url: str) -> None:
    """With processes sharing PostgreSQL, a stop asked here of a turn running nowhere waited 10 s
    for another process to answer; a stored reply says at once that the turn has ended."""
    async with serve(Settings(llm_provider="offline", store=store_url)) as client:
        chat_id = await new_chat(client)
        ended = (await post(client, chat_id, "quick")).json()
        started = time.monotonic()
        response = await client.post(f"/chats/{chat_id}/messages/{ended['user_message']['id']}/cancel")
        assert response.status_code == 409
        assert time.monotonic() - started < 1
