"""`PostgresStore`: chats in PostgreSQL, shared by any number of server processes.

Every store call is one statement on a pooled connection (asyncpg prepares and caches it), and
a connection goes back to the pool as soon as the statement ends, so a pool of ~20 serves
thousands of turns in flight. An append bumps the chat's counters and inserts the message in
one statement: the chat row's lock makes concurrent appends, from any process, take
consecutive seqs. Turns across processes are ticket rows (`turn_leases`) taken and returned by
two small PL/pgSQL functions that lock the chat row, so a chat's tickets commit in number order;
a returned ticket NOTIFYs `chatkeep_turns`, which one listening connection per process turns
into wake-ups (polling covers a lost one). An Idempotency-Key claim is one statement too, sent
again only when another claim inserted the same key while it ran. Timestamps are `timestamptz`;
ticket expiries use the database clock, which every process shares.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TypeAlias

import asyncpg

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
from chatkeep.errors import ChatNotFoundError, StoreUnavailableError
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
from chatkeep.store.urls import pool_options

log = logging.getLogger(__name__)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"  # generic only to the type checker
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

MIN_POOL_SIZE = 2
LEASE_SECONDS = 15.0
MAX_POLL_SECONDS = 1.0  # LISTEN/NOTIFY wakes waiters; polling only covers a lost nudge or a dead holder
RELISTEN_SECONDS = 1.0
CHANNEL = "chatkeep_turns"
READY_TIMEOUT_SECONDS = 2.0
MIGRATION_LOCK = 0x63686174_6B656570  # "chatkeep": one process migrates a database at a time

MIGRATIONS = (
    Migration(
        "m001_initial",
        (
            """CREATE TABLE chats (
                rank bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id text NOT NULL UNIQUE,
                owner text NOT NULL,
                title text,
                metadata text NOT NULL,
                system_prompt text,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                message_count bigint NOT NULL DEFAULT 0,
                user_message_count bigint NOT NULL DEFAULT 0,
                first_message_at timestamptz,
                last_message_at timestamptz
            )""",
            "CREATE INDEX chats_by_owner ON chats (owner, rank)",
            """CREATE TABLE messages (
                chat_id text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
                seq bigint NOT NULL,
                id text NOT NULL UNIQUE,
                role text NOT NULL CHECK (role IN ('user', 'assistant')),
                content text NOT NULL,
                created_at timestamptz NOT NULL,
                model text,
                prompt_tokens integer,
                completion_tokens integer,
                PRIMARY KEY (chat_id, seq)
            )""",
            """CREATE TABLE summaries (
                chat_id text PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE,
                summary text NOT NULL,
                highlights text NOT NULL,
                up_to_seq bigint NOT NULL,
                created_at timestamptz NOT NULL
            )""",
        ),
    ),
    Migration(
        "m002_turn_tickets",
        (
            """CREATE TABLE turn_tickets (
                ticket bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                chat_id text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
                expires_at timestamptz NOT NULL
            )""",
            "CREATE INDEX turn_tickets_by_chat ON turn_tickets (chat_id, ticket)",
            # Tickets need no fsync (`synchronous_commit` off for their transaction only): they are
            # worthless after a database crash, which ends every connection and turn anyway.
            # Locking the chat row orders a chat's ticket commits like their numbers, and each
            # statement of a VOLATILE function reads a fresh snapshot, so the head query sees every
            # lower ticket: two takers can never both find themselves at the head.
            """CREATE FUNCTION chatkeep_take_ticket(p_owner text, p_chat text, p_lease double precision)
            RETURNS TABLE (taken bigint, head bigint) LANGUAGE plpgsql AS $$
            DECLARE
                mine bigint;
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                PERFORM FROM chats WHERE chats.id = p_chat AND chats.owner = p_owner FOR NO KEY UPDATE;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                INSERT INTO turn_tickets (chat_id, expires_at)
                    VALUES (p_chat, now() + make_interval(secs => p_lease))
                    RETURNING turn_tickets.ticket INTO mine;
                RETURN QUERY SELECT mine, min(t.ticket) FROM turn_tickets t
                    WHERE t.chat_id = p_chat AND t.expires_at > now();
            END $$""",
            # Locked like a take: a ticket taken meanwhile is either seen here (and nudged) or
            # sees this one gone, so no waiter misses its turn for want of a NOTIFY.
            f"""CREATE FUNCTION chatkeep_return_ticket(p_chat text, p_ticket bigint)
            RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                PERFORM FROM chats WHERE chats.id = p_chat FOR NO KEY UPDATE;
                DELETE FROM turn_tickets WHERE turn_tickets.ticket = p_ticket;
                IF EXISTS (SELECT FROM turn_tickets WHERE turn_tickets.chat_id = p_chat) THEN
                    PERFORM pg_notify('{CHANNEL}', p_chat);
                END IF;
            END $$""",
        ),
    ),
    Migration(
        "m003_idempotency_keys",
        (
            """CREATE TABLE idempotency_keys (
                owner text NOT NULL,
                key text NOT NULL,
                fingerprint text NOT NULL,
                state text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
                result text,
                user_message_id text,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                PRIMARY KEY (owner, key)
            )""",
            "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        ),
    ),
    Migration(
        "m004_message_status",
        (
            """ALTER TABLE messages ADD COLUMN status text NOT NULL DEFAULT 'completed'
                CHECK (status IN ('completed', 'incomplete'))""",
        ),
    ),
)

INSERT_CHAT = """INSERT INTO chats (id, owner, title, metadata, system_prompt, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $6)"""
SELECT_CHAT = f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = $1 AND owner = $2"
CHAT_CURSORS = "SELECT id, rank FROM chats WHERE owner = $1 AND id IN ($2, $3)"
CHAT_PAGE = f"SELECT {CHAT_COLUMNS} FROM chats WHERE owner = $1 AND rank > $2 AND rank < $3 ORDER BY rank %s LIMIT $4"
UPDATE_CHAT = f"""UPDATE chats SET
    title = CASE WHEN $3 THEN $4 ELSE title END,
    metadata = CASE WHEN $5 THEN $6 ELSE metadata END,
    system_prompt = CASE WHEN $7 THEN $8 ELSE system_prompt END,
    updated_at = $9
    WHERE id = $1 AND owner = $2
    RETURNING {CHAT_COLUMNS}"""
APPEND_MESSAGE = f"""WITH counted AS (
    UPDATE chats SET
        message_count = message_count + 1,
        user_message_count = user_message_count + $3,
        updated_at = $6,
        first_message_at = COALESCE(first_message_at, $6),
        last_message_at = $6
    WHERE id = $1 AND owner = $2
    RETURNING id, message_count
)
INSERT INTO messages ({MESSAGE_COLUMNS})
    SELECT $4, id, message_count, $5, $7, $6, $8, $9, $10, $11 FROM counted
    RETURNING seq"""
MESSAGE_CURSORS = """SELECT m.id, m.seq FROM chats c
    LEFT JOIN messages m ON m.chat_id = c.id AND m.id IN ($3, $4)
    WHERE c.id = $1 AND c.owner = $2"""
# One row per message, or one row of NULLs for a chat with none in range: no row means no chat.
MESSAGE_PAGE = f"""SELECT m.* FROM chats c LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages
    WHERE chat_id = c.id AND seq > $3 AND seq < $4 ORDER BY seq %s LIMIT $5
) m ON true WHERE c.id = $1 AND c.owner = $2"""
DELETE_CHAT = "DELETE FROM chats WHERE id = $1 AND owner = $2 RETURNING true"
SELECT_STATS = f"SELECT {STATS_COLUMNS} FROM chats WHERE id = $1 AND owner = $2"
SELECT_SUMMARY = f"""SELECT c.id, s.{", s.".join(SUMMARY_COLUMNS.split(", "))}
    FROM chats c LEFT JOIN summaries s ON s.chat_id = c.id WHERE c.id = $1 AND c.owner = $2"""
SAVE_SUMMARY = f"""WITH chat AS (SELECT id FROM chats WHERE id = $1 AND owner = $2),
saved AS (
    INSERT INTO summaries (chat_id, {SUMMARY_COLUMNS}) SELECT id, $3, $4, $5, $6 FROM chat
    ON CONFLICT (chat_id) DO UPDATE SET summary = excluded.summary, highlights = excluded.highlights,
        up_to_seq = excluded.up_to_seq, created_at = excluded.created_at
    WHERE summaries.up_to_seq <= excluded.up_to_seq
)
SELECT count(*) FROM chat"""
SELECT_MESSAGE = f"""SELECT {JOINED_MESSAGE_COLUMNS} FROM chats c
    LEFT JOIN messages m ON m.chat_id = c.id AND m.id = $3 WHERE c.id = $1 AND c.owner = $2"""
# The rules of `ChatStore.claim_key` in one statement. `old` locks the record and reads its latest
# version (FOR UPDATE in READ COMMITTED follows concurrent updates), and both writes read `old`
# first. A record that another claim inserted after this statement's snapshot is invisible to
# `old` and makes `fresh` do nothing: the caller sees neither a claim nor a record and asks again.
CLAIM_KEY = f"""WITH old AS (
    SELECT {KEY_COLUMNS} FROM idempotency_keys WHERE owner = $1 AND key = $2 FOR UPDATE
),
fresh AS (
    INSERT INTO idempotency_keys (owner, key, {KEY_COLUMNS})
    SELECT $1, $2, $3, 'running', NULL, NULL, $4, $4 WHERE NOT EXISTS (SELECT FROM old)
    ON CONFLICT (owner, key) DO NOTHING
    RETURNING true
),
renewed AS (
    UPDATE idempotency_keys k SET
        fingerprint = $3,
        state = 'running',
        result = CASE WHEN old.created_at < $5 THEN NULL ELSE old.result END,
        user_message_id = CASE WHEN old.created_at < $5 THEN NULL ELSE old.user_message_id END,
        created_at = CASE WHEN old.created_at < $5 THEN $4 ELSE old.created_at END,
        updated_at = $4
    FROM old
    WHERE k.owner = $1 AND k.key = $2 AND (old.created_at < $5 OR (old.fingerprint = $3
        AND (old.state = 'failed' OR (old.state = 'running' AND old.updated_at < $6))))
    RETURNING true
)
SELECT EXISTS (SELECT FROM fresh) OR EXISTS (SELECT FROM renewed), old.*
    FROM (VALUES (true)) AS one LEFT JOIN old ON true"""
UPDATE_KEY = """UPDATE idempotency_keys
    SET state = $3, result = $4, user_message_id = COALESCE($5, user_message_id), updated_at = $6
    WHERE owner = $1 AND key = $2"""
LIVE_TICKETS = "SELECT ticket FROM turn_tickets WHERE chat_id = $1 AND expires_at > now() ORDER BY ticket"
EXTEND_TICKETS = """UPDATE turn_tickets SET expires_at = now() + make_interval(secs => $2)
    WHERE ticket = ANY($1::bigint[]) AND expires_at > now() RETURNING ticket"""
CREATE_MIGRATIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
LATEST_MIGRATION = f"SELECT max(name) FROM {MIGRATIONS_TABLE}"


def _when(moment: datetime) -> datetime:
    return moment


def _no_chat(chat_id: str) -> ChatNotFoundError:
    return ChatNotFoundError(f"no chat {chat_id!r}")


def _direction(span: KeyRange) -> str:
    return "DESC" if span.descending else "ASC"


class PostgresStore:
    def __init__(self, pool: Pool, leases: TurnLeases, migrations: Sequence[Migration]) -> None:
        self._pool = pool
        self._leases = leases
        self._migrations = migrations

    async def check_ready(self) -> None:
        try:
            latest = await self._pool.fetchval(LATEST_MIGRATION, timeout=READY_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise StoreUnavailableError(f"PostgreSQL does not answer: {error or type(error).__name__}") from error
        check_schema(latest, self._migrations)

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        now = utcnow()
        chat = Chat(new_id("chat"), title, dict(metadata), system_prompt, now, now)
        await self._pool.execute(INSERT_CHAT, chat.id, owner, title, to_json(metadata), system_prompt, now)
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        row = await self._pool.fetchrow(SELECT_CHAT, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return chat_from_row(row, _when)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = await self._pool.fetch(CHAT_CURSORS, owner, page.after or "", page.before or "")
            keys = {row[0]: row[1] for row in cursors}
        span = key_range(page, keys, "chat")
        rows = await self._pool.fetch(CHAT_PAGE % _direction(span), owner, span.above, span.below, span.fetch)
        chats, has_more = page_rows(rows, page, span)
        return Page([chat_from_row(row, _when) for row in chats], has_more)

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        row = await self._pool.fetchrow(
            UPDATE_CHAT,
            chat_id,
            owner,
            "title" in changes.fields,
            changes.title,
            "metadata" in changes.fields,
            to_json(changes.metadata),
            "system_prompt" in changes.fields,
            changes.system_prompt,
            utcnow(),
        )
        if row is None:
            raise _no_chat(chat_id)
        return chat_from_row(row, _when)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        deleted = await self._pool.fetchval(DELETE_CHAT, chat_id, owner)
        if deleted is None:
            raise _no_chat(chat_id)

    def turn_lease(self, owner: str, chat_id: str) -> AbstractAsyncContextManager[None]:
        return self._leases.hold(owner, chat_id)

    async def append_message(self, owner: str, chat_id: str, message: NewMessage) -> Message:
        message_id, now, usage = new_id("msg"), utcnow(), message.usage
        seq = await self._pool.fetchval(
            APPEND_MESSAGE,
            chat_id,
            owner,
            int(message.role is Role.USER),
            message_id,
            message.role.value,
            now,
            message.content,
            message.model,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            message.status.value,
        )
        if seq is None:
            raise _no_chat(chat_id)
        return Message(
            message_id, chat_id, seq, message.role, message.content, now, message.model, usage, message.status
        )

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = await self._pool.fetch(MESSAGE_CURSORS, chat_id, owner, page.after or "", page.before or "")
            if not cursors:
                raise _no_chat(chat_id)
            keys = {row[0]: row[1] for row in cursors if row[0] is not None}
        span = key_range(page, keys, "message")
        window, has_more = page_rows(await self._window(owner, chat_id, span), page, span)
        return Page(window, has_more)

    async def recent_messages(
        self, owner: str, chat_id: str, *, limit: int, before_seq: int | None = None, after_seq: int = 0
    ) -> list[Message]:
        span = newest_first(limit, before_seq, after_seq)
        return await self._window(owner, chat_id, span)

    async def _window(self, owner: str, chat_id: str, span: KeyRange) -> list[Message]:
        query = MESSAGE_PAGE % _direction(span)
        rows = await self._pool.fetch(query, chat_id, owner, span.above, span.below, span.fetch)
        if not rows:
            raise _no_chat(chat_id)
        return [message_from_row(row, _when) for row in rows if row[0] is not None]

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        row = await self._pool.fetchrow(SELECT_STATS, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return stats_from_row(row, _when)

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        row = await self._pool.fetchrow(SELECT_SUMMARY, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return None if row[1] is None else summary_from_row(tuple(row)[1:], _when)

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        highlights = to_json(summary.highlights)
        try:
            found = await self._pool.fetchval(
                SAVE_SUMMARY, chat_id, owner, summary.summary, highlights, summary.up_to_seq, summary.created_at
            )
        except asyncpg.ForeignKeyViolationError:  # the chat was deleted while we wrote
            found = 0
        if not found:
            raise _no_chat(chat_id)

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        row = await self._pool.fetchrow(SELECT_MESSAGE, chat_id, owner, message_id)
        return joined_message_from_row(row, _when, chat_id, message_id)

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        request = (owner, key, fingerprint)
        while True:
            row = await self._pool.fetchrow(CLAIM_KEY, *request, utcnow(), expired_before, abandoned_before)
            assert row is not None  # the statement answers one row, always
            claimed, *previous = row
            if claimed or previous[0] is not None:
                return claim_from_row(claimed, None if previous[0] is None else previous, _when, expired_before)
            log.debug("a concurrent claim inserted key %r first; claiming again", key)

    async def update_key(
        self,
        owner: str,
        key: str,
        *,
        state: KeyState,
        result: str | None = None,
        user_message_id: str | None = None,
    ) -> None:
        await self._pool.execute(UPDATE_KEY, owner, key, state.value, result, user_message_id, utcnow())

    async def release_key(self, owner: str, key: str) -> None:
        await self._pool.execute("DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2", owner, key)

    async def purge_keys(self, *, expired_before: datetime) -> int:
        status = await self._pool.execute("DELETE FROM idempotency_keys WHERE created_at < $1", expired_before)
        return int(status.rpartition(" ")[2])  # "DELETE <count>"


class PostgresTickets:
    """Turn tickets as rows; expiries on the database clock."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def take_ticket(self, owner: str, chat_id: str, lease_seconds: float) -> tuple[int, bool]:
        row = await self._pool.fetchrow("SELECT * FROM chatkeep_take_ticket($1, $2, $3)", owner, chat_id, lease_seconds)
        if row is None:
            raise _no_chat(chat_id)
        taken, head = row
        return taken, taken == head

    async def ticket_state(self, chat_id: str, ticket: int) -> TicketState:
        live = await self._pool.fetch(LIVE_TICKETS, chat_id)
        return state_of(ticket, [row[0] for row in live])

    async def return_ticket(self, chat_id: str, ticket: int) -> None:
        await self._pool.execute("SELECT chatkeep_return_ticket($1, $2)", chat_id, ticket)

    async def extend_tickets(self, tickets: Collection[int], lease_seconds: float) -> set[int]:
        """Extend the live ones and drop every lapsed ticket (of this process or a dead one)."""
        async with self._pool.acquire() as connection, connection.transaction():
            live = {row[0] for row in await connection.fetch(EXTEND_TICKETS, list(tickets), lease_seconds)}
            await connection.execute("DELETE FROM turn_tickets WHERE expires_at <= now()")
        return live


async def migrate(connection: Connection, migrations: Sequence[Migration]) -> None:
    """Apply the pending migrations in one transaction, under a lock that keeps other processes waiting."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(CREATE_MIGRATIONS_TABLE)
        applied = {row[0] for row in await connection.fetch(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        for migration in pending(migrations, applied):
            for step in migration.steps:
                await connection.execute(step)
            await connection.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES ($1)", migration.name)
            log.info("applied migration %s", migration.name)


async def _keep_session(connection: Connection) -> None:
    """Skip asyncpg's reset query on release (a round trip per call): we leave no session state."""


async def _listen(dsn: str, leases: TurnLeases) -> None:
    """Keep one LISTEN connection for the process, reconnecting when it drops, for ever."""
    while True:
        try:
            await _listen_once(dsn, leases)
            log.warning("lost the turn nudge connection; waiters poll until it is back")
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("cannot listen for turn nudges (%s); waiters poll meanwhile", error)
        await asyncio.sleep(RELISTEN_SECONDS)


async def _listen_once(dsn: str, leases: TurnLeases) -> None:
    """Turn each NOTIFY into a wake-up of this process's waiters until the connection drops."""

    def nudge(connection: object, pid: int, channel: str, chat_id: object) -> None:
        leases.wake(str(chat_id))

    connection = await asyncpg.connect(dsn)
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _: lost.set())
    try:
        await connection.add_listener(CHANNEL, nudge)
        await lost.wait()
    finally:
        await connection.close()


@asynccontextmanager
async def _listening(dsn: str, leases: TurnLeases) -> AsyncIterator[None]:
    task = asyncio.create_task(_listen(dsn, leases), name="chatkeep-turn-listener")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def open_postgres_store(
    url: str, *, lease_seconds: float = LEASE_SECONDS, migrations: Sequence[Migration] = MIGRATIONS
) -> AsyncIterator[PostgresStore]:
    """The store in the database `url` names, upgraded to `migrations` first."""
    dsn, pool_size = pool_options(url)
    pool: Pool = await asyncpg.create_pool(
        dsn, min_size=min(MIN_POOL_SIZE, pool_size), max_size=pool_size, reset=_keep_session
    )
    try:
        async with pool.acquire() as connection:
            await migrate(connection, migrations)
        poll = (0.05, min(MAX_POLL_SECONDS, lease_seconds / 4))
        leases = TurnLeases(PostgresTickets(pool), lease_seconds=lease_seconds, poll_seconds=poll)
        async with leases, _listening(dsn, leases):
            yield PostgresStore(pool, leases, migrations)
    finally:
        await pool.close()
