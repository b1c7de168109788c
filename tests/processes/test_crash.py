"""Real `chatkeep serve` processes on the SQL stores: killed, stalled, or several on one database."""

import asyncio
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.chats import all_messages, new_chat, post, post_after
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.servers import chatkeep_server
from tests.support.sse import events_of
from tests.support.stores import fresh_database

WRITERS = 4
ACKS_BEFORE_KILL = 40


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


async def test_acknowledged_writes_survive_kill_9(sql_store_url: str, tmp_path: Path) -> None:
    env = {"CHATKEEP_STORE": sql_store_url, "CHATKEEP_LLM_PROVIDER": "offline"}
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


async def test_two_servers_on_one_database_keep_turns_paired_and_fifo(
    sql_store_url: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.latency = 0.1  # turns overlap, so each chat's line really spans both processes
    env = {
        "CHATKEEP_STORE": sql_store_url,
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


def llm_env(url: str, fake_llm: FakeOpenAI, **more: str) -> dict[str, str]:
    return {"CHATKEEP_STORE": url, "OPENAI_BASE_URL": fake_llm.url, "OPENAI_API_KEY": "sk-test", **more}


@pytest.mark.parametrize("ending", ["reply", "cut"])
async def test_a_resume_on_another_server_follows_the_turn_live(
    fake_llm: FakeOpenAI, tmp_path: Path, ending: str
) -> None:
    words = " ".join(f"w{n}" for n in range(40))
    fake_llm.queue(Scripted(content=words, chunk_delay=0.05, cut_after=30 if ending == "cut" else None))
    async with fresh_database("postgres", tmp_path) as url, AsyncExitStack() as stack:
        env = llm_env(url, fake_llm)
        running, other = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in "ab"]
        chat_id = await new_chat(running.client)
        body = {"content": "tell me", "stream": True}
        async with running.client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
            seen = await events_of(response.aiter_lines(), stop_after=4)  # then the client's connection drops
        url_of_events = f"/chats/{chat_id}/messages/{seen[0]['data']['id']}/events"
        async with other.client.stream("GET", url_of_events, headers={"last-event-id": seen[-1]["id"]}) as response:
            assert response.status_code == 200
            rest = await events_of(response.aiter_lines())
    ids = [event["id"] for event in seen + rest]
    assert ids == [str(n) for n in range(len(ids) - 1)] + ["end"], "every event once, in order, none missing"
    deltas = "".join(event["data"]["content"] for event in seen + rest if event["event"] == "delta")
    assert sum(event["event"] == "delta" for event in rest) > 10, "the other server relayed the deltas live"
    if ending == "reply":
        assert rest[-1]["event"] == "assistant_message"
        assert deltas == words == rest[-1]["data"]["content"]
    else:  # the upstream dropped mid-reply: what was written is the reply, incomplete
        reply = rest[-1]["data"]
        assert (rest[-1]["event"], reply["status"], reply["incomplete_reason"]) == (
            "assistant_message",
            "incomplete",
            "upstream_error",
        )
        assert words.startswith(deltas)
        assert reply["content"] == deltas


async def test_a_server_that_stalls_past_its_lease_cannot_write_into_the_next_turn(
    sql_store_url: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.queue(Scripted(delay=2.0))  # the first turn's LLM call outlasts the stall
    env = llm_env(sql_store_url, fake_llm, CHATKEEP_TURN_LEASE="1")
    async with AsyncExitStack() as stack:
        stalled, other = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in "ab"]
        chat_id = await new_chat(stalled.client)
        first = asyncio.create_task(post(stalled.client, chat_id, "first"))
        await asyncio.sleep(0.5)  # its question is stored, its LLM call under way
        stalled.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(2.0)  # past its lease: the chat's turn is free again
            second = await post(other.client, chat_id, "second")
        finally:
            stalled.process.send_signal(signal.SIGCONT)
        lapsed = await first
        stored = await all_messages(other.client, chat_id)
    assert second.status_code == 201
    assert lapsed.status_code == 503
    assert lapsed.json()["type"].endswith("turn-lapsed")
    assert [(m["seq"], m["role"], m["content"]) for m in stored] == [
        (1, "user", "first"),  # its question kept, its late reply refused
        (2, "user", "second"),
        (3, "assistant", "echo: second"),
    ]


async def test_a_rate_limit_is_shared_by_every_server(sql_store_url: str, tmp_path: Path) -> None:
    env = {"CHATKEEP_STORE": sql_store_url, "CHATKEEP_LLM_PROVIDER": "offline", "CHATKEEP_RATE_LIMIT": "4/minute"}
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in range(2)]
        chat_id = await new_chat(servers[0].client)
        statuses = [(await post(servers[n % 2].client, chat_id, f"m{n}")).status_code for n in range(6)]
    assert statuses == [201, 201, 201, 201, 429, 429]


async def test_a_reply_is_stopped_from_another_server(fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    words = " ".join(f"w{n}" for n in range(60))
    fake_llm.queue(Scripted(content=words, chunk_delay=0.05))
    async with fresh_database("postgres", tmp_path) as url, AsyncExitStack() as stack:
        env = llm_env(url, fake_llm)
        running, other = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in "ab"]
        chat_id = await new_chat(running.client)
        body = {"content": "tell me", "stream": True}
        async with running.client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
            events = asyncio.create_task(events_of(response.aiter_lines()))
            await asyncio.sleep(0.5)  # some deltas are out
            question = (await all_messages(other.client, chat_id))[0]
            stopped = await other.client.post(f"/chats/{chat_id}/messages/{question['id']}/cancel")
            seen = await events
        stored = await all_messages(other.client, chat_id)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "incomplete"
    assert (seen[-1]["event"], seen[-1]["data"]) == ("assistant_message", stopped.json())
    assert stored[-1] == stopped.json()
    assert 0 < len(stopped.json()["content"]) < len(words)
