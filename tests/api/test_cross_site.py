"""What keeps other websites out: a body must be sent as JSON (415), the Host must be an allowed one
(400, DNS rebinding), and every answer says it may not be framed or sniffed (api/security.py).

A page of another origin can post a body without asking the server first only as text/plain, a
form or no type at all; tests/browser/test_cross_site.py shows the same refusals in Chromium.
"""

import asyncio
import importlib
from collections.abc import AsyncIterator

import httpx
import pytest

from chatkeep.cli import main
from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat
from tests.support.fake_openai import FakeOpenAI
from tests.support.sse import events_of

KEY = "alice-key-0123456789abcdef"
NOT_JSON = {
    "no Content-Type": {},
    "text/plain": {"Content-Type": "text/plain"},
    "a form": {"Content-Type": "application/x-www-form-urlencoded"},
    "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
    "JSON's subtype elsewhere": {"Content-Type": "text/json"},
}
SECURITY_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def assert_guarded(response: httpx.Response, policy: str = "default-src 'none'") -> None:
    """The security headers, once each, and one Content-Security-Policy, that frames nothing."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get_list(name) == [value], name
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, policies
    assert policies[0].startswith(policy), policies
    assert "frame-ancestors 'none'" in policies[0]


@pytest.fixture
async def keyless(fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep as it runs by default: no API keys, on loopback."""
    async with serve(llm_settings(fake_llm)) as client:
        yield client


# --- JSON bodies only -------------------------------------------------------------------------


@pytest.mark.parametrize("headers", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_a_turn_sent_as_anything_but_json_is_415_and_nothing_is_stored(
    keyless: httpx.AsyncClient, fake_llm: FakeOpenAI, headers: dict[str, str]
) -> None:
    chat_id = await new_chat(keyless)
    response = await keyless.post(f"/chats/{chat_id}/messages", content=b'{"content": "spend"}', headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 415
    assert "application/json" in response.json()["detail"]
    assert_guarded(response)
    assert (await keyless.get(f"/chats/{chat_id}")).json()["message_count"] == 0
    assert fake_llm.requests == []


@pytest.mark.parametrize("headers", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_a_response_sent_as_anything_but_json_is_415_in_openais_shape(
    keyless: httpx.AsyncClient, fake_llm: FakeOpenAI, headers: dict[str, str]
) -> None:
    body = b'{"model": "fake-model", "input": "spend", "conversation": null}'
    response = await keyless.post("/v1/responses", content=body, headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert_guarded(response)
    assert fake_llm.requests == []


async def test_every_route_with_a_body_wants_json(keyless: httpx.AsyncClient) -> None:
    chat_id = await new_chat(keyless)
    sent = [
        ("POST", "/chats", b'{"title": "planted"}'),
        ("PATCH", f"/chats/{chat_id}", b'{"title": "renamed"}'),
        ("POST", "/v1/conversations", b'{"metadata": {"a": "b"}}'),
        ("POST", f"/v1/conversations/{chat_id}", b'{"metadata": {"a": "b"}}'),
        ("POST", f"/v1/conversations/{chat_id}/items", b'{"items": []}'),
        ("DELETE", f"/chats/{chat_id}", b"{}"),
    ]
    for method, path, body in sent:
        response = await keyless.request(method, path, content=body, headers={"Content-Type": "text/plain"})
        assert response.status_code == 415, (method, path)
    chats = (await keyless.get("/chats")).json()["data"]
    assert [(chat["id"], chat["title"], chat["metadata"]) for chat in chats] == [(chat_id, None, {})]


async def test_a_chunked_body_without_a_type_is_415(keyless: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": '
        yield b'"chunked"}'

    response = await keyless.post("/chats", content=chunks())
    assert response.status_code == 415
    assert (await keyless.get("/chats")).json()["data"] == []


async def test_json_by_any_of_its_names_is_served(keyless: httpx.AsyncClient) -> None:
    for content_type in ("application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"):
        response = await keyless.post("/chats", content=b'{"title": "t"}', headers={"Content-Type": content_type})
        assert response.status_code == 201, content_type


async def test_a_post_with_no_body_needs_no_type(keyless: httpx.AsyncClient) -> None:
    assert (await keyless.post("/chats")).status_code == 201
    empty = await keyless.post("/chats", content=b"", headers={"Content-Type": "text/plain", "Content-Length": "0"})
    assert empty.status_code == 201
    chat_id = await new_chat(keyless)
    turn = (await keyless.post(f"/chats/{chat_id}/messages", json={"content": "hi"})).json()
    question = turn["user_message"]["id"]
    cancel = await keyless.post(f"/chats/{chat_id}/messages/{question}/cancel")
    assert cancel.status_code == 409  # answered already: nothing to stop, but the request was read
    retry = await keyless.post(f"/chats/{chat_id}/messages/{question}/retry")
    assert retry.status_code == 409


async def test_the_connection_serves_on_after_a_refused_body(keyless: httpx.AsyncClient) -> None:
    for _ in range(3):
        refused = await keyless.post("/chats", content=b"x" * 100_000, headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415
        assert (await keyless.get("/chats")).status_code == 200


# --- the Host -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LocalHost:1", "[::1]", "[::1]:8000"])
async def test_loopback_hosts_are_served_by_default(keyless: httpx.AsyncClient, host: str) -> None:
    assert (await keyless.get("/chats", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8000", "localhost.attacker.example", "127.0.0.2", "[::2]", "::1"]
)
async def test_another_host_is_refused_before_anything_runs(
    keyless: httpx.AsyncClient, fake_llm: FakeOpenAI, host: str
) -> None:
    chat_id = await new_chat(keyless)
    read = await keyless.get(f"/chats/{chat_id}", headers={"Host": host})
    assert read.status_code == 400
    assert read.headers["content-type"] == "application/problem+json"
    assert read.json()["status"] == 400
    assert "CHATKEEP_ALLOWED_HOSTS" in read.json()["detail"]
    assert_guarded(read)
    page = await keyless.get("/", headers={"Host": host})
    assert page.status_code == 400
    turn = await keyless.post(f"/chats/{chat_id}/messages", json={"content": "spend"}, headers={"Host": host})
    assert turn.status_code == 400
    openai = await keyless.post("/v1/responses", json={"model": "m", "input": "spend"}, headers={"Host": host})
    assert (openai.status_code, openai.json()["error"]["type"]) == (400, "invalid_request_error")
    assert (await keyless.get(f"/chats/{chat_id}")).json()["message_count"] == 0
    assert fake_llm.requests == []


async def test_health_answers_any_host(keyless: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await keyless.get(path, headers={"Host": "10.0.3.7:8000"})
        assert response.status_code == 200, path
        assert_guarded(response)
    assert (await keyless.get("/metrics", headers={"Host": "10.0.3.7:8000"})).status_code == 400


async def _raw(client: httpx.AsyncClient, request: bytes) -> bytes:
    """The status line of `request`, sent as is on a new connection to `client`'s server."""
    reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


async def test_no_host_or_one_that_is_no_host_name_is_refused(keyless: httpx.AsyncClient) -> None:
    assert b" 400 " in await _raw(keyless, b"GET /chats HTTP/1.0\r\n\r\n")
    assert b" 400 " in await _raw(keyless, b"GET /chats HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n")
    assert b" 200 " in await _raw(keyless, b"GET /healthz HTTP/1.0\r\n\r\n")


async def test_with_api_keys_any_host_is_served(fake_llm: FakeOpenAI) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Host": "chat.example.com"}
    async with serve(llm_settings(fake_llm, api_keys=f"alice={KEY}")) as client:
        assert (await client.get("/chats", headers=auth)).status_code == 200


async def test_allowed_hosts_names_the_hosts_served(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, allowed_hosts=" Chat.Example.com, 2001:db8::1 ,internal:8443")
    async with serve(settings) as client:
        for host in ("chat.example.com", "chat.example.com:443", "[2001:db8::1]:80", "internal:8443"):
            assert (await client.get("/chats", headers={"Host": host})).status_code == 200, host
        for host in ("127.0.0.1", "localhost", "internal", "internal:80", "example.com"):
            assert (await client.get("/chats", headers={"Host": host})).status_code == 400, host


async def test_allowed_hosts_star_serves_any(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, allowed_hosts="*")) as client:
        assert (await client.get("/chats", headers={"Host": "anything.example"})).status_code == 200


def never_served(*args: object, **kwargs: object) -> None:
    raise AssertionError("the server was started")


def test_serve_beyond_loopback_unauthenticated_asks_for_allowed_hosts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serving = importlib.import_module("chatkeep.cli.serve")  # `chatkeep.cli.serve` is also its function's name
    monkeypatch.setattr(serving, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(serving.uvicorn, "run", never_served)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1", "--allow-unauthenticated"]) == 2
    error = capsys.readouterr().err
    assert "CHATKEEP_ALLOWED_HOSTS" in error
    assert len(error.strip().splitlines()) == 1


def test_serve_beyond_loopback_unauthenticated_with_allowed_hosts_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Settings] = []
    serving = importlib.import_module("chatkeep.cli.serve")  # `chatkeep.cli.serve` is also its function's name
    monkeypatch.setattr(serving, "create_app", served.append)
    monkeypatch.setattr(serving, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(serving.uvicorn, "run", lambda *args, **kwargs: None)
    command = ["serve", "--host", "0.0.0.0", "--port", "1", "--allow-unauthenticated", "--allowed-hosts", "chat.lan"]
    assert main(command) == 0
    assert [settings.allowed_hosts for settings in served] == ["chat.lan"]


# --- headers on every answer --------------------------------------------------------------------


async def test_the_page_sends_its_policy_by_header(keyless: httpx.AsyncClient) -> None:
    page = await keyless.get("/")
    assert page.status_code == 200
    assert_guarded(page, policy="default-src 'none'; script-src 'self'")
    assert "require-trusted-types-for 'script'" in page.headers["content-security-policy"]
    assert "http-equiv" not in page.text  # the policy lives in the header alone
    assert_guarded(await keyless.head("/"), policy="default-src 'none'; script-src 'self'")
    assert_guarded(await keyless.get("/web/app.js"))


async def test_the_docs_keep_their_own_policy_and_refuse_frames(keyless: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        assert_guarded(await keyless.get(path), policy="default-src 'self'")


async def test_api_answers_and_problems_carry_the_headers(keyless: httpx.AsyncClient) -> None:
    chat_id = await new_chat(keyless)
    assert_guarded(await keyless.get(f"/chats/{chat_id}"))
    assert_guarded(await keyless.post(f"/chats/{chat_id}/messages", json={"content": "hi"}))
    assert_guarded(await keyless.get("/chats/chat_missing"))
    assert_guarded(await keyless.get("/v1/models"))
    assert_guarded(await keyless.get("/openapi.json"))


async def test_a_stream_carries_the_headers_and_streams(keyless: httpx.AsyncClient) -> None:
    chat_id = await new_chat(keyless)
    body = {"content": "tell me", "stream": True}
    async with keyless.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
        assert response.status_code == 200
        assert_guarded(response)
        events = await events_of(response.aiter_lines())
    assert [event["event"] for event in events][-1] == "assistant_message"
    async with keyless.stream("POST", "/v1/responses", json={"model": "m", "input": "hi", "stream": True}) as r:
        assert r.status_code == 200
        assert_guarded(r)
        assert [line async for line in r.aiter_lines() if line.startswith("event: ")][-1] == "event: response.completed"
