"""The turn served past FastAPI's layers (RouteShortcut) answers exactly as FastAPI's own route does.

Two apps with the same settings, one without the shortcut, get the same requests, valid and
invalid; status, headers and body must match once what is unique to each answer (ids, times,
request ids) is set aside.
"""

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import orjson

from chatkeep.api.fast_turn_route import RouteShortcut
from chatkeep.config import Settings
from chatkeep.server.app import create_app
from tests.support.app import serve_app

KEY = "parity-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
UNIQUE = re.compile(rb'"(id|chat_id|request_id|created_at|updated_at)":"[^"]*"')
PER_ANSWER_HEADERS = {"date", "x-request-id", "content-length"}

# (name, headers, body as bytes); the chat is the one each app created, unless named otherwise.
REQUESTS: list[tuple[str, dict[str, str], bytes]] = [
    ("a turn", AUTH, b'{"content": "hello"}'),
    ("a streamed turn", AUTH, b'{"content": "hello", "stream": true}'),
    ("streamed by Accept", {**AUTH, "Accept": "text/event-stream"}, b'{"content": "hi"}'),
    ("a keyed turn", {**AUTH, "Idempotency-Key": "k-1"}, b'{"content": "once"}'),
    ("its replay", {**AUTH, "Idempotency-Key": "k-1"}, b'{"content": "once"}'),
    ("the key reused", {**AUTH, "Idempotency-Key": "k-1"}, b'{"content": "another"}'),
    ("a key with a space", {**AUTH, "Idempotency-Key": "k 1"}, b'{"content": "x"}'),
    ("a key too long", {**AUTH, "Idempotency-Key": "k" * 256}, b'{"content": "x"}'),
    ("empty content", AUTH, b'{"content": ""}'),
    ("blank content", AUTH, b'{"content": "  \\n "}'),
    ("content too long", AUTH, b'{"content": "' + b"x" * 101 + b'"}'),
    ("content of the wrong type", AUTH, b'{"content": 5}'),
    ("an unknown field", AUTH, b'{"content": "x", "extra": 1}'),
    ("stream not a boolean", AUTH, b'{"content": "x", "stream": "yes"}'),
    ("not JSON", AUTH, b"content=hello"),
    ("not UTF-8", AUTH, b'{"content": "\xff"}'),
    ("a JSON list", AUTH, b"[1, 2]"),
    ("no body", AUTH, b""),
    ("nested too deep", AUTH, b'{"content": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("a text/plain body", {**AUTH, "Content-Type": "text/plain"}, b'{"content": "x"}'),
    ("no API key", {}, b'{"content": "x"}'),
    ("a wrong API key", {"Authorization": "Bearer " + "w" * 20}, b'{"content": "x"}'),
    ("a body over the limit", AUTH, b'{"content": "' + b"x" * (1024 * 1024) + b'"}'),
]


@asynccontextmanager
async def two_apps() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of the same app with the shortcut and without it."""
    settings = Settings(llm_provider="offline", api_keys=f"tester={KEY}", max_message_chars=100)
    fast, plain = create_app(settings), create_app(settings)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls != RouteShortcut]  # type: ignore[comparison-overlap]
    async with AsyncExitStack() as stack:
        yield await stack.enter_async_context(serve_app(fast)), await stack.enter_async_context(serve_app(plain))


def normalized(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {name: value for name, value in response.headers.items() if name not in PER_ANSWER_HEADERS}
    body = UNIQUE.sub(b'"\\1":"-"', response.content)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [block for block in body.split(b"\n\n") if block]
        return response.status_code, headers, events
    return response.status_code, headers, orjson.loads(body) if body else None


async def test_the_shortcut_and_fastapis_route_answer_alike() -> None:
    async with two_apps() as (fast, plain):
        chats = [(await client.post("/chats", headers=AUTH)).json()["id"] for client in (fast, plain)]
        for name, headers, body in [*REQUESTS, ("an unknown chat", AUTH, b'{"content": "x"}')]:
            answers = []
            for client, chat_id in zip((fast, plain), chats, strict=True):
                target = "chat_unknown" if name == "an unknown chat" else chat_id
                sent = {"Content-Type": "application/json", **headers}
                answers.append(normalized(await client.post(f"/chats/{target}/messages", content=body, headers=sent)))
            assert answers[0] == answers[1], name
            assert answers[0][0] in (200, 201, 401, 404, 413, 415, 422), name
