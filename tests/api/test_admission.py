"""The one way in for work on a chat, whichever API it comes by: a retry is replayed before any
limit is counted, a refused request leaves nothing behind, and queued turns keep time in order."""

import asyncio
from datetime import datetime
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.support.app import llm_settings, serve
from tests.support.chats import keyed, new_chat, post, post_after
from tests.support.conditions import until
from tests.support.fake_openai import FakeOpenAI


async def test_a_retry_of_a_turn_that_succeeded_is_replayed_past_the_rate_limit(fake_llm: FakeOpenAI) -> None:
    """The retry finds its stored answer before a rate slot is counted: it is answered, not refused."""
    async with serve(llm_settings(fake_llm, rate_limit="1/minute")) as client:
        chat_id = await new_chat(client)
        path = f"/chats/{chat_id}/messages"
        first = await client.post(path, json={"content": "hi"}, headers=keyed("turn-1"))
        assert first.status_code == 201, first.text
        retried = await client.post(path, json={"content": "hi"}, headers=keyed("turn-1"))
        streamed = await client.post(path, json={"content": "hi", "stream": True}, headers=keyed("turn-1"))
        assert (await post(client, chat_id, "a new question")).status_code == 429
        assert (retried.status_code, retried.json()) == (201, first.json())
        assert streamed.status_code == 200
        assert first.json()["assistant_message"]["id"] in streamed.text
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 2
    assert len(fake_llm.prompts) == 1


async def test_a_retried_response_is_replayed_past_the_rate_limit(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, rate_limit="1/minute")) as client:
        sdk = AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="sk-anything", max_retries=0)
        async with sdk:
            conversation = await sdk.conversations.create()
            ask: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hi", "conversation": conversation.id}
            first = await sdk.responses.create(**ask, extra_headers=keyed("response-1"))
            retried = await sdk.responses.create(**ask, extra_headers=keyed("response-1"))
            with pytest.raises(openai.RateLimitError):
                await sdk.responses.create(**ask)
    assert retried.model_dump() == first.model_dump()
    assert len(fake_llm.prompts) == 1


async def test_items_appended_are_turns_counted_by_the_rate_limit_and_replayed_past_it(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, rate_limit="1/minute")) as client:
        sdk: Any = AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="sk-anything", max_retries=0)
        async with sdk:
            conversation = await sdk.conversations.create()
            items = [{"type": "message", "role": "user", "content": "note this"}]
            first = await sdk.conversations.items.create(conversation.id, items=items, extra_headers=keyed("items-1"))
            retried = await sdk.conversations.items.create(conversation.id, items=items, extra_headers=keyed("items-1"))
            with pytest.raises(openai.RateLimitError):
                await sdk.conversations.items.create(conversation.id, items=items)
        stored = (await client.get(f"/chats/{conversation.id}")).json()["message_count"]
    assert retried.model_dump() == first.model_dump()
    assert stored == 1
    assert fake_llm.requests == []


async def test_a_conversation_refused_for_capacity_leaves_no_chat_behind(fake_llm: FakeOpenAI) -> None:
    """A conversation created with items while the server is at capacity: whatever the first try
    answers, its retry with the same key is the one conversation the owner has."""
    fake_llm.latency = 1.0
    async with serve(llm_settings(fake_llm, max_turns_in_flight=1)) as client:
        busy_chat = await new_chat(client)
        running = asyncio.create_task(post(client, busy_chat, "keep the server busy"))
        await until(lambda: bool(fake_llm.prompts))
        sdk: Any = AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="sk-anything", max_retries=0)
        async with sdk:
            items = [{"type": "message", "role": "user", "content": "remember this"}]
            first = await created_or_refused(sdk, items, "conversation-1")
            assert (await running).status_code == 201
            retried = await sdk.conversations.create(items=items, extra_headers=keyed("conversation-1"))
        chats = (await client.get("/chats")).json()["data"]
    assert sorted(chat["id"] for chat in chats) == sorted([busy_chat, retried.id])
    assert first == 503 or first.id == retried.id
    conversation = next(chat for chat in chats if chat["id"] == retried.id)
    assert conversation["message_count"] == 1


async def created_or_refused(sdk: Any, items: list[dict[str, str]], key: str) -> Any:
    """The conversation created, or the status it was refused with."""
    try:
        return await sdk.conversations.create(items=items, extra_headers=keyed(key))
    except openai.APIStatusError as refused:
        return refused.status_code


async def test_queued_questions_are_stored_in_time_order(store_url: str, fake_llm: FakeOpenAI) -> None:
    """Turns that waited in line store their question when their turn comes, after the reply
    before them: `created_at` never goes backwards within a chat, nor does the summary's last time."""
    fake_llm.latency = 0.3
    async with serve(llm_settings(fake_llm, store=store_url)) as client:
        chat_id = await new_chat(client)
        answers = await asyncio.gather(*(post_after(client, chat_id, f"question {n}", 0.05 * n) for n in range(3)))
        assert [answer.status_code for answer in answers] == [201] * 3
        messages = (await client.get(f"/chats/{chat_id}/messages")).json()["data"]
        summary = (await client.get(f"/chats/{chat_id}/summary")).json()
    times = [datetime.fromisoformat(message["created_at"]) for message in messages]
    assert [message["seq"] for message in messages] == list(range(1, 7))
    assert times == sorted(times), [(m["seq"], m["role"], m["created_at"]) for m in messages]
    assert datetime.fromisoformat(summary["last_message_at"]) == times[-1]
