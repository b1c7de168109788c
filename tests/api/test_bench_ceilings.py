"""The benchmark's ceilings (bench/context_relay.py, bench/durable.py) keep chatkeep's promise for a
turn: the same context window sent upstream as chatkeep sends for the same chat, messages kept in
order, and, over SQLite and PostgreSQL, kept across a restart. A ceiling that sent less would
flatter nobody but itself; one that sent more would flatter chatkeep."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import uvicorn
from bench.context_relay import serving

from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI

# About 600 tokens a question and as many a reply (the fake echoes it): over the 8,000-token
# budget after six turns, so the window is cut from then on.
QUESTION = "Tell me about turn {n}. " + "A long question that fills the context budget. " * 50
TURNS = 9


@asynccontextmanager
async def relay(fake: FakeOpenAI, store: str) -> AsyncIterator[httpx.AsyncClient]:
    """The context relay on `store`, on a real socket in this process."""
    async with serving(fake.url, store) as app:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                yield client
        finally:
            server.should_exit = True
            await task


async def turn(client: httpx.AsyncClient, fake: FakeOpenAI, chat_id: str, n: int) -> list[dict[str, Any]]:
    """Post question `n` and return the prompt it sent upstream."""
    answer = await client.post(f"/chats/{chat_id}/messages", json={"content": QUESTION.format(n=n)})
    assert answer.status_code == 201, answer.text
    prompt: list[dict[str, Any]] = fake.prompts[-1]
    return prompt


async def test_the_context_relay_sends_the_window_chatkeep_sends(fake_llm: FakeOpenAI, store_url: str) -> None:
    async with (
        serve(llm_settings(fake_llm, rolling_summaries=False)) as chatkeep,
        relay(fake_llm, store_url) as ceiling,
    ):
        ours = (await chatkeep.post("/chats", json={})).json()["id"]
        theirs = (await ceiling.post("/chats", json={})).json()["id"]
        for n in range(TURNS):
            assert await turn(ceiling, fake_llm, theirs, n) == await turn(chatkeep, fake_llm, ours, n)
        assert fake_llm.prompts[-1][1]["content"] != QUESTION.format(n=0)  # the window was cut
        answered = (await ceiling.post(f"/chats/{theirs}/messages", json={"content": "last"})).json()
    assert answered["user_message"]["seq"] == 2 * TURNS + 1
    assert answered["assistant_message"] | {"created_at": None} == {
        "id": answered["assistant_message"]["id"],
        "chat_id": theirs,
        "seq": 2 * TURNS + 2,
        "role": "assistant",
        "content": "echo: last",
        "created_at": None,
        "model": "fake-model",
        "usage": answered["assistant_message"]["usage"],
        "status": "completed",
        "incomplete_reason": None,
    }


async def test_the_streaming_context_relay_keeps_the_turn_and_sends_the_window(
    fake_llm: FakeOpenAI, store_url: str
) -> None:
    async with (
        serve(llm_settings(fake_llm, rolling_summaries=False)) as chatkeep,
        relay(fake_llm, store_url) as ceiling,
    ):
        ours = (await chatkeep.post("/chats", json={})).json()["id"]
        theirs = (await ceiling.post("/chats", json={})).json()["id"]
        streamed: dict[str, list[tuple[str, Any]]] = {}
        prompts: dict[str, list[dict[str, str]]] = {}
        for name, client, chat_id in (("chatkeep", chatkeep, ours), ("ceiling", ceiling, theirs)):
            await turn(client, fake_llm, chat_id, 0)
            body = {"content": "stream it", "stream": True}
            response = await client.post(f"/chats/{chat_id}/messages", json=body)
            streamed[name] = _events(response.text)
            prompts[name] = fake_llm.prompts[-1]
        after = await turn(ceiling, fake_llm, theirs, 1)
    assert prompts["ceiling"] == prompts["chatkeep"]
    names = [name for name, _ in streamed["ceiling"]]
    assert (names[0], names[-1]) == ("user_message", "assistant_message")
    assert "delta" in names
    assert [data["seq"] for name, data in streamed["ceiling"] if name != "delta"] == [3, 4]
    reply = "".join(data["content"] for name, data in streamed["ceiling"] if name == "delta")
    assert streamed["ceiling"][-1][1]["content"] == reply == "echo: stream it"
    assert after[-3:-1] == [{"role": "user", "content": "stream it"}, {"role": "assistant", "content": reply}]


async def test_the_durable_relay_keeps_its_chats_across_a_restart(fake_llm: FakeOpenAI, sql_store_url: str) -> None:
    async with relay(fake_llm, sql_store_url) as ceiling:
        chat_id = (await ceiling.post("/chats", json={})).json()["id"]
        for n in range(3):
            await turn(ceiling, fake_llm, chat_id, n)
        before = await turn(ceiling, fake_llm, chat_id, 3)
    async with relay(fake_llm, sql_store_url) as ceiling:
        after = await turn(ceiling, fake_llm, chat_id, 4)
        unknown = await ceiling.post("/chats/chat_none/messages", json={"content": "hello"})
    assert after[:-1] == [*before, {"role": "assistant", "content": f"echo: {QUESTION.format(n=3)}"}]
    assert unknown.status_code == 404


def _events(text: str) -> list[tuple[str, Any]]:
    """The (event, data) pairs of an SSE body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events
