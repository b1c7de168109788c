"""Idempotency-Key on POST /chats and POST /chats/{id}/messages: retries are answered once."""

import asyncio
from typing import Any

import httpx
import pytest

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import keyed, new_chat
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.sse import events_of

KEY = "3f0c9a52-retry-me"


async def post_keyed(
    client: httpx.AsyncClient, chat_id: str, content: str, key: str = KEY, **extra: Any
) -> httpx.Response:
    return await client.post(f"/chats/{chat_id}/messages", json={"content": content, **extra}, headers=keyed(key))


async def stored(client: httpx.AsyncClient, chat_id: str) -> list[tuple[str, str]]:
    data = (await client.get(f"/chats/{chat_id}/messages")).json()["data"]
    return [(m["role"], m["content"]) for m in data]


async def test_a_retried_chat_creation_gets_the_first_chat(offline_client: httpx.AsyncClient) -> None:
    body = {"title": "Once", "metadata": {"b": "2", "a": "1"}}
    first = await offline_client.post("/chats", json=body, headers=keyed(KEY))
    again = await offline_client.post(
        "/chats", json={"metadata": {"a": "1", "b": "2"}, "title": "Once"}, headers=keyed(KEY)
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert len((await offline_client.get("/chats")).json()["data"]) == 1


async def test_a_key_reused_for_another_body_is_a_422(offline_client: httpx.AsyncClient) -> None:
    await offline_client.post("/chats", json={"title": "A"}, headers=keyed(KEY))
    response = await offline_client.post("/chats", json={"title": "B"}, headers=keyed(KEY))
    assert response.status_code == 422
    assert response.json()["type"].endswith("idempotency-key-reused")
    assert [c["title"] for c in (await offline_client.get("/chats")).json()["data"]] == ["A"]


@pytest.mark.parametrize("key", ["k" * 256, "has space", ""])
async def test_a_malformed_key_is_a_422_and_stores_nothing(offline_client: httpx.AsyncClient, key: str) -> None:
    response = await offline_client.post("/chats", headers=keyed(key))
    assert response.status_code == 422
    assert (await offline_client.get("/chats")).json()["data"] == []


async def test_a_key_of_255_characters_is_fine(offline_client: httpx.AsyncClient) -> None:
    assert (await offline_client.post("/chats", headers=keyed("k" * 255))).status_code == 201


async def test_keys_are_scoped_per_owner() -> None:
    alice, bob = "alice-key-0123456789", "bob-key-0123456789ab"
    async with serve(Settings(llm_provider="offline", api_keys=f"alice={alice},bob={bob}")) as client:
        ids = [
            (await client.post("/chats", headers={"Authorization": f"Bearer {secret}"} | keyed(KEY))).json()["id"]
            for secret in (alice, bob)
        ]
    assert ids[0] != ids[1]


async def test_a_retried_turn_is_replayed_not_run_again(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(client)
    first = await post_keyed(client, chat_id, "only once")
    again = await post_keyed(client, chat_id, "only once")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert await stored(client, chat_id) == [("user", "only once"), ("assistant", "echo: only once")]
    assert len(fake_llm.requests) == 1


async def test_the_same_key_while_the_first_is_in_flight_is_a_409(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.latency = 0.5
    chat_id = await new_chat(client)
    first = asyncio.create_task(post_keyed(client, chat_id, "slow"))
    await asyncio.sleep(0.2)
    clash = await post_keyed(client, chat_id, "slow")
    assert clash.status_code == 409
    assert clash.json()["type"].endswith("idempotency-key-in-flight")
    assert clash.headers["retry-after"] == "1"
    assert (await first).status_code == 201
    assert (await post_keyed(client, chat_id, "slow")).json() == (await first).json()
    assert len(fake_llm.requests) == 1


async def test_after_an_llm_failure_a_retry_runs_only_the_reply(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(Scripted(status=500))
        failed = await post_keyed(client, chat_id, "try twice")
        assert failed.status_code == 502
        retried = await post_keyed(client, chat_id, "try twice")
        assert retried.status_code == 201
        turn = retried.json()
        assert turn["user_message"]["id"] == failed.json()["user_message_id"]
        assert (turn["user_message"]["seq"], turn["assistant_message"]["seq"]) == (1, 2)
        assert await stored(client, chat_id) == [("user", "try twice"), ("assistant", "echo: try twice")]
        assert [m["content"] for m in fake_llm.prompts[1]][1:] == ["try twice"]
        assert (await post_keyed(client, chat_id, "try twice")).json() == turn


async def test_a_retry_after_the_chat_moved_on_is_a_409(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(Scripted(status=500))
        assert (await post_keyed(client, chat_id, "first")).status_code == 502
        assert (await post_keyed(client, chat_id, "second", key="other")).status_code == 201
        late = await post_keyed(client, chat_id, "first")
        assert late.status_code == 409
        assert late.json()["type"].endswith("chat-moved-on")
        assert [role for role, _ in await stored(client, chat_id)] == ["user", "user", "assistant"]


async def test_a_request_refused_before_storing_anything_frees_its_key(fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.4
    async with serve(llm_settings(fake_llm, max_waiting_turns=0)) as client:
        chat_id = await new_chat(client)
        running = asyncio.create_task(post_keyed(client, chat_id, "first", key="one"))
        await asyncio.sleep(0.1)
        busy = await post_keyed(client, chat_id, "second", key="two")
        assert busy.status_code == 429
        await running
        assert (await post_keyed(client, chat_id, "second", key="two")).status_code == 201
        assert [c for _, c in await stored(client, chat_id)][::2] == ["first", "second"]


async def test_a_streamed_turn_is_replayed_plain_or_streamed(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(client)
    request = {"content": "stream once", "stream": True}
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=request, headers=keyed(KEY)) as r:
        first = await events_of(r.aiter_lines())
    plain = (await post_keyed(client, chat_id, "stream once")).json()
    assert plain["user_message"] == first[0]["data"]
    assert plain["assistant_message"] == first[-1]["data"]
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=request, headers=keyed(KEY)) as r:
        replayed = await events_of(r.aiter_lines())
    assert [(e["id"], e["event"]) for e in replayed] == [("0", "user_message"), ("end", "assistant_message")]
    assert replayed[-1]["data"] == first[-1]["data"]
    assert len(fake_llm.requests) == 1


async def test_a_failed_streamed_turn_is_retried_streamed(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(Scripted(cut_after=1))  # cut before any text: nothing to keep
        request = {"content": "cut me", "stream": True}
        async with client.stream("POST", f"/chats/{chat_id}/messages", json=request, headers=keyed(KEY)) as r:
            failed = await events_of(r.aiter_lines())
        assert failed[-1]["event"] == "error"
        async with client.stream("POST", f"/chats/{chat_id}/messages", json=request, headers=keyed(KEY)) as r:
            retried = await events_of(r.aiter_lines())
        assert retried[0]["data"]["id"] == failed[0]["data"]["id"]
        assert retried[-1]["event"] == "assistant_message"
        assert await stored(client, chat_id) == [("user", "cut me"), ("assistant", "echo: cut me")]
