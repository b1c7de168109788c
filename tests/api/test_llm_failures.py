"""Upstream failures, each against the fake server: status, Retry-After, what stays stored."""

import base64
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from chatkeep.config import Settings
from chatkeep.logs import RequestIdFilter
from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted, completion, error_body
from tests.support.ports import free_port


async def assert_turn_failed(
    client: httpx.AsyncClient, chat_id: str, response: httpx.Response, status: int, slug: str
) -> dict[str, Any]:
    """The failed turn answered `status`, named its stored question, and left only that stored."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].endswith(slug)
    stored = (await client.get(f"/chats/{chat_id}/messages")).json()["data"]
    assert [m["role"] for m in stored][-1] == "user"
    assert problem["user_message_id"] == stored[-1]["id"]
    return problem


async def assert_chat_still_works(client: httpx.AsyncClient, chat_id: str) -> None:
    response = await post(client, chat_id, "are you back?")
    assert response.status_code == 201
    assert response.json()["assistant_message"]["content"] == "echo: are you back?"


async def test_server_error_is_retried_then_succeeds(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(status=500, json_body=error_body("boom")), Scripted(status=503))
    chat_id = await new_chat(client)
    response = await post(client, chat_id, "hello")
    assert response.status_code == 201
    assert len(fake_llm.requests) == 3
    assert [m["seq"] for m in (await client.get(f"/chats/{chat_id}/messages")).json()["data"]] == [1, 2]


async def test_server_errors_past_the_retries_are_a_502(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(*[Scripted(status=500, json_body=error_body("model overloaded"))] * 3)
    chat_id = await new_chat(client)
    problem = await assert_turn_failed(client, chat_id, await post(client, chat_id, "hello"), 502, "llm-bad-response")
    assert "HTTP 500" in problem["detail"]
    assert len(fake_llm.requests) == 3  # the first try and two retries
    await assert_chat_still_works(client, chat_id)


async def test_client_error_upstream_is_a_502_without_retry(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(status=404, json_body=error_body("The model `gpt-x` does not exist", "invalid_request")))
    chat_id = await new_chat(client)
    problem = await assert_turn_failed(client, chat_id, await post(client, chat_id, "hello"), 502, "llm-bad-response")
    assert "HTTP 404" in problem["detail"]
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        Scripted(raw=b"<html>not json</html>"),
        Scripted(json_body={"object": "chat.completion", "choices": []}),
        Scripted(json_body={"choices": [{"message": {"role": "assistant", "content": None}}]}),
        Scripted(json_body=["a", "list"]),
    ],
    ids=["html", "no-choices", "null-content", "list"],
)
async def test_garbage_answer_is_a_502(client: httpx.AsyncClient, fake_llm: FakeOpenAI, answer: Scripted) -> None:
    fake_llm.queue(answer)
    chat_id = await new_chat(client)
    await assert_turn_failed(client, chat_id, await post(client, chat_id, "hello"), 502, "llm-bad-response")
    await assert_chat_still_works(client, chat_id)


async def test_rate_limit_is_retried_after_the_time_upstream_asks(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(status=429, json_body=error_body("slow down", "rate_limit"), headers={"Retry-After": "1"}))
    chat_id = await new_chat(client)
    started = time.monotonic()
    response = await post(client, chat_id, "hello")
    assert response.status_code == 201
    assert time.monotonic() - started >= 1.0
    assert len(fake_llm.requests) == 2


async def test_rate_limit_past_the_retries_is_a_429_with_retry_after(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(*[Scripted(status=429, json_body=error_body("slow down"), headers={"Retry-After": "0"})] * 3)
    chat_id = await new_chat(client)
    response = await post(client, chat_id, "hello")
    await assert_turn_failed(client, chat_id, response, 429, "llm-rate-limited")
    assert int(response.headers["retry-after"]) >= 1
    assert len(fake_llm.requests) == 3
    await assert_chat_still_works(client, chat_id)


async def test_rate_limit_longer_than_the_timeout_is_passed_on_at_once(fake_llm: FakeOpenAI) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    fake_llm.queue(Scripted(status=429, json_body=error_body("quota"), headers={"Retry-After": later}))
    async with serve(llm_settings(fake_llm, llm_timeout=5)) as client:
        chat_id = await new_chat(client)
        started = time.monotonic()
        response = await post(client, chat_id, "hello")
        await assert_turn_failed(client, chat_id, response, 429, "llm-rate-limited")
    assert time.monotonic() - started < 2
    assert 100 <= int(response.headers["retry-after"]) <= 121
    assert len(fake_llm.requests) == 1


async def test_unreachable_llm_is_a_503_with_retry_after() -> None:
    port = free_port()
    settings = Settings(openai_api_key="k", openai_base_url=f"http://127.0.0.1:{port}/v1", llm_max_retries=1)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        response = await post(client, chat_id, "anyone there?")
        await assert_turn_failed(client, chat_id, response, 503, "llm-unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert str(port) not in response.text


async def test_hung_llm_is_a_504_within_the_timeout(fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(hang=True))
    async with serve(llm_settings(fake_llm, llm_timeout=0.5)) as client:
        chat_id = await new_chat(client)
        started = time.monotonic()
        response = await post(client, chat_id, "hello")
        assert time.monotonic() - started < 2
        problem = await assert_turn_failed(client, chat_id, response, 504, "llm-timeout")
        assert "0.5s" in problem["detail"]
        await assert_chat_still_works(client, chat_id)


async def test_slow_retries_stop_at_the_deadline(fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(*[Scripted(status=500, delay=0.4)] * 5)
    async with serve(llm_settings(fake_llm, llm_timeout=1, llm_max_retries=5)) as client:
        chat_id = await new_chat(client)
        started = time.monotonic()
        response = await post(client, chat_id, "hello")
    assert time.monotonic() - started < 1.8
    assert response.status_code in (502, 504)
    assert len(fake_llm.requests) < 5


async def test_llm_without_usage_still_stores_the_reply(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    body = completion("plain")
    del body["usage"]
    fake_llm.queue(Scripted(json_body=body))
    response = await post(client, await new_chat(client), "hi")
    assert response.status_code == 201
    assert response.json()["assistant_message"]["usage"] is None


async def test_nul_in_a_reply_is_stored_as_a_replacement_character(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content="before\x00after"), Scripted(content="streamed\x00reply"))
    chat_id = await new_chat(client)
    assert (await post(client, chat_id, "hi")).json()["assistant_message"]["content"] == "before\ufffdafter"
    await client.post(f"/chats/{chat_id}/messages", json={"content": "and?", "stream": True})
    stored = (await client.get(f"/chats/{chat_id}/messages")).json()["data"]
    assert [m["content"] for m in stored[1::2]] == ["before\ufffdafter", "streamed\ufffdreply"]


async def test_what_the_upstream_said_stays_in_the_server_log(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    leaky = "Incorrect API key provided: sk-test****1234. You can find your API key at https://platform.openai.com"
    fake_llm.queue(Scripted(status=401, json_body=error_body(leaky, "invalid_request_error")))
    chat_id = await new_chat(client)
    response = await post(client, chat_id, "hello")
    problem = await assert_turn_failed(client, chat_id, response, 502, "llm-bad-response")
    assert "sk-" not in response.text
    assert fake_llm.url.split("/v1")[0] not in response.text
    assert "HTTP 401" in problem["detail"]
    logged = [r for r in caplog.records if "sk-test****1234" in r.getMessage()]
    assert [getattr(r, "request_id", None) for r in logged] == [response.headers["x-request-id"]]


@pytest.mark.parametrize(
    "answer", [Scripted(cut_after=1), Scripted(raw=b'data: {"error": {"message": "upstream secret"}}\n\n')]
)
async def test_a_failed_stream_tells_the_client_nothing_of_the_upstream(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, answer: Scripted
) -> None:
    fake_llm.queue(answer)
    chat_id = await new_chat(client)
    body = {"content": "hello", "stream": True}
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=body) as r:
        text = (await r.aread()).decode()
    assert "event: error" in text
    assert "upstream secret" not in text
    assert "127.0.0.1" not in text


ROLE_ONLY = b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'  # and then the stream ends, no [DONE]


@pytest.mark.parametrize(
    ("answer", "streamed", "said"),
    [
        (Scripted(content="a b c d", garbage_after=1), True, "holds a chunk that is not a completion chunk"),
        (Scripted(raw=ROLE_ONLY), True, "ended before it was complete"),
        (Scripted(json_body={"object": "not a completion"}), False, "is not a chat completion"),
        (Scripted(json_body=completion(None)), False, "has no text content"),
    ],
)
async def test_an_answer_that_cannot_be_used_is_in_the_server_log_under_its_request(
    client: httpx.AsyncClient,
    fake_llm: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    answer: Scripted,
    streamed: bool,
    said: str,
) -> None:
    """What the client is told of an answer it cannot use, the operator reads in the log, under the
    request's id (a stream garbled after its text began is stored cut short instead)."""
    caplog.handler.addFilter(RequestIdFilter())
    fake_llm.queue(answer)
    chat_id = await new_chat(client)
    response = await client.post(f"/chats/{chat_id}/messages", json={"content": "hello", "stream": streamed})
    assert response.status_code == (200 if streamed else 502)
    assert said in response.text
    logged = [r for r in caplog.records if said in r.getMessage()]
    assert [(r.levelname, getattr(r, "request_id", None)) for r in logged] == [
        ("WARNING", response.headers["x-request-id"])
    ]


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "-5", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_upstream_retry_after_of_any_size_is_passed_on_bounded(fake_llm: FakeOpenAI, value: str) -> None:
    """`inf` was a 500 (NaN or infinity to int) and `1e308` a 309-digit header."""
    fake_llm.queue(Scripted(status=429, json_body=error_body("slow down"), headers={"Retry-After": value}))
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        response = await post(client, chat_id, "hello")
        await assert_turn_failed(client, chat_id, response, 429, "llm-rate-limited")
        assert 1 <= int(response.headers["retry-after"]) <= 86_400


async def test_credentials_in_the_base_url_are_sent_as_basic_auth_and_never_logged(
    fake_llm: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy in front of a model server may ask for user and password in the URL, with no key."""
    with_credentials = fake_llm.url.replace("http://", "http://alice:hunter2@")
    async with serve(Settings(openai_base_url=with_credentials)) as client:
        response = await post(client, await new_chat(client), "hello")
        assert response.status_code == 201, response.text
    assert fake_llm.headers[-1]["Authorization"] == "Basic " + base64.b64encode(b"alice:hunter2").decode()
    port = free_port()
    async with serve(
        Settings(openai_base_url=f"http://alice:hunter2@127.0.0.1:{port}/v1", llm_max_retries=0)
    ) as client:
        assert (await post(client, await new_chat(client), "anyone?")).status_code == 503
    assert f"127.0.0.1:{port}" in caplog.text
    assert "hunter2" not in caplog.text
