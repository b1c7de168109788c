"""GET /chats/{id}/summary: exact counts always, an LLM summary cached and refreshed incrementally."""

import asyncio
import re

import httpx
import orjson

from chatkeep.summaries.chat import MAX_SUMMARY_CHUNKS
from chatkeep.summaries.summarizer import INSTRUCTIONS
from tests.support.app import llm_settings, serve
from tests.support.chats import chat_with_turns, new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted


def summary_answer(summary: str, *highlights: str) -> Scripted:
    return Scripted(content=orjson.dumps({"summary": summary, "highlights": list(highlights)}).decode())


async def test_empty_chat_has_zero_counts_and_no_summary(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(client)
    summary = (await client.get(f"/chats/{chat_id}/summary")).json()
    assert summary == {
        "chat_id": chat_id,
        "message_count": 0,
        "user_message_count": 0,
        "assistant_message_count": 0,
        "first_message_at": None,
        "last_message_at": None,
        "summary": None,
        "highlights": [],
        "up_to_seq": 0,
        "stale": False,
    }
    assert fake_llm.requests == []


async def test_summary_is_made_by_the_llm_in_one_call(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "Plan a trip to Rome", "Add a day in Florence")
    messages = (await client.get(f"/chats/{chat_id}/messages")).json()["data"]
    fake_llm.queue(summary_answer("Planning Italy.", "Rome trip", "Florence day", "Trains"))
    summary = (await client.get(f"/chats/{chat_id}/summary")).json()
    assert summary["summary"] == "Planning Italy."
    assert summary["highlights"] == ["Rome trip", "Florence day", "Trains"]
    assert (summary["message_count"], summary["user_message_count"], summary["assistant_message_count"]) == (4, 2, 2)
    assert summary["first_message_at"] == messages[0]["created_at"]
    assert summary["last_message_at"] == messages[-1]["created_at"]
    assert (summary["up_to_seq"], summary["stale"]) == (4, False)
    request = fake_llm.prompts[-1]
    assert request[0] == {"role": "system", "content": INSTRUCTIONS}
    assert "user: Plan a trip to Rome" in request[1]["content"]
    assert "assistant: echo: Add a day in Florence" in request[1]["content"]
    assert len(fake_llm.requests) == 3  # two turns, one summary


async def test_summary_is_cached_until_new_messages_then_refreshed(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "first question")
    fake_llm.queue(summary_answer("About a first question.", "first"))
    await client.get(f"/chats/{chat_id}/summary")
    calls = len(fake_llm.requests)
    again = (await client.get(f"/chats/{chat_id}/summary")).json()
    assert len(fake_llm.requests) == calls
    assert again["summary"] == "About a first question."

    await post(client, chat_id, "second question")
    fake_llm.queue(summary_answer("About two questions.", "first", "second"))
    folded = (await client.get(f"/chats/{chat_id}/summary")).json()
    assert (folded["summary"], folded["up_to_seq"], folded["stale"]) == ("About two questions.", 4, False)
    sent = fake_llm.prompts[-1][1]["content"]
    assert "Previous summary:\nAbout a first question." in sent
    assert "second question" in sent
    assert "user: first question" not in sent  # summarized already: not sent again


async def test_refresh_summarizes_again_from_the_first_message(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "alpha")
    fake_llm.queue(summary_answer("Old take."))
    await client.get(f"/chats/{chat_id}/summary")
    await post(client, chat_id, "beta")
    fake_llm.queue(summary_answer("New take.", "alpha", "beta"))
    refreshed = (await client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"})).json()
    assert (refreshed["summary"], refreshed["up_to_seq"]) == ("New take.", 4)
    sent = fake_llm.prompts[-1][1]["content"]
    assert "Previous summary" not in sent
    assert "user: alpha" in sent


async def test_llm_failure_serves_the_last_good_summary_marked_stale(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "one")
    fake_llm.queue(summary_answer("Good summary.", "one"))
    await client.get(f"/chats/{chat_id}/summary")
    await post(client, chat_id, "two")
    fake_llm.queue(*[Scripted(status=500)] * 3)
    response = await client.get(f"/chats/{chat_id}/summary")
    assert response.status_code == 200
    summary = response.json()
    assert (summary["summary"], summary["up_to_seq"], summary["stale"]) == ("Good summary.", 2, True)
    assert summary["message_count"] == 4


async def test_llm_failure_without_any_summary_still_gives_counts(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "one")
    fake_llm.queue(*[Scripted(status=500)] * 3)
    response = await client.get(f"/chats/{chat_id}/summary")
    assert response.status_code == 200
    summary = response.json()
    assert (summary["summary"], summary["highlights"], summary["stale"]) == (None, [], True)
    assert summary["message_count"] == 2


async def test_concurrent_readers_share_one_refresh(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "one")
    fake_llm.queue(Scripted(delay=0.3, content='{"summary": "Shared.", "highlights": []}'))
    before = len(fake_llm.requests)
    responses = await asyncio.gather(*(client.get(f"/chats/{chat_id}/summary") for _ in range(5)))
    assert {r.json()["summary"] for r in responses} == {"Shared."}
    assert len(fake_llm.requests) == before + 1


async def test_summary_of_unknown_chat_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/chats/chat_missing/summary")
    assert response.status_code == 404
    assert response.json()["type"].endswith("chat-not-found")


async def test_offline_summary_is_extractive(offline_client: httpx.AsyncClient) -> None:
    questions = [
        "How do I bake sourdough bread at home with a cast iron pot?",
        "Thanks.",
        "What hydration should the dough have for an open crumb?",
    ]
    chat_id = await chat_with_turns(offline_client, *questions)
    summary = (await offline_client.get(f"/chats/{chat_id}/summary")).json()
    assert summary["highlights"] == questions
    assert "Offline" in summary["summary"]
    assert (summary["message_count"], summary["stale"]) == (6, False)


async def test_offline_highlights_keep_the_most_informative_five(offline_client: httpx.AsyncClient) -> None:
    questions = ["ok", *[f"question {n} " + "about many different words " * (n % 3) for n in range(8)]]
    chat_id = await chat_with_turns(offline_client, *questions[:4])
    await offline_client.get(f"/chats/{chat_id}/summary")
    for question in questions[4:]:
        await post(offline_client, chat_id, question)
    folded = (await offline_client.get(f"/chats/{chat_id}/summary")).json()
    fresh = (await offline_client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"})).json()
    assert len(folded["highlights"]) == 5
    assert "ok" not in folded["highlights"]
    assert folded["highlights"] == fresh["highlights"]


def big_items(count: int, chars: int) -> list[dict[str, str]]:
    return [{"type": "message", "role": "user", "content": f"item {n} " + "x" * chars} for n in range(count)]


def summary_calls(fake: FakeOpenAI) -> int:
    return sum(request["messages"][0]["content"] == INSTRUCTIONS for request in fake.requests)


async def test_a_refresh_takes_a_rate_slot_like_a_turn_and_a_cached_summary_none(
    store_url: str, fake_llm: FakeOpenAI
) -> None:
    async with serve(llm_settings(fake_llm, store=store_url, rate_limit="3/minute")) as client:
        chat_id = await chat_with_turns(client, "one")  # slot 1
        first = await client.get(f"/chats/{chat_id}/summary")  # the first summary calls the LLM: slot 2
        assert (first.status_code, first.json()["stale"]) == (200, False)
        calls = len(fake_llm.requests)
        for refresh in ("false", "true", "true"):  # cached and current: no call, no slot
            again = await client.get(f"/chats/{chat_id}/summary", params={"refresh": refresh})
            assert (again.status_code, again.json()["summary"]) == (200, first.json()["summary"])
        assert len(fake_llm.requests) == calls
        assert (await post(client, chat_id, "two")).status_code == 201  # slot 3
        calls = len(fake_llm.requests)
        refreshes = [await client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"}) for _ in range(10)]
        assert {response.status_code for response in refreshes} == {429}
        assert refreshes[0].json()["type"].endswith("rate-limited")
        assert 1 <= int(refreshes[0].headers["retry-after"]) <= 60
        stale = await client.get(f"/chats/{chat_id}/summary")  # without refresh: the cached one, marked stale
        assert stale.status_code == 200
        served = stale.json()
        assert (served["summary"], served["stale"], served["message_count"]) == (first.json()["summary"], True, 4)
        items = [{"type": "message", "role": "user", "content": "never summarized"}]
        fresh = (await client.post("/v1/conversations", json={"items": items})).json()["id"]
        refused = await client.get(f"/chats/{fresh}/summary")  # a first summary must call the LLM
        assert refused.status_code == 429
        assert len(fake_llm.requests) == calls
        assert (await post(client, chat_id, "three")).status_code == 429


async def test_a_refresh_makes_a_bounded_number_of_upstream_calls_whatever_the_chat_holds(
    store_url: str, fake_llm: FakeOpenAI
) -> None:
    settings = llm_settings(fake_llm, store=store_url, context_tokens=1000)  # 500 tokens of messages a call
    async with serve(settings) as client:
        chat_id = (await client.post("/v1/conversations")).json()["id"]
        for _ in range(3):  # 60 items of about 750 tokens each: one call apiece, before
            added = await client.post(f"/v1/conversations/{chat_id}/items", json={"items": big_items(20, 3000)})
            assert added.status_code == 200
        summaries = []
        for _ in range(MAX_SUMMARY_CHUNKS * 60):
            before = len(fake_llm.requests)
            summary = (await client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"})).json()
            assert 1 <= len(fake_llm.requests) - before <= MAX_SUMMARY_CHUNKS
            summaries.append(summary)
            if not summary["stale"]:
                break
        assert summaries[-1]["up_to_seq"] == 60
        assert [s["up_to_seq"] for s in summaries] == sorted({s["up_to_seq"] for s in summaries})  # each got further
        for request in fake_llm.requests:  # each message sent at most the 500 tokens (2,000 ASCII characters) of a call
            transcript = re.split("(?:New messages|Conversation):\n", request["messages"][1]["content"])[-1]
            assert 0 < len(transcript) <= 2000 + len("user: ")
        calls = len(fake_llm.requests)
        for _ in range(3):  # nothing new: cached
            assert (await client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"})).json()["stale"] is False
        assert len(fake_llm.requests) == calls
        await post(client, chat_id, "one more")  # which updates the rolling summary too, in the background
        calls = summary_calls(fake_llm)
        summary = (await client.get(f"/chats/{chat_id}/summary", params={"refresh": "true"})).json()
        assert summary["up_to_seq"] == 62
        assert summary_calls(fake_llm) - calls <= MAX_SUMMARY_CHUNKS
