"""A store that cannot answer is a 503 `store-unavailable` with Retry-After, on every route, and loses nothing.

PostgreSQL is taken away for real, without stopping the server others share: chatkeep reaches
it through a TCP forwarder in the test (tests/support/forwarder.py) that is cut during a burst
of turns (every open connection closed, new ones refused) and then restored. A SQLite file that
is full is refused the same way (SQLite's own limit on the file's pages stands in for a full
disk), and a locked one is tested in tests/store. The memory store has nothing to lose.
"""

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from chatkeep.config import Settings
from chatkeep.store.sql import sqlite
from tests.support.app import serve
from tests.support.chats import all_messages, new_chat, post
from tests.support.forwarder import Forwarder
from tests.support.stores import fresh_database

PASSWORD = "not-to-be-logged"  # PostgreSQL's trust authentication ignores it; the logs must not show it
LEASE = 2.0  # a turn whose ticket could not be given back in the outage holds its chat this long at most
BACK_WITHIN_SECONDS = 15.0


def with_password(url: str) -> str:
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user or 'postgres'}:{PASSWORD}@{host}").geturl()


def assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1, what
    body = response.json()
    kind = body["type"] if "type" in body and isinstance(body["type"], str) else body["error"]["code"]
    assert kind.endswith("store-unavailable") or kind == "store_unavailable", (what, body)
    assert PASSWORD not in response.text


def routes(chat_id: str, question_id: str, response_id: str) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every route that asks the store."""
    item = {"type": "message", "role": "user", "content": "hi"}
    return [
        ("GET", "/chats", None),
        ("POST", "/chats", {"title": "t"}),
        ("GET", f"/chats/{chat_id}", None),
        ("PATCH", f"/chats/{chat_id}", {"title": "t2"}),
        ("GET", f"/chats/{chat_id}/messages", None),
        ("POST", f"/chats/{chat_id}/messages", {"content": "in the outage"}),
        ("POST", f"/chats/{chat_id}/messages", {"content": "in the outage", "stream": False}),
        ("GET", f"/chats/{chat_id}/summary", None),
        ("GET", f"/chats/{chat_id}/messages/{question_id}/events", None),
        ("POST", f"/chats/{chat_id}/messages/{question_id}/retry", {}),
        ("POST", f"/chats/{chat_id}/messages/{question_id}/cancel", None),
        ("DELETE", f"/chats/{chat_id}", None),
        ("POST", "/v1/conversations", {"items": [item]}),
        ("GET", f"/v1/conversations/{chat_id}", None),
        ("POST", f"/v1/conversations/{chat_id}", {"metadata": {"k": "v"}}),
        ("GET", f"/v1/conversations/{chat_id}/items", None),
        ("POST", f"/v1/conversations/{chat_id}/items", {"items": [item]}),
        ("GET", f"/v1/conversations/{chat_id}/items/{question_id}", None),
        ("DELETE", f"/v1/conversations/{chat_id}/items/{question_id}", None),
        ("POST", "/v1/responses", {"model": "offline", "input": "hi"}),
        ("POST", "/v1/responses", {"model": "offline", "input": "hi", "conversation": chat_id}),
        ("GET", f"/v1/responses/{response_id}", None),
        ("GET", f"/v1/responses/{response_id}/input_items", None),
        ("DELETE", f"/v1/responses/{response_id}", None),
        ("GET", "/readyz", None),
    ]


class Burst:
    """Turns posted back to back on each chat, every answer kept, until stopped."""

    def __init__(self, client: httpx.AsyncClient, chats: list[str]) -> None:
        self.client, self.chats = client, chats
        self.answers: list[tuple[str, httpx.Response]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._post_to(chat_id)) for chat_id in chats]

    async def _post_to(self, chat_id: str) -> None:
        n = 0
        while not self._stop.is_set():
            response = await post(self.client, chat_id, f"question {n}")
            self.answers.append((chat_id, response))
            n += 1
            await asyncio.sleep(0.01 if response.status_code < 500 else 0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def answered(self, status: int) -> list[tuple[str, httpx.Response]]:
        return [(chat_id, response) for chat_id, response in self.answers if response.status_code == status]


async def until_a_turn_is_answered(client: httpx.AsyncClient, chat_id: str) -> httpx.Response:
    """Post until a turn is answered, as a client honouring Retry-After would (sooner, to keep the test short)."""
    deadline = asyncio.get_running_loop().time() + BACK_WITHIN_SECONDS
    while True:
        response = await post(client, chat_id, "after the outage")
        if response.status_code == 201 or asyncio.get_running_loop().time() > deadline:
            return response
        assert_unavailable(response, "a turn while the store comes back")
        await asyncio.sleep(0.2)


async def assert_nothing_answered_was_lost(
    client: httpx.AsyncClient, answers: list[tuple[str, httpx.Response]]
) -> None:
    by_chat: dict[str, set[str]] = {}
    for chat_id, response in answers:
        turn = response.json()
        by_chat.setdefault(chat_id, set()).update({turn["user_message"]["id"], turn["assistant_message"]["id"]})
    for chat_id, ids in by_chat.items():
        stored = await all_messages(client, chat_id)
        assert ids <= {m["id"] for m in stored}, chat_id
        assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))


async def test_a_postgres_outage_is_503_with_retry_after_everywhere_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with fresh_database("postgres", tmp_path) as url:
        target = urlsplit(url)
        async with Forwarder(target.hostname or "127.0.0.1", target.port or 5432) as forwarder:
            settings = Settings(store=forwarder.url(with_password(url)), llm_provider="offline", turn_lease=LEASE)
            async with serve(settings) as client:
                chats = [await new_chat(client) for _ in range(4)]
                first = (await post(client, chats[0], "before the outage")).json()
                made = await client.post("/v1/responses", json={"model": "offline", "input": "hi"})
                assert made.status_code == 200
                every_route = routes(chats[0], first["user_message"]["id"], made.json()["id"])

                burst = Burst(client, chats[1:])
                await asyncio.sleep(0.5)
                await forwarder.cut()
                in_outage = [(m, p, await client.request(m, p, json=b)) for m, p, b in every_route]
                await asyncio.sleep(1.0)
                await forwarder.restore()
                back = await until_a_turn_is_answered(client, chats[1])
                await asyncio.sleep(0.5)
                await burst.stop()
                assert back.status_code == 201, back.text
                assert (await client.get("/readyz")).status_code == 200

                for method, path, response in in_outage:
                    assert_unavailable(response, f"{method} {path}")
                assert burst.answered(503), "the burst ran into the outage"
                for _, response in burst.answers:
                    if response.status_code != 201:
                        assert_unavailable(response, "a turn of the burst")
                answered = burst.answered(201)
                assert len(answered) > len(chats), "turns were answered before and after the outage"
                await assert_nothing_answered_was_lost(client, [*answered, (chats[1], back)])
    warnings = [
        r.getMessage() for r in caplog.records if r.name.startswith("chatkeep") and r.levelno == logging.WARNING
    ]
    assert any("PostgreSQL" in line and "does not answer" in line for line in warnings), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no errors, no tracebacks"
    assert PASSWORD not in caplog.text


@pytest.fixture
def sqlite_connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """The SQLite connections the stores open, to set limits on them."""
    opened: list[sqlite3.Connection] = []
    connect: Callable[[str, str], sqlite3.Connection] = sqlite._connect

    def recording(path: str, synchronous: str) -> sqlite3.Connection:
        opened.append(connect(path, synchronous))
        return opened[-1]

    monkeypatch.setattr(sqlite, "_connect", recording)
    return opened


async def test_a_full_sqlite_file_is_503_with_retry_after_and_loses_nothing(
    tmp_path: Path, sqlite_connections: list[sqlite3.Connection], caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(Settings(store=f"sqlite:///{tmp_path / 'full.db'}", llm_provider="offline")) as client:
        chat_id = await new_chat(client)
        answered = [await post(client, chat_id, "before the disk filled")]
        (db,) = sqlite_connections
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk had no room for one more page
        refused = [await post(client, chat_id, "x" * 20_000 + f" {n}") for n in range(3)]
        readable = await client.get(f"/chats/{chat_id}/messages")
        db.execute("PRAGMA max_page_count = 1073741823")
        answered.append(await post(client, chat_id, "after room was made"))
        for response in refused:
            assert_unavailable(response, "a write to a full file")
        assert readable.status_code == 200
        assert [response.status_code for response in answered] == [201, 201]
        await assert_nothing_answered_was_lost(client, [(chat_id, response) for response in answered])
    assert any("SQLite" in r.getMessage() and "full" in r.getMessage() for r in caplog.records), caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_hung_postgres_makes_readyz_a_503_with_retry_after(tmp_path: Path) -> None:
    """A database that keeps its connections open and answers nothing: readiness gives up on its
    own deadline, and says when to ask again, as the routes do."""
    async with fresh_database("postgres", tmp_path) as url:
        target = urlsplit(url)
        async with Forwarder(target.hostname or "127.0.0.1", target.port or 5432) as forwarder:
            settings = Settings(store=forwarder.url(with_password(url)), llm_provider="offline", turn_lease=LEASE)
            async with serve(settings) as client:
                assert (await client.get("/readyz")).status_code == 200
                forwarder.stall()
                hung = await client.get("/readyz")
                assert_unavailable(hung, "GET /readyz while the database hangs")
                await forwarder.restore()
                assert (await client.get("/readyz")).status_code == 200
