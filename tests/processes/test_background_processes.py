"""Background responses across real `chatkeep serve` processes on one database: made in one,
followed and cancelled from another; lost with a process killed mid-reply, and then failed."""

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.openai_sdk import until_response
from tests.support.servers import Server, chatkeep_server
from tests.support.stores import fresh_database

WORDS = " ".join(f"w{n}" for n in range(80))


def llm_env(url: str, fake_llm: FakeOpenAI, **more: str) -> dict[str, str]:
    return {"CHATKEEP_STORE": url, "OPENAI_BASE_URL": fake_llm.url, "OPENAI_API_KEY": "sk-test", **more}


def sdk_of(server: Server) -> Any:  # an AsyncOpenAI, typed loosely as in tests/openai
    return AsyncOpenAI(base_url=f"{server.client.base_url}/v1", api_key="sk-anything", max_retries=0)


async def test_a_background_response_is_followed_and_cancelled_from_another_server(
    fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.queue(Scripted(content=WORDS, chunk_delay=0.05))
    async with fresh_database("postgres", tmp_path) as url, AsyncExitStack() as stack:
        env = llm_env(url, fake_llm)
        making, other = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in "ab"]
        here, there = [await stack.enter_async_context(sdk_of(server)) for server in (making, other)]
        conversation = await here.conversations.create()
        ask = {"model": "fake-model", "conversation": conversation.id, "background": True}
        running = await here.responses.create(input="tell me", **ask)
        queued = await here.responses.create(input="and then", **ask)
        followed: list[Any] = []
        ten_deltas = asyncio.Event()

        async def follow() -> None:
            async for event in await there.responses.retrieve(running.id, stream=True):
                followed.append(event)
                if sum(event.type == "response.output_text.delta" for event in followed) >= 10:
                    ten_deltas.set()

        following = asyncio.create_task(follow())
        await asyncio.wait_for(ten_deltas.wait(), 10)
        assert (await there.responses.retrieve(queued.id)).status == "queued"
        dropped = await there.responses.cancel(queued.id)
        assert (dropped.status, dropped.output) == ("cancelled", [])
        cancelled = await there.responses.cancel(running.id)
        await asyncio.wait_for(following, 10)
        whole = [event.model_dump() async for event in await there.responses.retrieve(running.id, stream=True)]
        tail = [event async for event in await there.responses.retrieve(running.id, stream=True, starting_after=12)]
        items = [item async for item in there.conversations.items.list(conversation.id, order="asc")]
        assert (await here.responses.retrieve(queued.id)).status == "cancelled"
        await asyncio.sleep(0.5)  # the queued response would have begun by now
    assert (cancelled.status, cancelled.background) == ("cancelled", True)
    assert 0 < len(cancelled.output_text) < len(WORDS)
    assert WORDS.startswith(cancelled.output_text)
    assert [event.model_dump() for event in followed] == whole, "followed live from the other server as replayed"
    assert [event.sequence_number for event in followed] == list(range(len(followed)))
    assert (followed[-1].type, followed[-1].response.status) == ("response.incomplete", "cancelled")
    assert followed[-1].response.output_text == cancelled.output_text
    assert [event.model_dump() for event in tail] == whole[13:]
    assert [item.content[0].text for item in items] == ["tell me", cancelled.output_text]
    assert len(fake_llm.requests) == 1, "the cancelled queued response never asked the LLM"


async def test_a_background_response_lost_with_its_killed_server_ends_failed(
    sql_store_url: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.queue(Scripted(content=WORDS, chunk_delay=0.05, stall_after=10))  # writes, then falls silent
    env = llm_env(sql_store_url, fake_llm, CHATKEEP_TURN_LEASE="1")
    async with chatkeep_server(env, tmp_path / "killed.log") as killed, sdk_of(killed) as sdk:
        started = await sdk.responses.create(model="fake-model", input="tell me", background=True)
        midway = await until_response(sdk, started.id, lambda r: r.status == "in_progress" and r.output_text)
        await asyncio.sleep(0.5)  # its record refreshed with the text so far
        killed.process.kill()  # SIGKILL, mid-reply
        await killed.process.wait()
    async with chatkeep_server(env, tmp_path / "restarted.log") as restarted, sdk_of(restarted) as sdk:
        failed = await until_response(sdk, started.id, lambda r: r.status != "in_progress", seconds=10)
        events = [event async for event in await sdk.responses.retrieve(started.id, stream=True)]
        again = await sdk.responses.cancel(started.id)
    assert midway.output_text
    assert (failed.status, failed.background, failed.error.code) == ("failed", True, "server_error")
    assert "stopped" in failed.error.message
    assert (events[-1].type, events[-1].response.model_dump()) == ("response.failed", failed.model_dump())
    assert again.model_dump() == failed.model_dump()
