"""The durable relay's journals: the context relay's messages committed to SQLite or PostgreSQL.

The least a durable chat needs: a chat row, written when the chat is made, and a messages table
keyed by (chat_id, seq), one row per message, each insert its own commit (autocommit). A turn
is then two commits, the question's before the LLM is called and the reply's before the answer,
which is what a chatkeep turn must do too. Each store goes through the driver chatkeep uses, set
up as chatkeep sets it up: SQLite's stdlib module on one thread of its own, with chatkeep's own
connection (`chatkeep.store.sql.sqlite._connect`: WAL, its busy timeout, its synchronous mode),
so each commit is one hop off the event loop; PostgreSQL's asyncpg pool of chatkeep's size
(`pool_size`, default 20, at least 2 open) with no reset query on release.
"""

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg

from chatkeep.store.sql.postgres import MIN_POOL_SIZE
from chatkeep.store.sql.sqlite import _connect
from chatkeep.store.urls import pool_options, sqlite_location

SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ceiling_chats (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ceiling_messages (chat_id TEXT NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL,"
    " content TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (chat_id, seq)) WITHOUT ROWID",
)
POSTGRES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ceiling_chats (id text PRIMARY KEY, created_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ceiling_messages (chat_id text NOT NULL, seq integer NOT NULL, role text NOT NULL,"
    " content text NOT NULL, created_at timestamptz NOT NULL, PRIMARY KEY (chat_id, seq))",
)
INSERT_CHAT = "INSERT INTO ceiling_chats (id, created_at) VALUES ($1, $2)"
INSERT_MESSAGE = "INSERT INTO ceiling_messages (chat_id, seq, role, content, created_at) VALUES ($1, $2, $3, $4, $5)"
SELECT_CHAT = "SELECT 1 FROM ceiling_chats WHERE id = $1"
SELECT_MESSAGES = "SELECT role, content FROM ceiling_messages WHERE chat_id = $1 ORDER BY seq"


def _sqlite(query: str) -> str:
    """`query` with SQLite's numbered placeholders (`?1`) for PostgreSQL's (`$1`)."""
    return re.sub(r"\$(\d+)", r"?\1", query)


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


SQLITE_INSERT_CHAT, SQLITE_INSERT_MESSAGE = _sqlite(INSERT_CHAT), _sqlite(INSERT_MESSAGE)
SQLITE_SELECT_CHAT, SQLITE_SELECT_MESSAGES = _sqlite(SELECT_CHAT), _sqlite(SELECT_MESSAGES)


def _fetch(db: sqlite3.Connection, query: str, args: tuple[object, ...]) -> list[tuple[str, str]]:
    return db.execute(query, args).fetchall()


class SqliteJournal:
    """One connection, owned by one thread: every call is one job there (one commit for a write)."""

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = db

    async def _run(self, query: str, *args: object) -> list[tuple[str, str]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _fetch, self._db, query, args)

    async def create_chat(self, chat_id: str) -> None:
        await self._run(SQLITE_INSERT_CHAT, chat_id, _micros(datetime.now(UTC)))

    async def load(self, chat_id: str) -> list[tuple[str, str]] | None:
        if not await self._run(SQLITE_SELECT_CHAT, chat_id):
            return None
        return await self._run(SQLITE_SELECT_MESSAGES, chat_id)

    async def append(self, chat_id: str, seq: int, role: str, content: str, created_at: datetime) -> None:
        await self._run(SQLITE_INSERT_MESSAGE, chat_id, seq, role, content, _micros(created_at))


class PostgresJournal:
    """One statement (one commit for a write) on a pooled connection, released when it ends."""

    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]") -> None:
        self._pool = pool

    async def create_chat(self, chat_id: str) -> None:
        await self._pool.execute(INSERT_CHAT, chat_id, datetime.now(UTC))

    async def load(self, chat_id: str) -> list[tuple[str, str]] | None:
        if await self._pool.fetchval(SELECT_CHAT, chat_id) is None:
            return None
        return [(row["role"], row["content"]) for row in await self._pool.fetch(SELECT_MESSAGES, chat_id)]

    async def append(self, chat_id: str, seq: int, role: str, content: str, created_at: datetime) -> None:
        await self._pool.execute(INSERT_MESSAGE, chat_id, seq, role, content, created_at)


@asynccontextmanager
async def open_journal(url: str) -> AsyncIterator[SqliteJournal | PostgresJournal]:
    """The journal in the store `url` names (as CHATKEEP_STORE names one), its tables made if missing."""
    if url.startswith("sqlite:"):
        async with _open_sqlite(url) as journal:
            yield journal
    else:
        async with _postgres(url) as postgres:
            yield postgres


@asynccontextmanager
async def _open_sqlite(url: str) -> AsyncIterator[SqliteJournal]:
    path, synchronous = sqlite_location(url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceiling-sqlite")
    loop = asyncio.get_running_loop()
    try:
        db = await loop.run_in_executor(executor, _connect, path, synchronous)
        try:
            for statement in SQLITE_SCHEMA:
                await loop.run_in_executor(executor, db.execute, statement)
            yield SqliteJournal(executor, db)
        finally:
            await loop.run_in_executor(executor, db.close)
    finally:
        executor.shutdown(wait=True)


async def _no_reset(connection: object) -> None:
    """As chatkeep's pool: no reset query on release (a round trip per call), no session state is left."""


@asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[PostgresJournal]:
    dsn, pool_size = pool_options(url)
    pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
        dsn, min_size=min(MIN_POOL_SIZE, pool_size), max_size=pool_size, reset=_no_reset
    )
    try:
        for statement in POSTGRES_SCHEMA:
            await pool.execute(statement)
        yield PostgresJournal(pool)
    finally:
        await pool.close()
