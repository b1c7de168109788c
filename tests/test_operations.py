"""What operators rely on: /metrics after real turns, request ids, logs, readiness, SIGTERM, bad settings."""

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatkeep.config import Settings
from chatkeep.metrics import SNAPSHOT_SECONDS
from tests.conftest import llm_settings, new_chat, post, serve
from tests.fake_openai import FakeOpenAI, Scripted, error_body
from tests.servers import CHATKEEP, all_messages, chatkeep_server
from tests.stores import execute_sql

TURN_ROUTE = "/chats/{chat_id}/messages"
METRICS_KEY = "m" * 24
# uvicorn ends a graceful shutdown by raising the signal it caught again, so that whoever sent
# SIGTERM sees the process end by it.
GRACEFUL_EXIT = (0, -signal.SIGTERM)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def events_of(response: httpx.Response) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, orjson.loads(line[6:])))
    return events


async def test_metrics_count_real_turns(fake_llm: FakeOpenAI, client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    for n in range(3):
        assert (await post(client, chat_id, f"question {n}")).status_code == 201
    key = {"Idempotency-Key": "once"}
    for _ in range(2):  # the second is a replay
        response = await client.post(f"/chats/{chat_id}/messages", json={"content": "keyed"}, headers=key)
        assert response.status_code == 201
    async with client.stream("POST", f"/chats/{chat_id}/messages", json={"content": "streamed", "stream": True}) as s:
        assert [kind for kind, _ in await events_of(s)][-1] == "assistant_message"
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


async def test_metrics_add_up_every_worker(tmp_path: Path) -> None:
    env = {"CHATKEEP_STORE": f"sqlite:///{tmp_path / 'workers.db'}", "CHATKEEP_LLM_PROVIDER": "offline"}
    async with chatkeep_server(env, tmp_path / "workers.log", "--workers", "2") as server:
        base = str(server.client.base_url)
        chat_id = await new_chat(server.client)
        for n in range(12):  # a new connection each time, so both workers take turns
            async with httpx.AsyncClient(base_url=base) as fresh:
                assert (await post(fresh, chat_id, f"q{n}")).status_code == 201
        await asyncio.sleep(1.5 * SNAPSHOT_SECONDS)  # each worker shares its figures this often
        scrapes = []
        for _ in range(6):
            async with httpx.AsyncClient(base_url=base) as fresh:
                scrapes.append(await scrape(fresh))
    for text in scrapes:  # whichever worker answers, it counts every worker's turns
        assert metric(text, "chatkeep_http_requests_total", method="POST", route=TURN_ROUTE, status="201") == 12
        assert metric(text, "chatkeep_llm_calls_total", outcome="ok") == 12
        assert metric(text, "chatkeep_turns_in_flight") == 0


async def test_json_logs_have_one_access_line_per_request_and_no_contents_or_keys(tmp_path: Path) -> None:
    api_key = "k" * 20
    secret = "the-secret-content-7f3a"
    env = {"CHATKEEP_LLM_PROVIDER": "offline", "CHATKEEP_API_KEYS": f"alice={api_key}"}
    log = tmp_path / "json.log"
    async with chatkeep_server(env, log, "--log-format", "json", "--access-log", "true") as server:
        auth = {"Authorization": f"Bearer {api_key}"}
        chat = await server.client.post("/chats", headers=auth)
        sent = {**auth, "X-Request-ID": "req-one"}
        turn = await server.client.post(f"/chats/{chat.json()['id']}/messages", json={"content": secret}, headers=sent)
        assert turn.status_code == 201
        assert (await server.client.get("/chats/nope", headers=auth)).status_code == 404
        server.process.send_signal(signal.SIGTERM)
        await server.process.wait()
    text = log.read_text()
    assert secret not in text
    assert api_key not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "chatkeep.access" and line["route"] != "/healthz"]
    assert [(a["method"], a["route"], a["status"], a["owner"]) for a in access] == [
        ("POST", "/chats", 201, "alice"),
        ("POST", TURN_ROUTE, 201, "alice"),
        ("GET", "/chats/{chat_id}", 404, "alice"),
    ]
    assert access[1]["request_id"] == "req-one"
    assert all(a["duration_ms"] > 0 and a["level"] == "INFO" for a in access)
    assert all(line["time"].endswith("+00:00") for line in lines)


async def test_sigterm_lets_turns_in_flight_finish_and_store(fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    fake_llm.latency = 1.0
    env = {
        "CHATKEEP_STORE": f"sqlite:///{tmp_path / 'graceful.db'}",
        "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_API_KEY": "sk-test",
    }
    async with chatkeep_server(env, tmp_path / "graceful.log") as server:
        plain, streamed = await new_chat(server.client), await new_chat(server.client)
        turn = asyncio.create_task(post(server.client, plain, "in flight"))

        async def stream() -> list[tuple[str, Any]]:
            body = {"content": "streaming", "stream": True}
            async with server.client.stream("POST", f"/chats/{streamed}/messages", json=body) as response:
                return await events_of(response)

        events = asyncio.create_task(stream())
        await asyncio.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            async with httpx.AsyncClient(base_url=str(server.client.base_url)) as late:
                await late.get("/healthz")
        answered = await turn
        assert answered.status_code == 201
        assert answered.json()["assistant_message"]["content"] == "echo: in flight"
        assert (await events)[-1][0] == "assistant_message"
        assert await server.process.wait() in GRACEFUL_EXIT
    async with chatkeep_server(env, tmp_path / "restarted.log") as server:
        for chat_id, question in [(plain, "in flight"), (streamed, "streaming")]:
            stored = await all_messages(server.client, chat_id)
            assert [(m["content"], m["status"]) for m in stored] == [
                (question, "completed"),
                (f"echo: {question}", "completed"),
            ]


async def test_a_stream_past_the_grace_is_stored_as_far_as_it_got(fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    words = [f"word{n}" for n in range(40)]
    fake_llm.queue(Scripted(content=" ".join(words), chunk_delay=0.1))
    env = {
        "CHATKEEP_STORE": f"sqlite:///{tmp_path / 'grace.db'}",
        "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_API_KEY": "sk-test",
        "CHATKEEP_SHUTDOWN_GRACE": "0.5",
    }
    async with chatkeep_server(env, tmp_path / "grace.log") as server:
        chat_id = await new_chat(server.client)
        received: list[str] = []

        async def stream() -> None:
            body = {"content": "a long answer please", "stream": True}
            async with server.client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and "content" in line and "seq" not in line:
                        received.append(orjson.loads(line[6:])["content"])

        reader = asyncio.create_task(stream())
        await asyncio.sleep(0.8)
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() in GRACEFUL_EXIT
        await asyncio.gather(reader, return_exceptions=True)  # cut off when the grace ran out
    async with chatkeep_server(env, tmp_path / "restarted.log") as server:
        _, reply = await all_messages(server.client, chat_id)
    assert reply["status"] == "incomplete"
    assert reply["content"].startswith("".join(received))
    assert 0 < len(reply["content"].split()) < len(words)


BAD_SETTINGS = {
    "store URL": (["--store", "mysql://db/chats"], "CHATKEEP_STORE"),
    "unknown provider": (["--llm-provider", "anthropic"], "CHATKEEP_LLM_PROVIDER"),
    "malformed keys": (["--api-keys", "alice:short"], "CHATKEEP_API_KEYS"),
    "malformed rate limit": (["--rate-limit", "fast"], "CHATKEEP_RATE_LIMIT"),
    "unwritable SQLite path": (["--store", "sqlite:////proc/chatkeep/x.db"], "CHATKEEP_STORE"),
    "unreachable PostgreSQL": (["--store", "postgresql://postgres@127.0.0.1:1/test"], "CHATKEEP_STORE"),
    "no key for OpenAI": (["--llm-provider", "openai"], "OPENAI_API_KEY"),
}


@pytest.mark.parametrize(("options", "setting"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_a_bad_setting_exits_with_one_line_naming_it(options: list[str], setting: str) -> None:
    result = subprocess.run([CHATKEEP, "serve", "--port", "1", *options], capture_output=True, timeout=60, env={})
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("chatkeep: invalid ")
    assert setting in lines[0]
    assert "Traceback" not in result.stderr.decode()


async def test_the_chat_page_and_its_files_are_served_fresh(offline_client: httpx.AsyncClient) -> None:
    page = await offline_client.get("/")
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert (await offline_client.head("/")).status_code == 200
    module = await offline_client.get("/web/app.js")
    assert (module.status_code, module.headers["cache-control"]) == (200, "no-cache")
    assert page.headers["cache-control"] == "no-cache"
    assert (await offline_client.get("/web/missing.js")).status_code == 404
