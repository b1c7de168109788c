"""`SqliteStore`: chats in one SQLite file, durable, for one machine (one or several processes).

One thread owns the connection and every store call is one job on it (a whole transaction, so
a call costs one hop off the event loop, not one per statement as through aiosqlite, whose
hops cost more than the SQL here); that thread is the process's
single writer, and SQLite's write lock (WAL mode, BEGIN IMMEDIATE, a busy timeout) orders the
writers of several processes on one file. Durability: WAL with `synchronous=NORMAL` (the
default) writes every commit into the WAL before the call returns, so every acknowledged write
survives the process being killed (`kill -9`), but not a power cut or OS crash; the URL option
`?synchronous=full` syncs each commit to disk and survives those too, at a cost per write.
Turns across processes are ticket rows polled with short, growing sleeps (`turn_leases`).
Timestamps are integer microseconds since the epoch (UTC), exact both ways.
"""

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from chatkeep.domain import (
    Chat,
    ChatChanges,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    NewMessage,
    Page,
    PageRequest,
    Role,
    SummaryText,
    new_id,
    utcnow,
)
from chatkeep.errors import ChatNotFoundError
from chatkeep.store.migrations import MIGRATIONS_TABLE, Migration, check_schema, pending
from chatkeep.store.paging import KeyRange, key_range, newest_first, page_rows
from chatkeep.store.rows import (
    CHAT_COLUMNS,
    JOINED_MESSAGE_COLUMNS,
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    STATS_COLUMNS,
    SUMMARY_COLUMNS,
    chat_from_row,
    claim_from_row,
    joined_message_from_row,
    message_from_row,
    stats_from_row,
    summary_from_row,
    to_json,
)
from chatkeep.store.turn_leases import TicketState, TurnLeases, state_of
from chatkeep.store.urls import sqlite_location

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

LEASE_SECONDS = 15.0
POLL_SECONDS = (0.005, 0.1)  # no cross-process nudge on SQLite: short sleeps, growing
BUSY_TIMEOUT_MS = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MIGRATIONS = (
    Migration(
        "m001_initial",
        (
            # AUTOINCREMENT: a deleted chat's rank is never handed out again, so ranks are monotonic.
            """CREATE TABLE chats (
                rank INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                owner TEXT NOT NULL,
                title TEXT,
                metadata TEXT NOT NULL,
                system_prompt TEXT,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                message_count INTEGER NOT NULL DEFAULT 0,
                user_message_count INTEGER NOT NULL DEFAULT 0,
                first_message_at INTEGER,
                last_message_at INTEGER
            )""",
            "CREATE INDEX chats_by_owner ON chats (owner, rank)",
            """CREATE TABLE messages (
                chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                id TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
                content TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                model TEXT,
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                PRIMARY KEY (chat_id, seq)
            )""",
            """CREATE TABLE summaries (
                chat_id TEXT PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE,
                summary TEXT NOT NULL,
                highlights TEXT NOT NULL,
                up_to_seq INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
        ),
    ),
    Migration(
        "m002_turn_tickets",
        (
            """CREATE TABLE turn_tickets (
                ticket INTEGER PRIMARY KEY AUTOINCREMENT,
                chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
                expires_at REAL NOT NULL
            )""",
            "CREATE INDEX turn_tickets_by_chat ON turn_tickets (chat_id, ticket)",
        ),
    ),
    Migration(
        "m003_idempotency_keys",
        (
            """CREATE TABLE idempotency_keys (
                owner TEXT NOT NULL,
                key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
                result TEXT,
                user_message_id TEXT,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                PRIMARY KEY (owner, key)
            )""",
            "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        ),
    ),
    Migration(
        "m004_message_status",
        (
            """ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'completed'
                CHECK (status IN ('completed', 'incomplete'))""",
        ),
    ),
)

INSERT_CHAT = """INSERT INTO chats (id, owner, title, metadata, system_prompt, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
SELECT_CHAT = f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = ? AND owner = ?"
CHAT_CURSORS = "SELECT id, rank FROM chats WHERE owner = ? AND id IN (?, ?)"
CHAT_PAGE = f"SELECT {CHAT_COLUMNS} FROM chats WHERE owner = ? AND rank > ? AND rank < ? ORDER BY rank %s LIMIT ?"
UPDATE_CHAT = f"""UPDATE chats SET
    title = CASE WHEN :set_title THEN :title ELSE title END,
    metadata = CASE WHEN :set_metadata THEN :metadata ELSE metadata END,
    system_prompt = CASE WHEN :set_system_prompt THEN :system_prompt ELSE system_prompt END,
    updated_at = :now
    WHERE id = :id AND owner = :owner
    RETURNING {CHAT_COLUMNS}"""
COUNT_MESSAGE = """UPDATE chats SET
    message_count = message_count + 1,
    user_message_count = user_message_count + :is_user,
    updated_at = :now,
    first_message_at = COALESCE(first_message_at, :now),
    last_message_at = :now
    WHERE id = :chat_id AND owner = :owner
    RETURNING message_count"""
INSERT_MESSAGE = f"""INSERT INTO messages ({MESSAGE_COLUMNS})
    VALUES (:id, :chat_id, :seq, :role, :content, :now, :model, :prompt_tokens, :completion_tokens, :status)"""
MESSAGE_CURSORS = "SELECT id, seq FROM messages WHERE chat_id = ? AND id IN (?, ?)"
MESSAGE_PAGE = f"""SELECT {MESSAGE_COLUMNS} FROM messages
    WHERE chat_id = ? AND seq > ? AND seq < ? ORDER BY seq %s LIMIT ?"""
SAVE_SUMMARY = f"""INSERT INTO summaries (chat_id, {SUMMARY_COLUMNS}) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (chat_id) DO UPDATE SET summary = excluded.summary, highlights = excluded.highlights,
        up_to_seq = excluded.up_to_seq, created_at = excluded.created_at
    WHERE summaries.up_to_seq <= excluded.up_to_seq"""
SELECT_MESSAGE = f"""SELECT {JOINED_MESSAGE_COLUMNS} FROM chats c
    LEFT JOIN messages m ON m.chat_id = c.id AND m.id = ? WHERE c.id = ? AND c.owner = ?"""
SELECT_KEY = f"SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE owner = :owner AND key = :key"
# Every rule of `ChatStore.claim_key` in one upsert; `_claim_key` reads the record first in the
# same write transaction, which no other process can enter, so the two agree.
CLAIM_KEY = f"""INSERT INTO idempotency_keys (owner, key, {KEY_COLUMNS})
    VALUES (:owner, :key, :fingerprint, 'running', NULL, NULL, :now, :now)
    ON CONFLICT (owner, key) DO UPDATE SET
        fingerprint = excluded.fingerprint,
        state = 'running',
        result = CASE WHEN created_at < :expired_before THEN NULL ELSE result END,
        user_message_id = CASE WHEN created_at < :expired_before THEN NULL ELSE user_message_id END,
        created_at = CASE WHEN created_at < :expired_before THEN :now ELSE created_at END,
        updated_at = :now
    WHERE created_at < :expired_before OR (fingerprint = :fingerprint
        AND (state = 'failed' OR (state = 'running' AND updated_at < :abandoned_before)))
    RETURNING true"""
UPDATE_KEY = """UPDATE idempotency_keys
    SET state = ?, result = ?, user_message_id = COALESCE(?, user_message_id), updated_at = ?
    WHERE owner = ? AND key = ?"""
CREATE_MIGRATIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"""
LATEST_MIGRATION = f"SELECT max(name) FROM {MIGRATIONS_TABLE}"
LIVE_TICKETS = "SELECT ticket FROM turn_tickets WHERE chat_id = ? AND expires_at > ? ORDER BY ticket"
EXTEND_TICKETS = """UPDATE turn_tickets SET expires_at = ?
    WHERE ticket IN (SELECT value FROM json_each(?)) AND expires_at > ? RETURNING ticket"""


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _when(micros: int) -> datetime:
    # Exact to the microsecond for any date this side of year 2200 (micros < 2**53), and 2.5x
    # quicker than EPOCH + timedelta.
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


class SqliteThread:
    """The one thread that owns the connection; `run` does one job on it."""

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = db

    async def run(self, job: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(job, self._db, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


@contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taking the write lock up front so it cannot fail halfway on a busy file."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _insert_chat(db: sqlite3.Connection, values: Sequence[Any]) -> None:
    db.execute(INSERT_CHAT, values)


def _chat_row(db: sqlite3.Connection, owner: str, chat_id: str) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = db.execute(SELECT_CHAT, (chat_id, owner)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return row


def _list_chats(db: sqlite3.Connection, owner: str, page: PageRequest) -> tuple[list[Chat], bool]:
    keys = dict(db.execute(CHAT_CURSORS, (owner, page.after or "", page.before or "")).fetchall())
    span = key_range(page, keys, "chat")
    rows = db.execute(CHAT_PAGE % _direction(span), (owner, span.above, span.below, span.fetch)).fetchall()
    chats, has_more = page_rows(rows, page, span)
    return [chat_from_row(row, _when) for row in chats], has_more


def _update_chat(db: sqlite3.Connection, owner: str, chat_id: str, changes: ChatChanges, now: int) -> Chat:
    values = {
        "set_title": "title" in changes.fields,
        "title": changes.title,
        "set_metadata": "metadata" in changes.fields,
        "metadata": to_json(changes.metadata),
        "set_system_prompt": "system_prompt" in changes.fields,
        "system_prompt": changes.system_prompt,
        "now": now,
        "id": chat_id,
        "owner": owner,
    }
    row = db.execute(UPDATE_CHAT, values).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return chat_from_row(row, _when)


def _delete_chat(db: sqlite3.Connection, owner: str, chat_id: str) -> None:
    if db.execute("DELETE FROM chats WHERE id = ? AND owner = ?", (chat_id, owner)).rowcount == 0:
        raise ChatNotFoundError(f"no chat {chat_id!r}")


def _append(db: sqlite3.Connection, owner: str, chat_id: str, values: dict[str, Any]) -> int:
    """Count the message on its chat and insert it in one transaction: the count is its seq."""
    with _writing(db):
        row = db.execute(COUNT_MESSAGE, {**values, "chat_id": chat_id, "owner": owner}).fetchone()
        if row is None:
            raise ChatNotFoundError(f"no chat {chat_id!r}")
        db.execute(INSERT_MESSAGE, {**values, "chat_id": chat_id, "seq": row[0]})
    seq: int = row[0]
    return seq


def _messages(db: sqlite3.Connection, owner: str, chat_id: str, page: PageRequest) -> tuple[list[Message], bool]:
    _chat_row(db, owner, chat_id)
    keys = dict(db.execute(MESSAGE_CURSORS, (chat_id, page.after or "", page.before or "")).fetchall())
    span = key_range(page, keys, "message")
    rows, has_more = page_rows(_window(db, chat_id, span), page, span)
    return [message_from_row(row, _when) for row in rows], has_more


def _recent(db: sqlite3.Connection, owner: str, chat_id: str, span: KeyRange) -> list[Message]:
    _chat_row(db, owner, chat_id)
    return [message_from_row(row, _when) for row in _window(db, chat_id, span)]


def _window(db: sqlite3.Connection, chat_id: str, span: KeyRange) -> list[tuple[Any, ...]]:
    return db.execute(MESSAGE_PAGE % _direction(span), (chat_id, span.above, span.below, span.fetch)).fetchall()


def _direction(span: KeyRange) -> str:
    return "DESC" if span.descending else "ASC"


def _stats(db: sqlite3.Connection, owner: str, chat_id: str) -> MessageStats:
    row = db.execute(f"SELECT {STATS_COLUMNS} FROM chats WHERE id = ? AND owner = ?", (chat_id, owner)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return stats_from_row(row, _when)


def _summary(db: sqlite3.Connection, owner: str, chat_id: str) -> SummaryText | None:
    _chat_row(db, owner, chat_id)
    row = db.execute(f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE chat_id = ?", (chat_id,)).fetchone()
    return None if row is None else summary_from_row(row, _when)


def _save_summary(db: sqlite3.Connection, owner: str, chat_id: str, summary: SummaryText) -> None:
    values = (chat_id, summary.summary, to_json(summary.highlights), summary.up_to_seq, _micros(summary.created_at))
    with _writing(db):
        _chat_row(db, owner, chat_id)
        db.execute(SAVE_SUMMARY, values)


def _message(db: sqlite3.Connection, owner: str, chat_id: str, message_id: str) -> Message:
    row = db.execute(SELECT_MESSAGE, (message_id, chat_id, owner)).fetchone()
    return joined_message_from_row(row, _when, chat_id, message_id)


def _claim_key(db: sqlite3.Connection, values: dict[str, Any]) -> tuple[bool, tuple[Any, ...] | None]:
    """The record as it was and whether the claim took it, under the write lock every process shares."""
    with _writing(db):
        previous = db.execute(SELECT_KEY, values).fetchone()
        claimed = db.execute(CLAIM_KEY, values).fetchone() is not None
    return claimed, previous


def _update_key(db: sqlite3.Connection, values: Sequence[Any]) -> None:
    db.execute(UPDATE_KEY, values)


def _release_key(db: sqlite3.Connection, owner: str, key: str) -> None:
    db.execute("DELETE FROM idempotency_keys WHERE owner = ? AND key = ?", (owner, key))


def _purge_keys(db: sqlite3.Connection, expired_before: int) -> int:
    purged: int = db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (expired_before,)).rowcount
    return purged


class SqliteStore:
    def __init__(self, thread: SqliteThread, leases: TurnLeases, migrations: Sequence[Migration]) -> None:
        self._thread = thread
        self._leases = leases
        self._migrations = migrations

    async def check_ready(self) -> None:
        check_schema(await self._thread.run(_latest_migration), self._migrations)

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        now = utcnow()
        chat = Chat(new_id("chat"), title, dict(metadata), system_prompt, now, now)
        values = (chat.id, owner, title, to_json(metadata), system_prompt, _micros(now), _micros(now))
        await self._thread.run(_insert_chat, values)
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        return chat_from_row(await self._thread.run(_chat_row, owner, chat_id), _when)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        return Page(*await self._thread.run(_list_chats, owner, page))

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        return await self._thread.run(_update_chat, owner, chat_id, changes, _micros(utcnow()))

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        await self._thread.run(_delete_chat, owner, chat_id)

    def turn_lease(self, owner: str, chat_id: str) -> AbstractAsyncContextManager[None]:
        return self._leases.hold(owner, chat_id)

    async def append_message(self, owner: str, chat_id: str, message: NewMessage) -> Message:
        message_id, now = new_id("msg"), utcnow()
        values = {
            "id": message_id,
            "is_user": message.role is Role.USER,
            "role": message.role.value,
            "content": message.content,
            "now": _micros(now),
            "model": message.model,
            "prompt_tokens": message.usage.prompt_tokens if message.usage else None,
            "completion_tokens": message.usage.completion_tokens if message.usage else None,
            "status": message.status.value,
        }
        seq = await self._thread.run(_append, owner, chat_id, values)
        return Message(
            message_id, chat_id, seq, message.role, message.content, now, message.model, message.usage, message.status
        )

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        return Page(*await self._thread.run(_messages, owner, chat_id, page))

    async def recent_messages(
        self, owner: str, chat_id: str, *, limit: int, before_seq: int | None = None, after_seq: int = 0
    ) -> list[Message]:
        span = newest_first(limit, before_seq, after_seq)
        return await self._thread.run(_recent, owner, chat_id, span)

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        return await self._thread.run(_stats, owner, chat_id)

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        return await self._thread.run(_summary, owner, chat_id)

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        await self._thread.run(_save_summary, owner, chat_id, summary)

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        return await self._thread.run(_message, owner, chat_id, message_id)

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        values = {
            "owner": owner,
            "key": key,
            "fingerprint": fingerprint,
            "now": _micros(utcnow()),
            "expired_before": _micros(expired_before),
            "abandoned_before": _micros(abandoned_before),
        }
        claimed, previous = await self._thread.run(_claim_key, values)
        return claim_from_row(claimed, previous, _when, expired_before)

    async def update_key(
        self,
        owner: str,
        key: str,
        *,
        state: KeyState,
        result: str | None = None,
        user_message_id: str | None = None,
    ) -> None:
        values = (state.value, result, user_message_id, _micros(utcnow()), owner, key)
        await self._thread.run(_update_key, values)

    async def release_key(self, owner: str, key: str) -> None:
        await self._thread.run(_release_key, owner, key)

    async def purge_keys(self, *, expired_before: datetime) -> int:
        return await self._thread.run(_purge_keys, _micros(expired_before))


def _latest_migration(db: sqlite3.Connection) -> str | None:
    row = db.execute(LATEST_MIGRATION).fetchone()
    return None if row is None else str(row[0])


class SqliteTickets:
    """Turn tickets as rows; expiries on this machine's clock, which all its processes share."""

    def __init__(self, thread: SqliteThread) -> None:
        self._thread = thread

    async def take_ticket(self, owner: str, chat_id: str, lease_seconds: float) -> tuple[int, bool]:
        return await self._thread.run(_take_ticket, owner, chat_id, lease_seconds)

    async def ticket_state(self, chat_id: str, ticket: int) -> TicketState:
        live = await self._thread.run(_live_tickets, chat_id)
        return state_of(ticket, live)

    async def return_ticket(self, chat_id: str, ticket: int) -> None:
        await self._thread.run(_return_ticket, ticket)

    async def extend_tickets(self, tickets: Collection[int], lease_seconds: float) -> set[int]:
        return await self._thread.run(_extend_tickets, list(tickets), lease_seconds)


def _take_ticket(db: sqlite3.Connection, owner: str, chat_id: str, lease_seconds: float) -> tuple[int, bool]:
    # One writer at a time on the file, so tickets commit in the order of their numbers.
    with _writing(db):
        _chat_row(db, owner, chat_id)
        now = time.time()
        insert = "INSERT INTO turn_tickets (chat_id, expires_at) VALUES (?, ?) RETURNING ticket"
        ticket: int = db.execute(insert, (chat_id, now + lease_seconds)).fetchone()[0]
        head = db.execute(LIVE_TICKETS + " LIMIT 1", (chat_id, now)).fetchone()[0]
    return ticket, head == ticket


def _live_tickets(db: sqlite3.Connection, chat_id: str) -> list[int]:
    return [row[0] for row in db.execute(LIVE_TICKETS, (chat_id, time.time()))]


def _return_ticket(db: sqlite3.Connection, ticket: int) -> None:
    db.execute("DELETE FROM turn_tickets WHERE ticket = ?", (ticket,))


def _extend_tickets(db: sqlite3.Connection, tickets: list[int], lease_seconds: float) -> set[int]:
    """Extend the live ones and drop every lapsed ticket (of this process or a dead one)."""
    now = time.time()
    with _writing(db):
        live = {row[0] for row in db.execute(EXTEND_TICKETS, (now + lease_seconds, to_json(tickets), now))}
        db.execute("DELETE FROM turn_tickets WHERE expires_at <= ?", (now,))
    return live


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Apply the pending migrations in one transaction; the write lock keeps other processes out meanwhile."""
    with _writing(db):
        db.execute(CREATE_MIGRATIONS_TABLE)
        applied = {row[0] for row in db.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for migration in pending(migrations, applied):
            for step in migration.steps:
                db.execute(step)
            db.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?)", (migration.name, _micros(utcnow())))
            log.info("applied migration %s", migration.name)


def _connect(path: str, synchronous: str, migrations: Sequence[Migration]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db, migrations)
    except BaseException:
        db.close()
        raise
    return db


@asynccontextmanager
async def open_sqlite_store(
    url: str, *, lease_seconds: float = LEASE_SECONDS, migrations: Sequence[Migration] = MIGRATIONS
) -> AsyncIterator[SqliteStore]:
    """The store in the file `url` names, created or upgraded to `migrations` first."""
    path, synchronous = sqlite_location(url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatkeep-sqlite")
    try:
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, _connect, path, synchronous, migrations)
        thread = SqliteThread(executor, db)
        try:
            leases = TurnLeases(SqliteTickets(thread), lease_seconds=lease_seconds, poll_seconds=POLL_SECONDS)
            async with leases:
                yield SqliteStore(thread, leases, migrations)
        finally:
            await loop.run_in_executor(executor, db.close)
    finally:
        executor.shutdown(wait=True)
