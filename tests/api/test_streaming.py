"""Streamed turns over a real socket: event order, disconnects that lose nothing, resuming, failures."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatkeep.turns import events as turn_events
from chatkeep.turns import running
from tests.support.app import llm_settings, serve
from tests.support.chats import assert_paired, messages_of, new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.sse import Event, events_of


async def stream_turn(client: httpx.AsyncClient, chat_id: str, content: str) -> list[Event]:
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": content, "stream": True}) as r:
        assert r.status_code == 200
        return await events_of(r.aiter_lines())


def content_of(events: list[Event]) -> str:
    return "".join(e["data"]["content"] for e in events if e.get("event") == "delta")


async def test_streamed_turn_sends_user_message_deltas_then_the_stored_reply(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(client)
    request = {"content": "tell me a story", "stream": True}
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        events = await events_of(response.aiter_lines())
    kinds = [e["event"] for e in events]
    assert kinds == ["user_message"] + ["delta"] * (len(events) - 2) + ["assistant_message"]
    assert [e["id"] for e in events] == [str(n) for n in range(len(events) - 1)] + ["end"]
    assert events[0]["data"]["content"] == "tell me a story"
    final = events[-1]["data"]
    assert content_of(events) == final["content"] == "echo: tell me a story"
    assert final["usage"] == {"prompt_tokens": 11, "completion_tokens": 5}
    assert final["model"] == "fake-model"
    assert await messages_of(client, chat_id) == [events[0]["data"], final]
    assert fake_llm.requests[0]["stream"] is True
    assert fake_llm.requests[0]["stream_options"] == {"include_usage": True}


async def test_accept_header_asks_for_a_stream_too(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    headers = {"accept": "text/event-stream"}
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": "hi"}, headers=headers) as r:
        events = await events_of(r.aiter_lines())
    assert events[-1]["event"] == "assistant_message"


async def test_offline_provider_streams_its_reply(offline_client: httpx.AsyncClient) -> None:
    events = await stream_turn(offline_client, await new_chat(offline_client), "hello")
    assert len(events) > 5
    assert content_of(events) == events[-1]["data"]["content"]
    assert "offline" in events[-1]["data"]["content"]


@pytest.mark.parametrize(
    ("chat", "body", "status"), [("missing", {"content": "hi"}, 404), ("real", {"content": ""}, 422)]
)
async def test_problems_are_decided_before_the_stream_starts(
    client: httpx.AsyncClient, chat: str, body: dict[str, Any], status: int
) -> None:
    chat_id = await new_chat(client) if chat == "real" else "chat_missing"
    response = await client.post(f"/chats/{chat_id}/messages", json=body | {"stream": True})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_busy_chat_is_a_429_before_the_stream_starts(fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.5
    async with serve(llm_settings(fake_llm, max_waiting_turns=0)) as client:
        chat_id = await new_chat(client)
        running = asyncio.create_task(post(client, chat_id, "first"))
        await asyncio.sleep(0.1)
        response = await client.post(f"/chats/{chat_id}/messages", json={"content": "second", "stream": True})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert (await running).status_code == 201


async def test_a_client_that_disconnects_loses_nothing(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    words = " ".join(f"w{n}" for n in range(30))
    fake_llm.queue(Scripted(content=words, chunk_delay=0.02))
    chat_id = await new_chat(client)
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": "go", "stream": True}) as r:
        seen = await events_of(r.aiter_lines(), stop_after=3)
    assert [e["event"] for e in seen] == ["user_message", "delta", "delta"]
    for _ in range(100):
        messages = await messages_of(client, chat_id)
        if len(messages) == 2:
            break
        await asyncio.sleep(0.05)
    assert [m["content"] for m in messages] == ["go", words]


async def test_resume_with_last_event_id_gets_the_rest_live(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    words = " ".join(f"w{n}" for n in range(30))
    fake_llm.queue(Scripted(content=words, chunk_delay=0.02))
    chat_id = await new_chat(client)
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": "go", "stream": True}) as r:
        first = await events_of(r.aiter_lines(), stop_after=4)
    user_message_id = first[0]["data"]["id"]
    url = f"/chats/{chat_id}/messages/{user_message_id}/events"
    async with client.stream("GET", url, headers={"last-event-id": first[-1]["id"]}) as r:
        assert r.status_code == 200
        rest = await events_of(r.aiter_lines())
    assert rest[0]["id"] == str(int(first[-1]["id"]) + 1)
    assert rest[-1]["event"] == "assistant_message"
    assert content_of(first) + content_of(rest) == words == rest[-1]["data"]["content"]


async def test_resume_after_the_end_gets_the_final_event(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    streamed = await stream_turn(client, chat_id, "streamed")
    url = f"/chats/{chat_id}/messages/{streamed[0]['data']['id']}/events"
    async with client.stream("GET", url, headers={"last-event-id": "2"}) as r:
        rest = await events_of(r.aiter_lines())
    assert rest == streamed[3:]
    async with client.stream("GET", url, headers={"last-event-id": "end"}) as r:
        assert await events_of(r.aiter_lines()) == []


async def test_resume_of_a_plain_turn_reads_the_reply_from_the_store(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    turn = (await post(client, chat_id, "plain")).json()
    url = f"/chats/{chat_id}/messages/{turn['user_message']['id']}/events"
    async with client.stream("GET", url) as r:
        events = await events_of(r.aiter_lines())
    assert events == [{"id": "end", "event": "assistant_message", "data": turn["assistant_message"]}]


async def test_resume_of_an_unanswered_message_ends_with_an_error_event(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(status=400))
    chat_id = await new_chat(client)
    failed = (await post(client, chat_id, "no luck")).json()
    url = f"/chats/{chat_id}/messages/{failed['user_message_id']}/events"
    async with client.stream("GET", url) as r:
        events = await events_of(r.aiter_lines())
    assert [(e["id"], e["event"], e["data"]["status"]) for e in events] == [("end", "error", 404)]


async def test_resume_of_an_unknown_message_is_a_404_problem(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    response = await client.get(f"/chats/{chat_id}/messages/msg_missing/events")
    assert response.status_code == 404
    assert response.json()["type"].endswith("message-not-found")
    assert (await client.get("/chats/chat_missing/messages/msg_missing/events")).status_code == 404


@pytest.mark.parametrize(
    "answer",
    [Scripted(cut_after=1), Scripted(garbage_after=1), Scripted(status=400), Scripted(cut_after=0)],
    ids=["cut", "garbage", "refused", "cut-before-any-chunk"],
)
async def test_a_broken_upstream_stream_ends_with_an_error_and_stores_no_reply(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, answer: Scripted
) -> None:
    """Broken before any text was written (mid-reply breaks keep their text: test_slow_models.py)."""
    fake_llm.queue(answer)
    chat_id = await new_chat(client)
    events = await stream_turn(client, chat_id, "hello")
    assert events[0]["event"] == "user_message"
    error = events[-1]
    assert (error["event"], error["id"]) == ("error", "end")
    assert error["data"]["status"] == 502
    assert error["data"]["type"].endswith("llm-bad-response")
    assert error["data"]["user_message_id"] == events[0]["data"]["id"]
    assert [m["role"] for m in await messages_of(client, chat_id)] == ["user"]
    assert (await post(client, chat_id, "again")).status_code == 201


async def test_streamed_and_plain_turns_mixed_on_one_chat_stay_paired(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.latency = 0.5
    chat_id = await new_chat(client)

    async def turn(n: int) -> None:
        # each arrives while the one before waits or runs; 200 ms apart, so that a loaded
        # machine's client scheduling cannot send them out of order (100 ms once did, under CI)
        await asyncio.sleep(n * 0.2)
        if n % 2:
            events = await stream_turn(client, chat_id, f"q{n}")
            assert events[-1]["event"] == "assistant_message"
        else:
            assert (await post(client, chat_id, f"q{n}")).status_code == 201

    await asyncio.gather(*(turn(n) for n in range(6)))
    messages = await messages_of(client, chat_id)
    assert_paired(messages)
    assert [m["content"] for m in messages[::2]] == [f"q{n}" for n in range(6)]


async def test_an_idle_stream_gets_keep_alive_comments(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_events, "KEEPALIVE_SECONDS", 0.1)
    fake_llm.queue(Scripted(delay=0.5))
    events = await stream_turn(client, await new_chat(client), "slow")
    assert {"comment": "keep-alive"} in events
    assert events[-1]["event"] == "assistant_message"


@pytest.mark.parametrize("last_event_id", ["2", "12", "999", "not-an-id"])
async def test_resume_on_another_process_after_the_end_always_ends_with_the_reply(
    fake_llm: FakeOpenAI, tmp_path: Path, last_event_id: str
) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    async with serve(llm_settings(fake_llm, store=store)) as first, serve(llm_settings(fake_llm, store=store)) as other:
        chat_id = await new_chat(first)
        streamed = await stream_turn(first, chat_id, " ".join(f"w{n}" for n in range(20)))
        url = f"/chats/{chat_id}/messages/{streamed[0]['data']['id']}/events"
        async with other.stream("GET", url, headers={"last-event-id": last_event_id}) as r:
            rest = await events_of(r.aiter_lines())
    assert rest == [streamed[-1]], "the process that did not run the turn sends its stored reply"


async def test_resume_after_the_log_was_forgotten_ends_with_the_reply(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running, "KEEP_ENDED_SECONDS", 0.0)
    chat_id = await new_chat(client)
    streamed = await stream_turn(client, chat_id, "one two three four five")
    url = f"/chats/{chat_id}/messages/{streamed[0]['data']['id']}/events"
    async with client.stream("GET", url, headers={"last-event-id": "3"}) as r:
        assert await events_of(r.aiter_lines()) == [streamed[-1]]


async def test_a_streamed_retry_of_a_failed_streamed_turn_breaks_nothing_later(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running, "KEEP_ENDED_SECONDS", 0.2)
    fake_llm.queue(Scripted(status=400))
    chat_id = await new_chat(client)
    request = {"content": "retry me", "stream": True}
    headers = {"Idempotency-Key": "streamed-retry"}
    tries = []
    for _ in range(2):  # the retry re-runs the reply to the same question
        async with client.stream("POST", f"/chats/{chat_id}/messages", json=request, headers=headers) as r:
            tries.append(await events_of(r.aiter_lines()))
    assert [events[-1]["event"] for events in tries] == ["error", "assistant_message"]
    await asyncio.sleep(0.3)  # both ends of the one turn are now old enough to be forgotten
    url = f"/chats/{chat_id}/messages/{tries[0][0]['data']['id']}/events"
    async with client.stream("GET", url, headers={"last-event-id": "1"}) as r:
        assert r.status_code == 200
        assert (await events_of(r.aiter_lines())) == [tries[1][-1]]
    for _ in range(3):
        assert (await stream_turn(client, chat_id, "later"))[-1]["event"] == "assistant_message"
        assert (await post(client, chat_id, "plain")).status_code == 201
    assert [m["content"] for m in await messages_of(client, chat_id)][:2] == ["retry me", "echo: retry me"]
