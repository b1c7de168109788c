"""Ids and cursors no store ever hands out: simply not found (404, or 422 for a cursor), never a 500, on every store.

chatkeep's ids are ASCII letters, digits, `_`, `-` and `.`. PostgreSQL refuses a NUL in a text
parameter outright, and the memory store reads the digits after a message id's last dot as its
seq, so an id with a NUL, or ending in a digit that is not ASCII (`.²`), once reached them and
came back as a 500. The log line of such a request holds no raw control character either.
"""

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from chatkeep.config import Settings
from chatkeep.logs import TEXT_FORMAT, SafeTextFormatter
from tests.support.app import serve
from tests.support.chats import new_chat, post

# Percent-escaped, as a client puts them in a path or a query.
HOSTILE_IDS = {
    "nul": "%00",
    "nul-inside": "chat_x%00y",
    "superscript-seq": "msg_x.%C2%B2",
    "arabic-indic-seq": "msg_x.%D9%A1",
    "escape": "%1B%5B31m",
    "space": "a%20b",
    "accent": "%C3%A9",
}


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # {chat}, {message}, {response} stand for real ids; {bad} for the hostile one
    status: int
    body: Any = None


ITEM = {"type": "message", "role": "user", "content": "hi"}
CASES = [
    # A chat id that names no chat.
    Case("GET", "/chats/{bad}", 404),
    Case("PATCH", "/chats/{bad}", 404, {"title": "t"}),
    Case("DELETE", "/chats/{bad}", 404),
    Case("POST", "/chats/{bad}/messages", 404, {"content": "hi"}),
    Case("GET", "/chats/{bad}/messages", 404),
    Case("GET", "/chats/{bad}/summary", 404),
    Case("GET", "/chats/{bad}/messages/{message}/events", 404),
    Case("POST", "/chats/{bad}/messages/{message}/retry", 404, {}),
    Case("POST", "/chats/{bad}/messages/{message}/cancel", 404),
    Case("POST", "/chats/{bad}/messages/{message}/regenerate", 404, {}),
    Case("POST", "/chats/{bad}/messages/{message}/edit", 404, {"content": "hi"}),
    Case("PUT", "/chats/{bad}/branch", 404, {"message_id": "msg_x"}),
    Case("GET", "/v1/conversations/{bad}", 404),
    Case("POST", "/v1/conversations/{bad}", 404, {"metadata": {}}),
    Case("DELETE", "/v1/conversations/{bad}", 404),
    Case("POST", "/v1/conversations/{bad}/items", 404, {"items": [ITEM]}),
    Case("GET", "/v1/conversations/{bad}/items", 404),
    Case("GET", "/v1/conversations/{bad}/items/{message}", 404),
    Case("DELETE", "/v1/conversations/{bad}/items/{message}", 404),
    # A message id that names no message of a chat that exists.
    Case("GET", "/chats/{chat}/messages/{bad}/events", 404),
    Case("POST", "/chats/{chat}/messages/{bad}/retry", 404, {}),
    Case("POST", "/chats/{chat}/messages/{bad}/cancel", 404),
    Case("POST", "/chats/{chat}/messages/{bad}/regenerate", 404, {}),
    Case("POST", "/chats/{chat}/messages/{bad}/edit", 404, {"content": "hi"}),
    Case("GET", "/v1/conversations/{chat}/items/{bad}", 404),
    Case("DELETE", "/v1/conversations/{chat}/items/{bad}", 404),
    # A response id that names no response.
    Case("GET", "/v1/responses/{bad}", 404),
    Case("DELETE", "/v1/responses/{bad}", 404),
    Case("GET", "/v1/responses/{bad}/input_items", 404),
    # A cursor that names nothing in the list.
    Case("GET", "/chats?after={bad}", 422),
    Case("GET", "/chats?before={bad}", 422),
    Case("GET", "/chats/{chat}/messages?after={bad}", 422),
    Case("GET", "/chats/{chat}/messages?before={bad}", 422),
    Case("GET", "/v1/conversations/{chat}/items?after={bad}", 400),  # OpenAI says 400 for any invalid parameter
]


async def test_hostile_ids_and_cursors_are_not_found_on_every_route(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        chat_id = await new_chat(client)
        answered = (await post(client, chat_id, "hello")).json()
        message_id = answered["user_message"]["id"]
        made = await client.post("/v1/responses", json={"model": "offline", "input": "hi"})
        assert made.status_code == 200, made.text
        real = {"chat": chat_id, "message": message_id, "response": made.json()["id"]}
        wrong: list[tuple[str, str, str, int]] = []
        for name, bad in HOSTILE_IDS.items():
            for case in CASES:
                path = case.path.format(bad=bad, **real)
                response = await client.request(case.method, path, json=case.body)
                shape = "application/json" if path.startswith("/v1/") else "application/problem+json"  # OpenAI's
                if (response.status_code, response.headers["content-type"]) != (case.status, shape):
                    wrong.append((name, case.method, case.path, response.status_code))
        assert wrong == []
        # Nothing was stored or lost on the way.
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 2
    assert "\x00" not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_text_log_lines_escape_control_characters() -> None:
    formatter = SafeTextFormatter(TEXT_FORMAT)
    record = logging.makeLogRecord({"msg": "GET %s", "args": ("/chats/x\x00\x1b[31m\nforged line",), "levelno": 20})
    record.request_id = "-"
    line = formatter.format(record)
    assert not {"\x00", "\x1b", "\n"} & set(line)
    assert "/chats/x\\x00\\x1b[31m\\nforged line" in line
    try:
        raise ValueError("bad\x00id")
    except ValueError as error:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": (ValueError, error, error.__traceback__)})
    record.request_id = "-"
    line = formatter.format(record)
    assert "\x00" not in line
    assert "Traceback" in line
    assert "\n" in line  # the traceback keeps its lines
