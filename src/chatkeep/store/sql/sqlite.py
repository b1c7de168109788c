"""`SqliteStore`: chats in one SQLite file, durable, for one machine (one or several processes).

One thread owns the connection and every store call is one job on it (a whole transaction, so
a call costs one hop off the event loop, not one per statement as through aiosqlite, whose
hops cost more than the SQL here); that thread is the process's
single writer, and SQLite's write lock (WAL mode, BEGIN IMMEDIATE, a busy timeout) orders the
writers of several processes on one file. Durability: WAL with `synchronous=NORMAL` (the
default) writes every commit into the WAL before the call returns, so every acknowledged write
survives the process being killed (`kill -9`), but not a power cut or OS crash; the URL option
`?synchronous=full` syncs each commit to disk and survives those too, at a cost per write.
Turns across processes are ticket rows polled with short, growing sleeps (`leases`); an append
carrying its turn's ticket checks, inside its write transaction, that the ticket still heads the
chat. Rate slots are counted in the same file, so every process on the machine shares a limit.
A turn reads its context from the chat's newest messages this process keeps (`tails`), proved
current by its own appends.
Timestamps are integer microseconds since the epoch (UTC), exact both ways. A file that stays
locked past the busy timeout (another process holding the write lock) is StoreUnavailableError,
a 503 to retry, not a crash. The tables and most statements are shared with PostgreSQL
(`schema`, `sql`); the ones here are those whose guarantee rests on the single writer.
"""

import asyncio
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from chatkeep.domain import (
    DELETED_ITEM,
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
    RollingSummary,
    StoredResponse,
    SummaryText,
    new_id,
    utcnow,
)
from chatkeep.errors import ChatNotFoundError, ResponseNotFoundError, StoreUnavailableError, TurnLapsedError
from chatkeep.store.paging import KeyRange, key_range, page_rows
from chatkeep.store.protocols import Broadcast
from chatkeep.store.sql.migrations import Migration, check_schema
from chatkeep.store.sql.recent import Tails
from chatkeep.store.sql.rows import (
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    chat_from_row,
    check_message,
    claim_from_row,
    item_json,
    joined_keys_from_rows,
    joined_message_from_row,
    joined_messages_from_rows,
    joined_summary_from_row,
    response_from_row,
    response_values,
    stats_from_row,
    to_json,
    update_chat_values,
)
from chatkeep.store.sql.schema import migrate, migrations_in
from chatkeep.store.sql.statements import Dialect, Statements, paged, spelled
from chatkeep.store.sql.tickets import (
    LAPSED_DETAIL,
    LEASE_SECONDS,
    Leases,
    Opened,
    Opening,
    TicketState,
    opening_of,
    state_of,
)
from chatkeep.store.urls import sqlite_location

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

POLL_SECONDS = (0.005, 0.1)  # no cross-process nudge on SQLite: short sleeps, growing
BUSY_TIMEOUT_MS = 10_000
LOCKED_RETRY_SECONDS = 1.0
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
    applied_at_default="",
)
MIGRATIONS = migrations_in(DIALECT)
SQL = Statements.in_dialect(DIALECT)

COUNT_MESSAGES = """UPDATE chats SET
    message_count = message_count + :count,
    user_message_count = user_message_count + :users,
    updated_at = :now,
    first_message_at = COALESCE(first_message_at, :now),
    last_message_at = :now
    WHERE id = :chat_id AND owner = :owner
    RETURNING message_count, system_prompt, revision"""
INSERT_MESSAGE = f"""INSERT INTO messages ({MESSAGE_COLUMNS})
    VALUES (:id, :chat_id, :seq, :role, :content, :now, :model, :prompt_tokens, :completion_tokens, :status, :item)"""
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
RETURN_TICKET = "DELETE FROM turn_tickets WHERE ticket = ?"
# Refresh the RUNNING ones among the (owner, key) pairs of a JSON array of {"owner", "key"}.
TOUCH_KEYS = """UPDATE idempotency_keys SET updated_at = ?2 WHERE state = 'running' AND (owner, key) IN (
    SELECT json_extract(value, '$.owner'), json_extract(value, '$.key') FROM json_each(?1))"""
# A moving window of rate slots on the machine's clock; the file's single writer orders takers.
DROP_OLD_SLOTS = spelled("DELETE FROM rate_slots WHERE key = $1 AND taken_at <= {now} - $2 * {second}", DIALECT)
COUNT_SLOTS = spelled("SELECT count(*), min(taken_at) + $2 * {second} - {now} FROM rate_slots WHERE key = $1", DIALECT)
TAKE_SLOT = spelled("INSERT INTO rate_slots (key, taken_at) VALUES ($1, {now})", DIALECT)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _when(micros: int) -> datetime:
    # Exact to the microsecond for any date this side of year 2200 (micros < 2**53), and 2.5x
    # quicker than EPOCH + timedelta.
    return datetime.fromtimestamp(micros / 1_000_000, UTC)


class SqliteThread:
    """The one thread that owns the connection; `run` does one job on it.

    Every statement goes through here, so this is where a file that stayed locked past the busy
    timeout becomes StoreUnavailableError.
    """

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self._executor = executor
        self._db = db

    async def run(self, job: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(job, self._db, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # the low byte is the primary code
                raise
            detail = f"the database stayed locked by another writer for over {BUSY_TIMEOUT_MS / 1000:g} s"
            raise StoreUnavailableError(detail, retry_after=LOCKED_RETRY_SECONDS) from error

    async def execute(self, query: str, *args: object) -> None:
        await self.run(_execute, query, args)

    async def fetch(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        return await self.run(_fetch, query, args)


def _execute(db: sqlite3.Connection, query: str, args: Sequence[object]) -> None:
    db.execute(query, args)


def _fetch(db: sqlite3.Connection, query: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
    return db.execute(query, args).fetchall()


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


def _chat_row(db: sqlite3.Connection, owner: str, chat_id: str) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = db.execute(SQL.select_chat, (chat_id, owner)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return row


def _list_chats(db: sqlite3.Connection, owner: str, page: PageRequest) -> tuple[list[Chat], bool]:
    keys = dict(db.execute(SQL.chat_cursors, (owner, page.after or "", page.before or "")).fetchall())
    span = key_range(page, keys, "chat")
    rows = db.execute(paged(SQL.chat_page, span), (owner, span.above, span.below, span.fetch)).fetchall()
    chats, has_more = page_rows(rows, page, span)
    return [chat_from_row(row, _when) for row in chats], has_more


def _update_chat(db: sqlite3.Connection, owner: str, chat_id: str, changes: ChatChanges, now: int) -> Chat:
    row = db.execute(SQL.update_chat, update_chat_values(chat_id, owner, changes, now)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return chat_from_row(row, _when)


def _delete_chat(db: sqlite3.Connection, owner: str, chat_id: str) -> None:
    if db.execute(SQL.delete_chat, (chat_id, owner)).fetchone() is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")


def _append(
    db: sqlite3.Connection,
    owner: str,
    chat_id: str,
    rows: list[dict[str, Any]],
    now: int,
    ticket: int | None,
    *,
    hand_on: bool = False,
) -> tuple[int, str | None, int]:
    """`_count_and_insert` in a transaction of its own; with `hand_on`, the same transaction returns the ticket."""
    with _writing(db):
        appended = _count_and_insert(db, owner, chat_id, rows, now, ticket)
        if hand_on:
            db.execute(RETURN_TICKET, (ticket,))
    return appended


def _count_and_insert(
    db: sqlite3.Connection, owner: str, chat_id: str, rows: list[dict[str, Any]], now: int, ticket: int | None
) -> tuple[int, str | None, int]:
    """Count the messages on their chat and insert them, in the caller's write transaction: the
    count is the last one's seq; the chat's system prompt and revision come back with it.

    With a ticket, only while that ticket is the chat's head; the file's single writer keeps
    another process from taking the turn between the check and the insert.
    """
    users = sum(row["role"] == "user" for row in rows)
    chat = {"chat_id": chat_id, "owner": owner, "count": len(rows), "users": users, "now": now}
    counted = db.execute(COUNT_MESSAGES, chat).fetchone()
    if counted is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    if ticket is not None and _live_tickets(db, chat_id)[:1] != [ticket]:
        raise TurnLapsedError(LAPSED_DETAIL)
    first = counted[0] - len(rows) + 1
    db.executemany(
        INSERT_MESSAGE, [{**row, "chat_id": chat_id, "now": now, "seq": first + n} for n, row in enumerate(rows)]
    )
    return counted[0], counted[1], counted[2]


def _forget_message(db: sqlite3.Connection, owner: str, chat_id: str, message_id: str) -> None:
    with _writing(db):
        found = db.execute(SQL.forget_message, (chat_id, owner, message_id)).fetchone()
        check_message(found, chat_id, message_id)
        db.execute(SQL.forgotten_message, (chat_id, message_id, to_json(DELETED_ITEM)))
        db.execute(SQL.revise_chat, (chat_id,))


def _messages(db: sqlite3.Connection, owner: str, chat_id: str, page: PageRequest) -> tuple[list[Message], bool]:
    cursors = db.execute(SQL.message_cursors, (chat_id, owner, page.after or "", page.before or "")).fetchall()
    span = key_range(page, joined_keys_from_rows(cursors, chat_id), "message")
    return page_rows(_window(db, owner, chat_id, span), page, span)


def _window(db: sqlite3.Connection, owner: str, chat_id: str, span: KeyRange) -> list[Message]:
    values = (chat_id, owner, span.above, span.below, span.fetch)
    return joined_messages_from_rows(db.execute(paged(SQL.message_page, span), values).fetchall(), _when, chat_id)


def _stats(db: sqlite3.Connection, owner: str, chat_id: str) -> MessageStats:
    row = db.execute(SQL.select_stats, (chat_id, owner)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return stats_from_row(row, _when)


def _summary(db: sqlite3.Connection, owner: str, chat_id: str) -> SummaryText | None:
    return joined_summary_from_row(db.execute(SQL.select_summary, (chat_id, owner)).fetchone(), _when, chat_id)


def _save_summary(db: sqlite3.Connection, owner: str, chat_id: str, values: Sequence[Any]) -> None:
    if db.execute(SQL.save_summary, (chat_id, owner, *values)).fetchone() is None:
        _chat_row(db, owner, chat_id)  # not saved: the chat is missing, or its cached summary covers more


def _rolling_summary(db: sqlite3.Connection, owner: str, chat_id: str) -> RollingSummary | None:
    row = db.execute(SQL.select_rolling_summary, (chat_id, owner)).fetchone()
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return None if row[0] is None else RollingSummary(row[0], row[1])


def _message(db: sqlite3.Connection, owner: str, chat_id: str, message_id: str) -> Message:
    row = db.execute(SQL.select_message, (chat_id, owner, message_id)).fetchone()
    return joined_message_from_row(row, _when, chat_id, message_id)


def _claim_key(db: sqlite3.Connection, values: dict[str, Any]) -> tuple[bool, tuple[Any, ...] | None]:
    """The record as it was and whether the claim took it, under the write lock every process shares."""
    with _writing(db):
        previous = db.execute(SELECT_KEY, values).fetchone()
        claimed = db.execute(CLAIM_KEY, values).fetchone() is not None
    return claimed, previous


def _purge_keys(db: sqlite3.Connection, expired_before: int) -> int:
    purged: int = db.execute(SQL.purge_keys, (expired_before,)).rowcount
    return purged


class SqliteStore:
    def __init__(self, thread: SqliteThread, leases: Leases, migrations: Sequence[Migration]) -> None:
        self._thread = thread
        self._leases = leases
        self._migrations = migrations
        self._tails = Tails()  # the newest messages of chats this process takes turns on

    async def check_ready(self) -> None:
        check_schema(await self._thread.run(_applied_migrations), self._migrations)

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        now = utcnow()
        chat = Chat(new_id("chat"), title, dict(metadata), system_prompt, now, now)
        await self._thread.execute(
            SQL.insert_chat, chat.id, owner, title, to_json(metadata), system_prompt, _micros(now)
        )
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        return chat_from_row(await self._thread.run(_chat_row, owner, chat_id), _when)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        return Page(*await self._thread.run(_list_chats, owner, page))

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        return await self._thread.run(_update_chat, owner, chat_id, changes, _micros(utcnow()))

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        await self._thread.run(_delete_chat, owner, chat_id)
        self._tails.forget(chat_id)

    def turn_lease(
        self, owner: str, chat_id: str, *, question: str | None = None
    ) -> AbstractAsyncContextManager[int | None]:
        return self._leases.hold(owner, chat_id, opening_of(question))

    async def append_message(
        self, owner: str, chat_id: str, message: NewMessage, *, ticket: int | None = None, hand_on: bool = False
    ) -> Message:
        stored, _ = await self._appended(owner, chat_id, [message], ticket, hand_on=hand_on)
        return stored[0]

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: int | None = None
    ) -> tuple[Message, str | None]:
        opened = self._leases.opened(ticket) if ticket is not None else None
        if opened is not None:  # stored as the turn was taken
            question = opened.message(chat_id)
            self._tails.appended(owner, chat_id, [question], revision=opened.revision, ticket=ticket)
            return question, opened.system_prompt
        return await self._append(owner, chat_id, NewMessage(Role.USER, content), ticket)

    async def append_messages(
        self, owner: str, chat_id: str, messages: Sequence[NewMessage], *, ticket: int | None = None
    ) -> tuple[list[Message], str | None]:
        return await self._appended(owner, chat_id, messages, ticket)

    async def _append(
        self, owner: str, chat_id: str, message: NewMessage, ticket: int | None
    ) -> tuple[Message, str | None]:
        stored, system_prompt = await self._appended(owner, chat_id, [message], ticket)
        return stored[0], system_prompt

    async def _appended(
        self, owner: str, chat_id: str, messages: Sequence[NewMessage], ticket: int | None, *, hand_on: bool = False
    ) -> tuple[list[Message], str | None]:
        now = utcnow()
        ids = [message.id or new_id("msg") for message in messages]
        rows = [_message_row(message_id, message) for message_id, message in zip(ids, messages, strict=True)]
        handing_on = hand_on and ticket is not None
        last, system_prompt, revision = await self._thread.run(
            _append, owner, chat_id, rows, _micros(now), ticket, hand_on=handing_on
        )
        if handing_on:
            assert ticket is not None
            self._leases.handed_on(ticket)
        first = last - len(messages) + 1
        stored = [
            Message(message_id, chat_id, first + n, m.role, m.content, now, m.model, m.usage, m.status, m.item)
            for n, (message_id, m) in enumerate(zip(ids, messages, strict=True))
        ]
        self._tails.appended(owner, chat_id, stored, revision=revision, ticket=ticket)
        return stored, system_prompt

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        await self._thread.run(_forget_message, owner, chat_id, message_id)
        self._tails.forget(chat_id)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        return Page(*await self._thread.run(_messages, owner, chat_id, page))

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int = 0,
        ticket: int | None = None,
    ) -> list[Message]:
        return await self._tails.recent_messages(
            owner,
            chat_id,
            lambda span: self._thread.run(_window, owner, chat_id, span),
            limit=limit,
            before_seq=before_seq,
            after_seq=after_seq,
            ticket=ticket,
        )

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        return await self._thread.run(_stats, owner, chat_id)

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        return await self._thread.run(_summary, owner, chat_id)

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        values = (summary.summary, to_json(summary.highlights), summary.up_to_seq, _micros(summary.created_at))
        await self._thread.run(_save_summary, owner, chat_id, values)

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        return await self._thread.run(_rolling_summary, owner, chat_id)

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        rows = await self._thread.fetch(SQL.claim_rolling_summary, chat_id, owner, hold_seconds)
        return bool(rows)

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        text, up_to_seq = (summary.text, summary.up_to_seq) if summary is not None else ("", 0)
        await self._thread.execute(SQL.end_rolling_summary, chat_id, owner, up_to_seq, text)

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        return await self._thread.run(_message, owner, chat_id, message_id)

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        abandoned_before = self._leases.abandoned_before(owner, key, abandoned_before)
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
        await self._thread.execute(SQL.update_key, owner, key, state.value, result, user_message_id, _micros(utcnow()))

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._leases.keep_key_alive(owner, key)

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._leases.let_key_lapse(owner, key)

    async def release_key(self, owner: str, key: str) -> None:
        await self._thread.execute(SQL.release_key, owner, key)

    async def purge_keys(self, *, expired_before: datetime) -> int:
        return await self._thread.run(_purge_keys, _micros(expired_before))

    async def save_response(self, owner: str, response: StoredResponse) -> None:
        await self._thread.execute(SQL.insert_response, *response_values(owner, response, _micros(response.created_at)))

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        rows = await self._thread.fetch(SQL.select_response, response_id, owner)
        return response_from_row(rows[0] if rows else None, _when, response_id)

    async def delete_response(self, owner: str, response_id: str) -> None:
        if not await self._thread.fetch(SQL.delete_response, response_id, owner):
            raise ResponseNotFoundError(f"no response {response_id!r}")

    async def take_rate_slot(self, key: str, *, limit: int, window_seconds: float) -> float | None:
        return await self._thread.run(_take_rate_slot, key, limit, window_seconds)

    @property
    def broadcast(self) -> Broadcast | None:
        return None  # processes sharing the file share no live channel: each resumes from the file


def _applied_migrations(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute(SQL.applied_migrations)}


class SqliteTickets:
    """Turn tickets as rows; expiries on this machine's clock, which all its processes share."""

    def __init__(self, thread: SqliteThread) -> None:
        self._thread = thread

    async def take_ticket(
        self, owner: str, chat_id: str, lease_seconds: float, opening: Opening | None
    ) -> tuple[int, bool, Opened | None]:
        if opening is None:
            ticket, head, _ = await self._thread.run(_take_ticket, owner, chat_id, lease_seconds, None, 0)
            return ticket, head, None
        row = _message_row(opening.message_id, NewMessage(Role.USER, opening.content))
        now = _micros(opening.created_at)
        ticket, head, appended = await self._thread.run(_take_ticket, owner, chat_id, lease_seconds, row, now)
        return ticket, head, None if appended is None else Opened(opening, *appended)

    async def ticket_state(self, chat_id: str, ticket: int) -> TicketState:
        live = await self._thread.run(_live_tickets, chat_id)
        return state_of(ticket, live)

    async def return_ticket(self, chat_id: str, ticket: int) -> None:
        await self._thread.execute(RETURN_TICKET, ticket)

    async def extend_tickets(self, tickets: Collection[int], lease_seconds: float) -> set[int]:
        return await self._thread.run(_extend_tickets, to_json(list(tickets)), lease_seconds)

    async def touch_keys(self, keys: Collection[tuple[str, str]]) -> None:
        held = to_json([{"owner": owner, "key": key} for owner, key in keys])
        await self._thread.execute(TOUCH_KEYS, held, _micros(utcnow()))


def _take_ticket(
    db: sqlite3.Connection,
    owner: str,
    chat_id: str,
    lease_seconds: float,
    opening: dict[str, Any] | None,
    now: int,
) -> tuple[int, bool, tuple[int, str | None, int] | None]:
    """A ticket, whether it is the head, and, when it is, the `opening` row appended (`_count_and_insert`)."""
    # One writer at a time on the file, so tickets commit in the order of their numbers.
    with _writing(db):
        _chat_row(db, owner, chat_id)
        ticket: int = db.execute(TAKE_TICKET, (chat_id, lease_seconds)).fetchone()[0]
        head = db.execute(SQL.live_tickets + " LIMIT 1", (chat_id,)).fetchone()[0] == ticket
        appended = _count_and_insert(db, owner, chat_id, [opening], now, ticket) if opening and head else None
    return ticket, head, appended


def _message_row(message_id: str, message: NewMessage) -> dict[str, Any]:
    return {
        "id": message_id,
        "role": message.role.value,
        "content": message.content,
        "model": message.model,
        "prompt_tokens": message.usage.prompt_tokens if message.usage else None,
        "completion_tokens": message.usage.completion_tokens if message.usage else None,
        "status": message.status.value,
        "item": item_json(message),
    }


def _take_rate_slot(db: sqlite3.Connection, key: str, limit: int, window_seconds: float) -> float | None:
    with _writing(db):
        db.execute(DROP_OLD_SLOTS, (key, window_seconds))
        counted, wait = db.execute(COUNT_SLOTS, (key, window_seconds)).fetchone()
        if counted >= limit:
            return float(wait)
        db.execute(TAKE_SLOT, (key,))
    return None


def _live_tickets(db: sqlite3.Connection, chat_id: str) -> list[int]:
    return [row[0] for row in db.execute(SQL.live_tickets, (chat_id,))]


def _extend_tickets(db: sqlite3.Connection, tickets: str, lease_seconds: float) -> set[int]:
    """Extend the live ones of `tickets` (a JSON array) and drop every lapsed ticket (of this process or a dead one)."""
    with _writing(db):
        live = {row[0] for row in db.execute(SQL.extend_tickets, (tickets, lease_seconds))}
        db.execute(SQL.drop_lapsed_tickets)
    return live


@asynccontextmanager
async def _migrating(thread: SqliteThread) -> AsyncIterator[SqliteThread]:
    """A write transaction for `migrate`: its lock keeps other processes out until it commits."""
    await thread.execute("BEGIN IMMEDIATE")
    try:
        yield thread
    except BaseException:
        await thread.execute("ROLLBACK")
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
    url: str, *, lease_seconds: float = LEASE_SECONDS, migrations: Sequence[Migration] = MIGRATIONS
) -> AsyncIterator[SqliteStore]:
    """The store in the file `url` names, created or upgraded to `migrations` first."""
    path, synchronous = sqlite_location(url)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatkeep-sqlite")
    try:
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, _connect, path, synchronous)
        thread = SqliteThread(executor, db)
        try:
            await migrate(_migrating(thread), DIALECT, migrations, applied_at=_micros(utcnow()))
            leases = Leases(SqliteTickets(thread), lease_seconds=lease_seconds, poll_seconds=POLL_SECONDS)
            async with leases:
                yield SqliteStore(thread, leases, migrations)
        finally:
            await loop.run_in_executor(executor, db.close)
    finally:
        executor.shutdown(wait=True)
