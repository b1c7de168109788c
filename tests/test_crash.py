"""Real `chatkeep serve` processes on the SQL stores: killed with SIGKILL, or two on one database."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import new_chat, post
from tests.fake_openai import FakeOpenAI
from tests.servers import all_messages, chatkeep_server
from tests.stores import SQL_STORES, fresh_database

WRITERS = 4
ACKS_BEFORE_KILL = 40


@pytest.fixture(params=SQL_STORES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@dataclass
class Acknowledged:
    chats: list[str] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by chat id
    enough: asyncio.Event = field(default_factory=asyncio.Event)  # time to kill the server

    def count(self) -> int:
        return sum(len(messages) for messages in self.messages.values())


async def write_until_gone(client: httpx.AsyncClient, writer: int, acked: Acknowledged) -> None:
    """Create chats and post turns until the server stops answering; record what it acknowledged."""
    try:
        for turn in range(10_000):
            if turn % 5 == 0:
                chat_id = await new_chat(client, title=f"writer {writer}")
                acked.chats.append(chat_id)
                acked.messages[chat_id] = []
            response = await post(client, chat_id, f"writer {writer} turn {turn}")
            assert response.status_code == 201, response.text
            body = response.json()
            acked.messages[chat_id] += [body["user_message"], body["assistant_message"]]
            if acked.count() >= ACKS_BEFORE_KILL:
                acked.enough.set()
    except (httpx.TransportError, AssertionError):
        return
    finally:
        acked.enough.set()  # a writer that stops early must not leave the test waiting


async def test_acknowledged_writes_survive_kill_9(url: str, tmp_path: Path) -> None:
    env = {"CHATKEEP_STORE": url, "CHATKEEP_LLM_PROVIDER": "offline"}
    acked = Acknowledged()
    async with chatkeep_server(env, tmp_path / "killed.log") as server:
        writers = [asyncio.create_task(write_until_gone(server.client, w, acked)) for w in range(WRITERS)]
        await acked.enough.wait()
        server.process.kill()  # SIGKILL, with writes in flight
        await asyncio.gather(*writers)
    assert acked.count() >= ACKS_BEFORE_KILL
    async with chatkeep_server(env, tmp_path / "restarted.log") as server:
        for chat_id in acked.chats:
            stored = await all_messages(server.client, chat_id)
            assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
            by_id = {m["id"]: m for m in stored}
            for message in acked.messages[chat_id]:
                assert by_id.get(message["id"]) == message


async def post_after(client: httpx.AsyncClient, chat_id: str, content: str, delay: float) -> httpx.Response:
    await asyncio.sleep(delay)
    return await post(client, chat_id, content)


async def test_two_servers_on_one_database_keep_turns_paired_and_fifo(
    url: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.latency = 0.1  # turns overlap, so each chat's line really spans both processes
    env = {
        "CHATKEEP_STORE": url,
        "CHATKEEP_LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_API_KEY": "sk-test",
    }
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in range(2)]
        clients = [server.client for server in servers]
        for client in clients:  # a cold first request could fall behind one sent after it
            assert (await post(client, await new_chat(client), "warm up")).status_code == 201
        chats = [await new_chat(clients[0]) for _ in range(3)]
        posts = [
            post_after(clients[n % 2], chat_id, f"{chat_id} q{n}", n * 0.05) for chat_id in chats for n in range(6)
        ]
        assert [r.status_code for r in await asyncio.gather(*posts)] == [201] * len(posts)
        stored = {chat_id: await all_messages(clients[1], chat_id) for chat_id in chats}
    for chat_id, messages in stored.items():
        assert [m["seq"] for m in messages] == list(range(1, 13))
        assert [(m["role"], m["content"]) for m in messages[::2]] == [("user", f"{chat_id} q{n}") for n in range(6)]
        assert [m["content"] for m in messages[1::2]] == [f"echo: {chat_id} q{n}" for n in range(6)]
    for prompt in fake_llm.prompts[2:]:  # each reply saw every earlier turn of its chat, from either process
        chat_id, _, n = prompt[-1]["content"].rpartition(" q")
        expected = stored[chat_id][: 2 * int(n) + 1]
        assert prompt[1:] == [{"role": m["role"], "content": m["content"]} for m in expected]
