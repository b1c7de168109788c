"""Every operation of the OpenAPI document, with values at the edges where servers break, on every store: no 5xx.

Schemathesis (test_schema_fuzz.py) explores the schema's values; this walks its edges on
purpose. One value at a time goes into one place of a request whose other parts are valid (a
real chat, a real message, a well-formed body), so each edge reaches as deep as it can: NUL,
superscript and other non-ASCII digits (`str.isdigit()` is true for them, `int()` fails),
integers past 32 and 64 bits, right-to-left overrides and line separators, very long strings.
"""

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from chatkeep.config import Settings
from tests.support.app import serve
from tests.support.chats import new_chat

EDGE_STRINGS = ["\x00", "a\x00b", "²", "³", "٣", "chat_x.²", "msg_x.¹", "\u202eexe.txt", "a\u2028b", "x" * 5000, "-1"]
EDGE_INTEGERS = [-1, 0, 2**31, 2**63, 10**30]
EDGE_HEADERS = {"Last-Event-ID": ["²", "٣", "-1", "9" * 30], "Idempotency-Key": ["²", "\u202e", "k" * 300]}


def requests_at_the_edges(spec: dict[str, Any], ids: dict[str, str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx options) for each edge value in each place of each operation."""
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            body = BODIES.get(template) if "requestBody" in operation else None
            for path in _edge_paths(template, names, ids):
                yield method, path, {"json": body} if body is not None else {}
            if method == "delete":
                continue  # the valid request would delete what the others need
            valid = template.format(**{name: ids[name] for name in names})
            queries = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            for options in _edge_options(queries, body):
                yield method, valid, options


def _edge_paths(template: str, names: list[str], ids: dict[str, str]) -> Iterator[str]:
    """`template` with one of its ids at a time replaced by each edge string."""
    for name in names:
        for value in EDGE_STRINGS:
            yield template.format(**{n: quote(value, safe="") if n == name else ids[n] for n in names})


def _edge_options(queries: list[str], body: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Each edge value as one query parameter, one header, or one field of the body."""
    for name in queries:
        for value in [*EDGE_STRINGS, *map(str, EDGE_INTEGERS)]:
            yield {"params": {name: value}}
    for header, values in EDGE_HEADERS.items():
        for value in values:
            raw = value.encode("latin-1" if max(map(ord, value)) < 256 else "utf-8")  # as sent on the wire
            yield {"headers": {header.encode(): raw}, "json": body}
    for field in body or {}:
        for edge in [*EDGE_STRINGS, *EDGE_INTEGERS]:
            yield {"json": {**(body or {}), field: edge}}


BODIES: dict[str, dict[str, Any]] = {
    "/chats": {"title": "t", "metadata": {"k": "v"}, "system_prompt": "s"},
    "/chats/{chat_id}": {"title": "t"},
    "/chats/{chat_id}/messages": {"content": "hi"},
    "/chats/{chat_id}/messages/{message_id}/edit": {"content": "hi"},
    "/chats/{chat_id}/branch": {"message_id": "msg_x"},
    "/v1/conversations": {"metadata": {"k": "v"}, "items": [{"type": "message", "role": "user", "content": "hi"}]},
    "/v1/conversations/{conversation_id}": {"metadata": {"k": "v"}},
    "/v1/conversations/{conversation_id}/items": {"items": [{"type": "message", "role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi", "max_output_tokens": 16},
    "/v1/responses/input_tokens": {"input": "hi"},
}


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(Settings(llm_provider="offline", store=store_url)) as http:
        yield http


async def test_no_value_at_the_edges_makes_a_5xx(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    chat_id = await new_chat(client)
    turn = (await client.post(f"/chats/{chat_id}/messages", json={"content": "hello"})).json()
    conversation = (await client.post("/v1/conversations", json={})).json()["id"]
    response = (await client.post("/v1/responses", json={"input": "hi", "conversation": conversation})).json()
    item = response["output"][0]["id"]
    ids = {
        "chat_id": chat_id,
        "user_message_id": turn["user_message"]["id"],
        "message_id": turn["user_message"]["id"],
        "conversation_id": conversation,
        "item_id": item,
        "response_id": response["id"],
        "model": "gpt-4o-mini",
    }
    failures = []
    count = 0
    for method, path, options in requests_at_the_edges(spec, ids):
        count += 1
        answer = await client.request(method.upper(), path, **options)
        if answer.status_code >= 500:
            failures.append(
                (method.upper(), path[:80], {k: str(v)[:80] for k, v in options.items()}, answer.text[:200])
            )
    assert count > 800
    assert failures == []
