"""What operators rely on from a whole `chatkeep serve` process: /metrics across workers, JSON
logs, SIGTERM, and bad settings refused."""

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from chatkeep.metrics import SNAPSHOT_SECONDS
from tests.support.chats import all_messages, new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.metrics import TURN_ROUTE, metric, scrape
from tests.support.servers import CHATKEEP, chatkeep_server
from tests.support.sse import Event, events_of, sse_events

# uvicorn ends a graceful shutdown by raising the signal it caught again, so that whoever sent
# SIGTERM sees the process end by it.
GRACEFUL_EXIT = (0, -signal.SIGTERM)


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

        async def stream() -> list[Event]:
            body = {"content": "streaming", "stream": True}
            async with server.client.stream("POST", f"/chats/{streamed}/messages", json=body) as response:
                return await events_of(response.aiter_lines())

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
        assert (await events)[-1]["event"] == "assistant_message"
        assert await server.process.wait() in GRACEFUL_EXIT
    async with chatkeep_server(env, tmp_path / "restarted.log") as server:
        for chat_id, question in [(plain, "in flight"), (streamed, "streaming")]:
            stored = await all_messages(server.client, chat_id)
            assert [(m["content"], m["status"]) for m in stored] == [
                (question, "completed"),
                (f"echo: {question}", "completed"),
            ]


async def test_a_stream_past_the_grace_ends_with_its_incomplete_reply_before_the_grace_is_over(
    fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    """SIGTERM while a reply streams longer than the grace: the client gets the stored text as the
    final event (incomplete, `shutdown`) over its connection, and the log holds no error."""
    words = [f"word{n}" for n in range(40)]
    fake_llm.queue(Scripted(content=" ".join(words), chunk_delay=0.1))
    env = {
        "CHATKEEP_STORE": f"sqlite:///{tmp_path / 'grace.db'}",
        "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_API_KEY": "sk-test",
        "CHATKEEP_SHUTDOWN_GRACE": "1",
    }
    async with chatkeep_server(env, tmp_path / "grace.log") as server:
        chat_id = await new_chat(server.client)
        body = {"content": "a long answer please", "stream": True}
        async with server.client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
            events = []
            async for event in sse_events(response.aiter_lines()):
                events += [event] if "event" in event else []
                if len(events) == 5:
                    server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() in GRACEFUL_EXIT
    received = "".join(event["data"]["content"] for event in events if event["event"] == "delta")
    final = events[-1]
    assert (final["event"], final["data"]["status"], final["data"]["incomplete_reason"]) == (
        "assistant_message",
        "incomplete",
        "shutdown",
    )
    assert final["data"]["content"] == received
    assert 0 < len(received.split()) < len(words)
    log = (tmp_path / "grace.log").read_text()
    assert "ERROR" not in log
    assert "Traceback" not in log
    async with chatkeep_server(env, tmp_path / "restarted.log") as server:
        _, reply = await all_messages(server.client, chat_id)
    assert (reply["content"], reply["status"], reply["incomplete_reason"]) == (received, "incomplete", "shutdown")


BAD_SETTINGS = {
    "store URL": (["--store", "mysql://db/chats"], "CHATKEEP_STORE"),
    "unknown provider": (["--llm-provider", "anthropic"], "CHATKEEP_LLM_PROVIDER"),
    "malformed keys": (["--api-keys", "alice:short"], "CHATKEEP_API_KEYS"),
    "malformed rate limit": (["--rate-limit", "fast"], "CHATKEEP_RATE_LIMIT"),
    "unwritable SQLite path": (["--store", "sqlite:////proc/chatkeep/x.db"], "CHATKEEP_STORE"),
    "unreachable PostgreSQL": (["--store", "postgresql://postgres@127.0.0.1:1/test"], "CHATKEEP_STORE"),
    "no key for OpenAI": (["--llm-provider", "openai"], "OPENAI_API_KEY"),
    "credentials twice": (
        ["--openai-base-url", "http://user:hunter2@127.0.0.1:1/v1", "--openai-api-key", "sk-test"],
        "OPENAI_BASE_URL",
    ),
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
    assert "hunter2" not in result.stderr.decode()
