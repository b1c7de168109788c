"""What operators rely on, from chatkeep in the test's process: /metrics after real turns, request
ids, readiness, and the chat page's files served fresh."""

import asyncio
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted, error_body
from tests.support.metrics import TURN_ROUTE, metric, scrape
from tests.support.ports import free_port
from tests.support.sse import events_of
from tests.support.stores import execute_sql

METRICS_KEY = "m" * 24


async def test_metrics_count_real_turns(fake_llm: FakeOpenAI, client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    for n in range(3):
        assert (await post(client, chat_id, f"question {n}")).status_code == 201
    key = {"Idempotency-Key": "once"}
    for _ in range(2):  # the second is a replay
        response = await client.post(f"/chats/{chat_id}/messages", json={"content": "keyed"}, headers=key)
        assert response.status_code == 201
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": "streamed", "stream": True}) as s:
        assert (await events_of(s.aiter_lines()))[-1]["event"] == "assistant_message"
    assert (await post(client, "chat_missing", "q")).status_code == 404
    fake_llm.queue(Scripted(content='{"summary": "Questions.", "highlights": ["question 0"]}'))
    assert (await client.get(f"/chats/{chat_id}/summary")).status_code == 200

    text = await scrape(client)
    assert metric(text, "chatkeep_http_requests_total", method="POST", route=TURN_ROUTE, status="201") == 5
    assert metric(text, "chatkeep_http_requests_total", method="POST", route=TURN_ROUTE, status="200") == 1
    assert metric(text, "chatkeep_http_requests_total", method="POST", route=TURN_ROUTE, status="404") == 1
    assert metric(text, "chatkeep_http_request_duration_seconds_count", method="POST", route=TURN_ROUTE) == 7
    assert chat_id not in text, "routes are labelled by template, never by path"
    assert "chat_missing" not in text
    turns = 5  # three plain, one keyed, one streamed: the replay called no LLM
    assert metric(text, "chatkeep_llm_calls_total", outcome="ok") == turns + 1  # and the summary
    assert metric(text, "chatkeep_llm_call_duration_seconds_count") == turns + 1
    assert metric(text, "chatkeep_llm_time_to_first_token_seconds_count") == 1
    assert metric(text, "chatkeep_llm_prompt_tokens_total") == 11 * (turns + 1)  # the fake reports 11 a call
    assert metric(text, "chatkeep_turn_wait_seconds_count") == turns
    assert metric(text, "chatkeep_idempotent_replays_total") == 1
    assert metric(text, "chatkeep_summaries_total", outcome="made") == 1
    assert metric(text, "chatkeep_turns_in_flight") == 0
    assert metric(text, "chatkeep_turns_waiting") == 0
    assert metric(text, "chatkeep_llm_breaker_open") == 0


async def test_turns_waiting_for_their_chat_are_counted_while_they_wait(
    fake_llm: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    fake_llm.latency = 0.5
    chat_id = await new_chat(client)
    posts = [asyncio.create_task(post(client, chat_id, f"q{n}")) for n in range(3)]
    await asyncio.sleep(0.25)
    text = await scrape(client)
    assert metric(text, "chatkeep_turns_in_flight") == 3
    assert metric(text, "chatkeep_turns_waiting") == 2
    assert [response.status_code for response in await asyncio.gather(*posts)] == [201] * 3
    text = await scrape(client)
    assert metric(text, "chatkeep_turns_in_flight") == metric(text, "chatkeep_turns_waiting") == 0
    assert metric(text, "chatkeep_turn_wait_seconds_sum") >= 0.5 + 1.0  # the second waited one call, the third two


async def test_llm_failures_are_counted_by_outcome_and_open_the_breaker(fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(*(Scripted(status=500, json_body=error_body("boom")) for _ in range(2)))
    async with serve(llm_settings(fake_llm, llm_max_retries=0, llm_breaker_failures=2)) as client:
        chat_id = await new_chat(client)
        assert [(await post(client, chat_id, "q")).status_code for _ in range(3)] == [502, 502, 503]
        text = await scrape(client)
    assert metric(text, "chatkeep_llm_calls_total", outcome="llm-bad-response") == 2
    assert metric(text, "chatkeep_llm_calls_total", outcome="llm-circuit-open") == 1
    assert metric(text, "chatkeep_llm_breaker_open") == 1


async def test_metrics_can_be_turned_off_or_given_a_key(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, metrics=False)) as client:
        assert (await client.get("/metrics")).status_code == 404
    async with serve(llm_settings(fake_llm, metrics_key=METRICS_KEY)) as client:
        for headers in [{}, {"Authorization": "Bearer " + "x" * 24}]:
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert allowed.status_code == 200
        assert "chatkeep_http_requests_total" in allowed.text


async def test_a_sane_request_id_is_echoed_named_in_problems_and_sent_upstream(
    fake_llm: FakeOpenAI, client: httpx.AsyncClient
) -> None:
    chat_id = await new_chat(client)
    sent = {"X-Request-ID": "trace-42:a/b+c=d@e.f"}
    turn = await client.post(f"/chats/{chat_id}/messages", json={"content": "hi"}, headers=sent)
    assert turn.headers["x-request-id"] == sent["X-Request-ID"]
    assert fake_llm.headers[-1]["X-Request-ID"] == sent["X-Request-ID"]
    fake_llm.queue(Scripted(status=500, json_body=error_body("boom")), *(Scripted(status=500) for _ in range(2)))
    failed = await client.post(f"/chats/{chat_id}/messages", json={"content": "hi"}, headers=sent)
    assert failed.status_code == 502
    assert failed.json()["request_id"] == sent["X-Request-ID"]
    invalid = await client.post(f"/chats/{chat_id}/messages", json={"content": ""}, headers=sent)
    assert (invalid.status_code, invalid.json()["request_id"]) == (422, sent["X-Request-ID"])


@pytest.mark.parametrize("sent", ["has space", "x" * 129, 'quote"d', "é"], ids=["space", "long", "quote", "non-ascii"])
async def test_an_insane_request_id_is_replaced(offline_client: httpx.AsyncClient, sent: str) -> None:
    response = await offline_client.get("/chats/missing", headers={b"X-Request-ID": sent.encode()})
    made = response.headers["x-request-id"]
    assert made != sent
    assert len(made) == 32
    assert int(made, 16) >= 0
    assert response.json()["request_id"] == made


async def test_every_answer_gets_a_request_id_even_a_body_over_the_limit(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client)
    ids = set()
    for response in [
        await offline_client.get("/healthz"),
        await offline_client.get("/nowhere"),
        await offline_client.post(f"/chats/{chat_id}/messages", content=b"x" * (2 * 1024 * 1024)),
    ]:
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 3


async def test_readiness_needs_the_store_schema_and_liveness_does_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ready.db'}"
    async with serve(Settings(llm_provider="offline", store=url)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "store": "ok", "llm": "offline"}
        await execute_sql(url, "DELETE FROM chatkeep_migrations WHERE name = 'm004_message_status'")
        behind = await client.get("/readyz")
        assert behind.status_code == 503
        assert behind.headers["content-type"] == "application/problem+json"
        assert behind.json()["type"].endswith("store-unavailable")
        assert "m004_message_status" in behind.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200


class ModelsEndpoint:
    """An upstream's `GET /v1/models` on a real socket, answering `status` (after `delay` seconds), counting calls."""

    def __init__(self, status: int, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.calls: list[dict[str, str]] = []
        self.url = ""

    async def __aenter__(self) -> "ModelsEndpoint":
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        self.calls.append(dict(request.headers))
        await asyncio.sleep(self.delay)
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]}, status=self.status)


async def test_readiness_names_the_llm_endpoint_answering(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm)) as client:  # the fake has no /models: a 404 is an answer
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "store": "ok",
        "llm": "openai",
        "llm_endpoint": "answering (HTTP 404 to GET /models)",
    }


async def test_readiness_is_503_naming_the_llm_when_its_port_is_closed() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with serve(Settings(openai_base_url=dead)) as client:
        down = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    problem = down.json()
    assert problem["type"].endswith("llm-unavailable")
    assert problem["detail"] == "the LLM endpoint cannot be reached: connection refused"
    assert dead not in down.text  # /readyz needs no key: where the LLM is stays in the log


async def test_readiness_asks_the_llm_endpoint_with_its_key_once_for_a_burst_of_probes() -> None:
    async with ModelsEndpoint(200) as models, serve(Settings(openai_base_url=models.url, openai_api_key="sk-x")) as c:
        answers = await asyncio.gather(*(c.get("/readyz") for _ in range(10)))
        answers.append(await c.get("/readyz"))
    assert [answer.status_code for answer in answers] == [200] * 11
    assert answers[-1].json()["llm_endpoint"] == "answering (HTTP 200 to GET /models)"
    assert len(models.calls) == 1  # the verdict is kept a few seconds
    assert models.calls[0]["Authorization"] == "Bearer sk-x"


@pytest.mark.parametrize(
    ("status", "delay", "detail"),
    [
        (503, 0.0, "the LLM endpoint answered HTTP 503 to GET /models"),
        (401, 0.0, "the LLM endpoint refused the API key: HTTP 401 to GET /models"),
        (200, 3.0, "the LLM endpoint cannot be reached: no answer within 2s"),
    ],
    ids=["5xx", "key refused", "hung"],
)
async def test_readiness_is_503_when_the_llm_endpoint_fails(status: int, delay: float, detail: str) -> None:
    async with ModelsEndpoint(status, delay) as models, serve(Settings(openai_base_url=models.url)) as client:
        down = await client.get("/readyz")
    assert down.status_code == 503
    assert (down.json()["type"].rpartition(":")[2], down.json()["detail"]) == ("llm-unavailable", detail)


async def test_readiness_names_both_parts_when_both_are_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ready.db'}"
    async with serve(Settings(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", store=url)) as client:
        await execute_sql(url, "DELETE FROM chatkeep_migrations WHERE name = 'm004_message_status'")
        down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["type"].endswith("store-unavailable")
    assert "m004_message_status" in down.json()["detail"]
    assert down.json()["detail"].endswith("; the LLM endpoint cannot be reached: connection refused")


async def test_readiness_can_leave_the_llm_endpoint_unasked() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with serve(Settings(openai_base_url=dead, readyz_probe_llm=False)) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["llm_endpoint"] == "not asked (CHATKEEP_READYZ_PROBE_LLM=false)"


async def test_the_chat_page_and_its_files_are_served_fresh(offline_client: httpx.AsyncClient) -> None:
    page = await offline_client.get("/")
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert (await offline_client.head("/")).status_code == 200
    module = await offline_client.get("/web/app.js")
    assert (module.status_code, module.headers["cache-control"]) == (200, "no-cache")
    assert page.headers["cache-control"] == "no-cache"
    assert (await offline_client.get("/web/missing.js")).status_code == 404
