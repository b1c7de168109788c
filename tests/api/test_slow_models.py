"""Real models are slow and write long: deadlines shaped like generation, partial text kept, a fair breaker.

The fake upstream writes at a set pace on a real socket; the deadlines are set small so that a
reply lasting a few seconds is longer than each of them.
"""

import time
from typing import Any

import httpx
import pytest

from chatkeep.logs import RequestIdFilter
from tests.support.app import llm_settings, serve
from tests.support.chats import messages_of, new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.sse import sse_events

WORDS = " ".join(f"word{n}" for n in range(12))
QUICK = {"llm_first_token_timeout": 1.0, "llm_idle_timeout": 0.5, "llm_timeout": 30}


async def streamed_turn(client: httpx.AsyncClient, chat_id: str, content: str) -> list[tuple[str, Any]]:
    """Every (event, data) of one streamed turn."""
    seen: list[tuple[str, Any]] = []
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": content, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for event in sse_events(r.aiter_lines()):
            if "event" in event:
                seen.append((event["event"], event["data"]))
    return seen


async def test_a_stream_longer_than_every_deadline_completes(fake_llm: FakeOpenAI) -> None:
    """12 words at 0.25 s each: three times the first-token deadline, six times the idle one."""
    fake_llm.queue(Scripted(content=WORDS, chunk_delay=0.25))
    async with serve(llm_settings(fake_llm, **QUICK)) as client:
        chat_id = await new_chat(client)
        seen = await streamed_turn(client, chat_id, "take your time")
        kind, reply = seen[-1]
        assert kind == "assistant_message"
        assert (reply["content"], reply["status"], reply["incomplete_reason"]) == (WORDS, "completed", None)
        assert [m["content"] for m in await messages_of(client, chat_id)] == ["take your time", WORDS]


async def test_a_reply_that_begins_late_but_within_its_deadline_completes(fake_llm: FakeOpenAI) -> None:
    """The first token after 0.8 s: past the idle deadline, within the first-token one."""
    fake_llm.queue(Scripted(content="thought it through", delay=0.8), Scripted(content="also plain", delay=0.8))
    async with serve(llm_settings(fake_llm, **QUICK)) as client:
        chat_id = await new_chat(client)
        assert (await streamed_turn(client, chat_id, "think"))[-1][1]["content"] == "thought it through"
        plain = await post(client, chat_id, "and without a stream")
        assert plain.status_code == 201, plain.text
        assert plain.json()["assistant_message"]["content"] == "also plain"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Scripted(content=WORDS, stall_after=4), "timeout"),  # role, then three words, then silence
        (Scripted(content=WORDS, cut_after=4), "upstream_error"),  # the connection drops
        (Scripted(content=WORDS, garbage_after=4), "upstream_error"),  # a chunk that is no chunk
    ],
    ids=["stalls", "drops", "garbles"],
)
async def test_a_reply_cut_mid_way_keeps_its_text_as_incomplete(
    fake_llm: FakeOpenAI, store_url: str, answer: Scripted, reason: str
) -> None:
    """The idle deadline applies as soon as the reply begins, however long the first-token one is."""
    fake_llm.queue(answer)
    deadlines = QUICK | {"llm_first_token_timeout": 30}
    async with serve(llm_settings(fake_llm, store=store_url, **deadlines)) as client:
        chat_id = await new_chat(client)
        started = time.monotonic()
        seen = await streamed_turn(client, chat_id, "a long one")
        assert time.monotonic() - started < 3
        written = "".join(data["content"] for kind, data in seen if kind == "delta")
        assert written == "word0 word1 word2 "
        kind, reply = seen[-1]
        assert kind == "assistant_message", seen[-1]
        assert (reply["content"], reply["status"], reply["incomplete_reason"]) == (written, "incomplete", reason)
        stored = await messages_of(client, chat_id)
        assert [(m["role"], m["content"], m["status"], m["incomplete_reason"]) for m in stored] == [
            ("user", "a long one", "completed", None),
            ("assistant", written, "incomplete", reason),
        ]
        follow_up = await post(client, chat_id, "go on")  # the chat is free for the next turn
        assert follow_up.status_code == 201, follow_up.text
        assert fake_llm.prompts[-1][-2] == {"role": "assistant", "content": written}


async def test_a_reply_that_never_begins_is_a_timeout_with_the_question_kept(fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(hang=True), Scripted(content=WORDS, stall_after=1))  # only the role, then silence
    async with serve(llm_settings(fake_llm, **QUICK)) as client:
        chat_id = await new_chat(client)
        for _ in range(2):
            kind, problem = (await streamed_turn(client, chat_id, "hello?"))[-1]
            assert kind == "error"
            assert (problem["status"], problem["type"].rsplit(":", 1)[-1]) == (504, "llm-timeout")
            assert "did not begin its reply within 1s" in problem["detail"]
        assert [m["role"] for m in await messages_of(client, chat_id)] == ["user", "user"]


async def test_a_reply_that_never_begins_is_in_the_server_log_under_its_request(
    fake_llm: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A streamed turn answers 200 whatever happens upstream: the operator learns of the timeout
    from the log alone, as of every other failure of the upstream."""
    caplog.handler.addFilter(RequestIdFilter())
    fake_llm.queue(Scripted(hang=True))
    async with serve(llm_settings(fake_llm, **QUICK)) as client:
        chat_id = await new_chat(client)
        body = {"content": "hello?", "stream": True}
        async with client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
            assert response.status_code == 200
            await response.aread()
    logged = [r for r in caplog.records if "did not begin its reply within 1s" in r.getMessage()]
    assert [(r.levelname, getattr(r, "request_id", None)) for r in logged] == [
        ("WARNING", response.headers["x-request-id"])
    ]
    assert fake_llm.url.split("/v1")[0] in logged[0].getMessage()


async def test_slow_streams_never_open_the_breaker_while_a_dead_upstream_does(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, llm_breaker_failures=2, llm_max_retries=0, **QUICK)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        for _ in range(3):  # each stalls mid-reply and is cut by the idle deadline
            fake_llm.queue(Scripted(content=WORDS, stall_after=3))
            reply = (await streamed_turn(client, chat_id, "long"))[-1][1]
            assert reply["incomplete_reason"] == "timeout"
        healthy = await post(client, chat_id, "still there?")
        assert healthy.status_code == 201, healthy.text
        fake_llm.queue(Scripted(hang=True), Scripted(hang=True))  # never begins: the upstream is failing
        assert [(await post(client, chat_id, "hello?")).status_code for _ in range(3)] == [504, 504, 503]
        refused = await post(client, chat_id, "hello?")
        assert refused.json()["type"].endswith("llm-circuit-open")


async def test_a_question_whose_reply_was_lost_is_answered_again_in_place(fake_llm: FakeOpenAI, store_url: str) -> None:
    """After a reload the page has no Idempotency-Key to retry with: the question's own retry runs its reply."""
    async with serve(llm_settings(fake_llm, store=store_url, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(Scripted(status=500), Scripted(status=500))
        lost = (await post(client, chat_id, "first try")).json()["user_message_id"]
        retry = f"/chats/{chat_id}/messages/{lost}/retry"
        failed_again = await client.post(retry)
        assert failed_again.status_code == 502
        assert failed_again.json()["user_message_id"] == lost
        fake_llm.queue(Scripted(content="at last"))
        seen: list[tuple[str, Any]] = []
        async with client.stream("POST", retry, json={"stream": True}) as r:
            async for event in sse_events(r.aiter_lines()):
                seen += [(event["event"], event["data"])] if "event" in event else []
        assert [kind for kind, _ in seen if kind != "delta"] == ["user_message", "assistant_message"]
        assert (seen[0][1]["id"], seen[-1][1]["content"]) == (lost, "at last")
        answered_twice = await client.post(retry)
        assert answered_twice.status_code == 409
        assert answered_twice.json()["type"].endswith("chat-moved-on")
        stored = await messages_of(client, chat_id)
        assert [(m["role"], m["content"]) for m in stored] == [("user", "first try"), ("assistant", "at last")]
        not_a_question = await client.post(f"/chats/{chat_id}/messages/{stored[1]['id']}/retry")
        assert (not_a_question.status_code, not_a_question.json()["param"]) == (400, "user_message_id")
        assert (await client.post(f"/chats/{chat_id}/messages/msg_nope/retry")).status_code == 404
        assert len(await messages_of(client, chat_id)) == 2
        plain = await post(client, chat_id, "then plainly")
        assert plain.status_code == 201, plain.text
        assert fake_llm.prompts[-1][1:] == [
            {"role": "user", "content": "first try"},
            {"role": "assistant", "content": "at last"},
            {"role": "user", "content": "then plainly"},
        ]
