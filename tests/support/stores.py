"""The stores the contract suite runs against, each opened fresh for one test.

A new backend adds one entry to STORES and a branch of `fresh_database` here; every contract
test then runs against it. SQLite gets a new file in the test's tmp_path; PostgreSQL a new
schema (chosen through `search_path` in the URL) in the database CHATKEEP_TEST_POSTGRES_URL
names, dropped afterwards. Without that variable the PostgreSQL cases skip and say why, except
under CI=true, where a missing or unreachable server fails them: CI always provides one.
"""

import os
import secrets
import sqlite3 as sqlite_driver
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from chatkeep.store import ChatStore, open_store
from chatkeep.store.sql import postgres, sqlite
from chatkeep.store.sql.migrations import MIGRATIONS_TABLE
from chatkeep.store.urls import sqlite_location

STORES = ["memory", "sqlite", "postgres"]
SQL_STORES = ["sqlite", "postgres"]
POSTGRES_URL_VARIABLE = "CHATKEEP_TEST_POSTGRES_URL"


def postgres_server_url() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        postgres_unavailable(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


def postgres_unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required when CI=true: {reason}")
    pytest.skip(f"PostgreSQL store tests skipped: {reason}")


def with_query(url: str, **parameters: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query) + list(parameters.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


@asynccontextmanager
async def fresh_database(kind: str, directory: Path) -> AsyncIterator[str]:
    """The URL of a new, empty database of `kind` for one test, removed afterwards."""
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{directory / 'chatkeep.db'}"
    elif kind == "postgres":
        async with _fresh_schema() as url:
            yield url
    else:
        raise ValueError(f"unknown test store {kind!r}")


@asynccontextmanager
async def _fresh_schema() -> AsyncIterator[str]:
    server = postgres_server_url()
    try:
        admin = await asyncpg.connect(server)
    except (OSError, asyncpg.PostgresError) as error:
        postgres_unavailable(f"cannot connect to {server}: {error}")
    schema = f"chatkeep_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_query(server, search_path=schema)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@asynccontextmanager
async def open_test_store(kind: str, directory: Path) -> AsyncIterator[ChatStore]:
    async with fresh_database(kind, directory) as url, open_store(url) as store:
        yield store


def open_sql_store(
    url: str, *, lease_seconds: float = 15.0, migrations: int | None = None
) -> AbstractAsyncContextManager[ChatStore]:
    """A SQL store with test-only options: a short lease, or only the first `migrations` schema steps."""
    if url.startswith("sqlite:"):
        steps = sqlite.MIGRATIONS[:migrations]
        return sqlite.open_sqlite_store(url, lease_seconds=lease_seconds, migrations=steps)
    return postgres.open_postgres_store(url, lease_seconds=lease_seconds, migrations=postgres.MIGRATIONS[:migrations])


async def applied_migrations(url: str) -> list[tuple[str, object]]:
    """The rows of the migrations table: (name, applied_at), in order of name."""
    query = f"SELECT name, applied_at FROM {MIGRATIONS_TABLE} ORDER BY name"
    if url.startswith("sqlite:"):
        db = sqlite_driver.connect(sqlite_location(url)[0])
        try:
            return [(name, applied_at) for name, applied_at in db.execute(query)]
        finally:
            db.close()
    connection = await asyncpg.connect(url)
    try:
        return [(row[0], row[1]) for row in await connection.fetch(query)]
    finally:
        await connection.close()


async def execute_sql(url: str, script: str, *args: str) -> None:
    """Run `script` (statements separated by `;`, each taking `args`) on the database `url` names."""
    statements = [statement for statement in script.split(";") if statement.strip()]
    if url.startswith("sqlite:"):
        db = sqlite_driver.connect(sqlite_location(url)[0])
        try:
            with db:
                for statement in statements:
                    db.execute(statement, args)
        finally:
            db.close()
        return
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            for statement in statements:
                await connection.execute(statement, *args)
    finally:
        await connection.close()


# A chat as the first schema (m001) stores it, for the upgrade tests: later code writes more columns.
OLD_VERSION_CHAT = {
    "sqlite": """INSERT INTO chats (id, owner, metadata, created_at, updated_at) VALUES (?1, 'alice', '{}', 0, 0)""",
    "postgresql": """INSERT INTO chats (id, owner, metadata, created_at, updated_at)
        VALUES ($1, 'alice', '{}', now(), now())""",
}
# A message as the first schema (m001) stores it, for the upgrade tests: later code writes more columns.
OLD_VERSION_MESSAGE = {
    "sqlite": """INSERT INTO messages (id, chat_id, seq, role, content, created_at)
        VALUES ('msg_old', ?1, 1, 'user', 'from the old version', 0);
        UPDATE chats SET message_count = 1, user_message_count = 1 WHERE id = ?1""",
    "postgresql": """INSERT INTO messages (id, chat_id, seq, role, content, created_at)
        VALUES ('msg_old', $1, 1, 'user', 'from the old version', now());
        UPDATE chats SET message_count = 1, user_message_count = 1 WHERE id = $1""",
}
