"""SQLite's driver: chats in one file, durable, for one machine (one or several processes).

One thread owns the connection and runs each store call's whole plan as one job, since a hop off
the event loop costs more than the SQL here. That thread is the process's single writer, and
SQLite's write lock (WAL, BEGIN IMMEDIATE, a busy timeout) orders the writers of several
processes: what this driver's own statements rest on. An append checks its ticket and takes its
timestamp inside its write transaction, so a stalled process writes nothing and timestamps
follow the order of the writes; waiters poll, as no process can nudge another. Every
acknowledged write survives the process being killed (WAL, `synchronous=NORMAL`); the URL option
`?synchronous=full` survives power loss too, at a cost per write. A file locked past the busy
timeout, a full disk, a file that cannot be read, written or opened (`UNAVAILABLE`) is
StoreUnavailableError, a 503 to retry, logged as one warning line naming the file.
"""

import asyncio
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from chatkeep.domain import Role, utcnow
from chatkeep.errors import ChatNotFoundError, StoreUnavailableError, TurnLapsedError
from chatkeep.store.blobs import BlobStore
from chatkeep.store.protocols import Broadcast, RateLease
from chatkeep.store.sql.base import SqlStore, sql_store
from chatkeep.store.sql.migrations import Migration
from chatkeep.store.sql.rows import KEY_COLUMNS, Appended, NewRow, Row, message_row
from chatkeep.store.sql.schema import migrate, migrations_in
from chatkeep.store.sql.search import M015_SQLITE, M019_SQLITE, SEARCH_BATCH, sqlite_catch_up, sqlite_search
from chatkeep.store.sql.statements import (
    Answer,
    Dialect,
    Done,
    Plan,
    Statement,
    Statements,
    advance,
    execute,
    execute_each,
    fetch,
    fetchrow,
    only,
    spelled,
)
from chatkeep.store.sql.tickets import LAPSED_DETAIL, LEASE_SECONDS, TakenTicket
from chatkeep.store.urls import sqlite_location

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

POLL_SECONDS = (0.005, 0.1)  # no cross-process nudge on SQLite: short sleeps, growing
BUSY_TIMEOUT_MS = 10_000
LOCKED_RETRY_SECONDS = 1.0
UNAVAILABLE_RETRY_SECONDS = 5.0
# The primary result codes that say the file cannot be used now, not that a statement is at fault,
# with what a client is told; SQLITE_BUSY is a lock held past the busy timeout (`SqliteThread.run`).
UNAVAILABLE = {
    sqlite3.SQLITE_LOCKED: "the database is locked",
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: "the database file cannot be read or written",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_READONLY: "the database file cannot be written",
    sqlite3.SQLITE_PROTOCOL: "the database's locks cannot be taken",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DIALECT = Dialect(
    name="sqlite",
    placeholder="?",
    # AUTOINCREMENT: a deleted row's key is never handed out again, so keys are monotonic.
    identity="INTEGER PRIMARY KEY AUTOINCREMENT",
    text="TEXT",
    integer="INTEGER",
    bigint="INTEGER",
    timestamp="INTEGER",  # microseconds since the epoch
    expiry="REAL",  # seconds since the epoch
    # The system clock (to the millisecond), which every process on the machine shares.
    now="((julianday('now') - 2440587.5) * 86400.0)",
    second="1",
    json_elements="json_each",
    binary="BLOB",
    lock_row="",
    applied_at_default="",
)
MIGRATIONS = migrations_in(DIALECT, extra={"m015_message_search": M015_SQLITE, "m019_lazy_search_index": M019_SQLITE})
SQL = Statements.in_dialect(DIALECT)

COUNT_MESSAGES = """UPDATE chats SET
    message_count = message_count + :count,
    user_message_count = user_message_count + :users,
    updated_at = :now,
    first_message_at = COALESCE(first_message_at, :now),
    last_message_at = :now
    WHERE id = :chat_id AND owner = :owner
    RETURNING message_count, system_prompt, revision"""
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
# In the dialect's words, so that tickets are taken on the clock the shared ticket statements read.
TAKE_TICKET = spelled(
    "INSERT INTO turn_tickets (chat_id, expires_at) VALUES ($1, {now} + $2 * {second}) RETURNING ticket", DIALECT
)
GIVE_BACK_TICKET = "DELETE FROM turn_tickets WHERE ticket = ?"
# Refresh the RUNNING ones among the (owner, key) pairs of a JSON array of {"owner", "key"}.
TOUCH_KEYS = """UPDATE idempotency_keys SET updated_at = ?2 WHERE state = 'running' AND (owner, key) IN (
    SELECT json_extract(value, '$.owner'), json_extract(value, '$.key') FROM json_each(?1))"""
# A moving window of rate slots on the machine's clock; the file's single writer orders the leases.
LEASE_END = "SELECT taken_at FROM rate_slots WHERE key = ?1 AND lease = ?2"
DROP_LEASE = "DELETE FROM rate_slots WHERE key = ?1 AND lease = ?2"
# A spent slot counts from when it was spent ($2 seconds ago), and never later than its lease's end ($3).
KEEP_SPENT = spelled(
    "INSERT INTO rate_slots (key, taken_at) VALUES ($1, min({now} - $2, coalesce($3, {now})))", DIALECT
)
DROP_OLD_SLOTS = spelled("DELETE FROM rate_slots WHERE key = $1 AND taken_at <= {now} - $2 * {second}", DIALECT)
COUNT_SLOTS = spelled(
    "SELECT coalesce(sum(slots), 0), min(taken_at) + $2 * {second} - {now} FROM rate_slots WHERE key = $1", DIALECT
)
HOLD_SLOTS = spelled("INSERT INTO rate_slots (key, taken_at, slots, lease) VALUES ($1, {now} + $2, $3, $4)", DIALECT)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _when(micros: int) -> datetime:
    # Exact to the microsecond for any date this side of year 2200 (micros < 2**53), and
    # quicker than EPOCH + timedelta.
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


class SqliteThread:
    """The one thread that owns the connection; `run` does one job on it.

    Every statement goes through here, so this is where a file that stayed locked past the busy
    timeout, or that cannot be written or read (`UNAVAILABLE`), becomes StoreUnavailableError.
    """

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection, path: str = "") -> None:
        self._executor = executor
        self._db = db
        self._name = f"SQLite file {path}" if path else "SQLite file"

    async def run(self, job: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(job, self._db, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the low byte is the primary code
            if code == sqlite3.SQLITE_BUSY:
                detail = f"the database stayed locked by another writer for over {BUSY_TIMEOUT_MS / 1000:g} s"
                raise StoreUnavailableError(detail, retry_after=LOCKED_RETRY_SECONDS) from error
            if code not in UNAVAILABLE:
                raise
            log.warning("%s cannot be used: %s (%s)", self._name, error, error.sqlite_errorname)
            raise StoreUnavailableError(UNAVAILABLE[code], retry_after=UNAVAILABLE_RETRY_SECONDS) from error

    async def execute(self, query: str, *args: object) -> None:
        await self.run(_answer, execute(query, *args))

    async def fetch(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self.run(_answer, fetch(query, *args))
        return rows


def _drive(db: sqlite3.Connection, plan: Plan[T], write: bool) -> T:
    """Run `plan` on the thread; with `write`, in one write transaction, whose lock is taken up
    front so that it cannot fail halfway on a busy file."""
    if write:
        db.execute("BEGIN IMMEDIATE")
    try:
        step = advance(plan)
        while not isinstance(step, Done):
            try:
                answer = _answer(db, step)
            except sqlite3.IntegrityError as error:
                if "FOREIGN KEY" not in str(error):
                    raise
                step = advance(plan, error=ChatNotFoundError("the chat was deleted meanwhile"))
            else:
                step = advance(plan, answer)
    except BaseException:
        if write:
            _roll_back(db)
        raise
    if write:
        db.execute("COMMIT")
    result: T = step.value
    return result


def _roll_back(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # a full disk or an I/O error may have rolled it back already
        db.execute("ROLLBACK")


def _answer(db: sqlite3.Connection, statement: Statement) -> Any:
    query, args, answer = statement.query, statement.args, statement.answer
    if answer is Answer.EACH:
        db.executemany(query, args)
        return None
    cursor = db.execute(query, args)
    if answer is Answer.ROWS:
        return cursor.fetchall()
    if answer is Answer.ROW:
        return cursor.fetchone()
    return cursor.rowcount if answer is Answer.COUNT else None


class SqliteDriver:
    sql = SQL
    touch_keys = TOUCH_KEYS
    search = staticmethod(sqlite_search)
    id_clash: type[Exception] = sqlite3.IntegrityError
    search_in_transaction = False  # a write transaction here would take the file's write lock
    broadcast: Broadcast | None = None  # processes sharing the file share no live channel: each resumes from the file

    def __init__(self, thread: SqliteThread, migrations: Sequence[Migration]) -> None:
        self._thread = thread
        self.migrations = migrations
        self._unindexed = 0  # messages this process appended since its last catch-up of the search index

    async def catch_up_search(self) -> None:
        """Index what the search index has yet to hold (search.py, m019), so a search finds every message stored."""
        await self.run(sqlite_catch_up(), write=True)
        self._unindexed = 0

    def _catch_up_due(self, appending: int) -> bool:
        """Whether appending `appending` messages brings this process's backlog to a batch: the
        append then indexes it, in its own transaction, so a turn seldom pays for indexing."""
        return self._unindexed + appending >= SEARCH_BATCH

    def _appended(self, count: int, *, caught_up: bool) -> None:
        """Count `count` messages stored, by an append that caught the index up or not."""
        self._unindexed = 0 if caught_up else self._unindexed + count

    async def run(self, plan: Plan[T], *, write: bool = False) -> T:
        return await self._thread.run(_drive, plan, write)

    def stamp(self, moment: datetime) -> int:
        return _micros(moment)

    def moment(self, value: int) -> datetime:
        return _when(value)

    async def applied_migrations(self) -> set[str]:
        return {row[0] for row in await self.run(only(fetch(SQL.applied_migrations)))}

    async def append(
        self, owner: str, chat_id: str, messages: Sequence[NewRow], ticket: int | None, *, ends_turn: bool
    ) -> Appended:
        catch_up = self._catch_up_due(len(messages))
        appended = await self.run(
            _append(owner, chat_id, messages, ticket, ends_turn=ends_turn, catch_up=catch_up), write=True
        )
        self._appended(len(messages), caught_up=catch_up)
        return appended

    async def take_ticket(self, owner: str, chat_id: str, lease_seconds: float, question: NewRow | None) -> TakenTicket:
        catch_up = question is not None and self._catch_up_due(1)
        taken = await self.run(_take_ticket(owner, chat_id, lease_seconds, question, catch_up=catch_up), write=True)
        if taken.question is not None:  # stored (and the index caught up) only when the ticket headed the chat
            self._appended(1, caught_up=catch_up)
        return taken

    async def give_back_ticket(self, chat_id: str, ticket: int) -> None:
        await self.run(only(execute(GIVE_BACK_TICKET, ticket)))

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, now: Any, expired_before: Any, abandoned_before: Any
    ) -> tuple[bool, Row | None]:
        values = {
            "owner": owner,
            "key": key,
            "fingerprint": fingerprint,
            "now": now,
            "expired_before": expired_before,
            "abandoned_before": abandoned_before,
        }
        return await self.run(_claim_key(values), write=True)

    async def renew_rate_lease(
        self,
        key: str,
        lease: str,
        *,
        spent: Sequence[float],
        want: int,
        limit: int,
        window_seconds: float,
        lease_seconds: float,
    ) -> RateLease:
        renewal = _renew_rate_lease(key, lease, spent, want, limit, window_seconds, lease_seconds)
        return await self.run(renewal, write=True)


def _append(
    owner: str, chat_id: str, messages: Sequence[NewRow], ticket: int | None, *, ends_turn: bool, catch_up: bool
) -> Plan[Appended]:
    """The append, with `ends_turn` the ticket given back and with `catch_up` the search index
    caught up, in the caller's write transaction."""
    appended = yield from _count_and_insert(owner, chat_id, messages, ticket)
    if ends_turn:
        yield execute(GIVE_BACK_TICKET, ticket)
    if catch_up:
        yield from sqlite_catch_up()
    return Appended(appended.last_seq, appended.system_prompt, appended.revision, appended.created_at, ends_turn)


def _count_and_insert(owner: str, chat_id: str, messages: Sequence[NewRow], ticket: int | None) -> Plan[Appended]:
    """Count the messages on their chat and insert them, created now, in the caller's write
    transaction: the count is the last one's seq. With a ticket, only while that ticket heads the
    chat; the file's single writer keeps another process from taking the turn meanwhile."""
    now = utcnow()
    users = sum(message.role is Role.USER for _, message in messages)
    chat = {"chat_id": chat_id, "owner": owner, "count": len(messages), "users": users, "now": _micros(now)}
    counted = yield Statement(COUNT_MESSAGES, chat, Answer.ROW)
    if counted is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    if ticket is not None and (yield fetchrow(SQL.head_ticket, chat_id))[0] != ticket:
        raise TurnLapsedError(LAPSED_DETAIL)
    last, system_prompt, revision = counted
    first = last - len(messages) + 1
    rows = [message_row(message, chat_id, first + n, chat["now"]) for n, message in enumerate(messages)]
    yield execute_each(SQL.insert_message, rows)
    return Appended(last, system_prompt, revision, now)


def _take_ticket(
    owner: str, chat_id: str, lease_seconds: float, question: NewRow | None, *, catch_up: bool
) -> Plan[TakenTicket]:
    """A ticket, whether it is the head, and when it is, `question` appended (and with `catch_up`
    the search index caught up). One writer at a time on the file, so tickets commit in the order
    of their numbers."""
    if (yield fetchrow(SQL.select_chat, chat_id, owner)) is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    ticket: int = (yield fetchrow(TAKE_TICKET, chat_id, lease_seconds))[0]
    head = (yield fetchrow(SQL.head_ticket, chat_id))[0] == ticket
    if question is None or not head:
        return TakenTicket(ticket, head, None)
    appended = yield from _count_and_insert(owner, chat_id, [question], None)
    if catch_up:
        yield from sqlite_catch_up()
    return TakenTicket(ticket, head, appended)


def _claim_key(values: dict[str, Any]) -> Plan[tuple[bool, Row | None]]:
    """The record as it was and whether the claim took it, under the write lock every process shares."""
    previous = yield Statement(SELECT_KEY, values, Answer.ROW)
    claimed = (yield Statement(CLAIM_KEY, values, Answer.ROW)) is not None
    return claimed, previous


def _renew_rate_lease(
    key: str, lease: str, spent: Sequence[float], want: int, limit: int, window_seconds: float, lease_seconds: float
) -> Plan[RateLease]:
    """`ChatStore.renew_rate_lease` in the caller's write transaction."""
    ends = yield fetchrow(LEASE_END, key, lease)
    yield execute(DROP_LEASE, key, lease)
    if spent:
        yield execute_each(KEEP_SPENT, [(key, age, None if ends is None else ends[0]) for age in spent])
    yield execute(DROP_OLD_SLOTS, key, window_seconds)
    counted, wait = yield fetchrow(COUNT_SLOTS, key, window_seconds)
    granted = max(0, min(want, limit - counted))
    if granted:
        yield execute(HOLD_SLOTS, key, lease_seconds, granted, lease)
        return RateLease(granted)
    return RateLease(0, None if want == 0 else float(wait))


@asynccontextmanager
async def _migrating(thread: SqliteThread) -> AsyncIterator[SqliteThread]:
    """A write transaction for `migrate`: its lock keeps other processes out until it commits."""
    await thread.execute("BEGIN IMMEDIATE")
    try:
        yield thread
    except BaseException:
        await thread.run(_roll_back)
        raise
    await thread.execute("COMMIT")


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db


@asynccontextmanager
async def open_sqlite_store(
    url: str,
    *,
    lease_seconds: float = LEASE_SECONDS,
    migrations: Sequence[Migration] = MIGRATIONS,
    blobs: BlobStore | None = None,
) -> AsyncIterator[SqlStore]:
    """The store in the file `url` names, created or upgraded to `migrations` first."""
    path, synchronous = sqlite_location(url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatkeep-sqlite")
    try:
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, _connect, path, synchronous)
        thread = SqliteThread(executor, db, path)
        try:
            await migrate(_migrating(thread), DIALECT, migrations, applied_at=_micros(utcnow()))
            driver = SqliteDriver(thread, migrations)
            async with sql_store(driver, lease_seconds=lease_seconds, poll_seconds=POLL_SECONDS, blobs=blobs) as store:
                yield store
        finally:
            await loop.run_in_executor(executor, db.close)
    finally:
        executor.shutdown(wait=True)
