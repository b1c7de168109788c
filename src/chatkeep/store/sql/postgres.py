"""PostgreSQL's driver: chats in one database, shared by any number of server processes.

Its own statements are those whose guarantee rests on the chat row's lock: an append counts its
messages and inserts them in one statement, fenced by the turn's ticket, so concurrent appends
from any process take consecutive seqs and a process that stalled past its lease writes nothing;
tickets are taken and given back by PL/pgSQL functions that lock the row too, so a chat's
tickets commit in number order, and a ticket given back NOTIFYs the chat's waiters in every
process (one LISTEN connection each, which also carries `chatkeep_broadcast`). A turn's question
rides with its ticket and its reply gives the ticket back, so a turn is two write round trips
(three when the reply is several messages, or incomplete with a reason, which m010's function
predates: its ticket is then given back by a call of its own). The functions are released
migrations: their names and bodies keep their first release's words.

Every call goes through `Database`, the one place where a failure that says PostgreSQL cannot
answer now (the connection refused, reset or closed, no connection free in time, the server
shutting down, starting or out of room: `OUTAGES`) becomes StoreUnavailableError, a 503 with
Retry-After on every route and in /readyz alike, logged as one warning line that names the
database by host, port and name (never its user or password).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg
import asyncpg.exceptions

from chatkeep.domain import MessageStatus, Role, utcnow
from chatkeep.errors import ChatNotFoundError, StoreUnavailableError, TurnLapsedError
from chatkeep.store.blobs import BlobStore
from chatkeep.store.protocols import MAX_BROADCAST_BYTES, RateLease
from chatkeep.store.sql.base import SqlStore, sql_store
from chatkeep.store.sql.migrations import Migration
from chatkeep.store.sql.rows import KEY_COLUMNS, MESSAGE_COLUMNS, Appended, NewRow, Row, message_values
from chatkeep.store.sql.schema import migrate, migrations_in
from chatkeep.store.sql.search import M015_POSTGRES, postgres_search
from chatkeep.store.sql.statements import Answer, Dialect, Done, Plan, Statement, Statements, advance
from chatkeep.store.sql.tickets import LAPSED_DETAIL, LEASE_SECONDS, TakenTicket
from chatkeep.store.urls import pool_options

log = logging.getLogger(__name__)

T = TypeVar("T")

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"  # generic only to the type checker
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

MIN_POOL_SIZE = 2
MAX_POLL_SECONDS = 1.0  # LISTEN/NOTIFY wakes waiters; polling only covers a lost nudge or a dead holder
RELISTEN_SECONDS = 1.0
CHANNEL = "chatkeep_turns"
READY_TIMEOUT_SECONDS = 2.0
MIGRATION_LOCK = 0x63686174_6B656570  # "chatkeep": one process migrates a database at a time
ACQUIRE_TIMEOUT_SECONDS = 10.0  # for a pooled connection (a new one's connect included): then the store is unavailable
RETRY_AFTER_SECONDS = 2.0  # what a 503 for an unreachable database tells the client to wait
# Failures that say the database cannot answer now, not that a statement is at fault.
OUTAGES = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # no connection free, or none made, within ACQUIRE_TIMEOUT_SECONDS
    asyncpg.InterfaceError,  # a connection closed under a call, the pool closing
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError (closed mid-call), a connection failure
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up (CannotConnectNowError), cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # TooManyConnectionsError, a full disk, out of memory
    asyncpg.exceptions.PostgresSystemError,  # an I/O error
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, until a failover makes it the primary
)
BROADCAST_CHANNEL = "chatkeep_broadcast"
# Refresh the RUNNING ones among the (owner, key) pairs of a JSON array of {"owner", "key"}.
TOUCH_KEYS = """UPDATE idempotency_keys k SET updated_at = $2
    FROM json_to_recordset($1::json) AS held(owner text, key text)
    WHERE k.owner = held.owner AND k.key = held.key AND k.state = 'running'"""

DIALECT = Dialect(
    name="postgresql",
    placeholder="$",
    identity="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    text="text",
    integer="integer",
    bigint="bigint",
    timestamp="timestamptz",
    expiry="timestamptz",
    now="now()",
    second="interval '1 second'",
    json_elements="json_array_elements_text",
    binary="bytea",
    lock_row=" FOR NO KEY UPDATE",
    applied_at_default=" DEFAULT now()",
)
# The function bodies keep the indentation of their first release: it is their stored source.
TICKET_FUNCTIONS = (
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
)
# A slot is counted under a lock on its key, so concurrent takers, from any process, never count
# more than the limit; its rows need no fsync either (a crash forgets some posts, in the limit's
# favour). The answer is NULL when counted, else the seconds until a slot frees.
RATE_SLOT_FUNCTION = """CREATE FUNCTION chatkeep_take_rate_slot(p_key text, p_limit integer, p_window double precision)
            RETURNS double precision LANGUAGE plpgsql AS $$
            DECLARE
                window_start timestamptz := now() - make_interval(secs => p_window);
                counted integer;
                oldest timestamptz;
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
                DELETE FROM rate_slots WHERE rate_slots.key = p_key AND rate_slots.taken_at <= window_start;
                SELECT count(*), min(taken_at) INTO counted, oldest FROM rate_slots WHERE rate_slots.key = p_key;
                IF counted >= p_limit THEN
                    RETURN extract(epoch FROM oldest - window_start);
                END IF;
                INSERT INTO rate_slots (key, taken_at) VALUES (p_key, now());
                RETURN NULL;
            END $$"""
# `ChatStore.renew_rate_lease` under a lock on the key, so concurrent leases, from any process,
# never count more than the limit; like a slot, a lease needs no fsync (a crash forgets some slots,
# in the limit's favour). A spent slot counts from when it was spent, never later than its lease's end.
RATE_LEASE_FUNCTION = """CREATE FUNCTION chatkeep_renew_rate_lease(p_key text, p_lease text,
                p_spent double precision[], p_want integer, p_limit integer, p_window double precision,
                p_lease_seconds double precision)
            RETURNS TABLE (granted integer, wait double precision) LANGUAGE plpgsql AS $$
            DECLARE
                window_start timestamptz := now() - make_interval(secs => p_window);
                lease_end timestamptz;
                counted integer;
                oldest timestamptz;
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
                DELETE FROM rate_slots WHERE rate_slots.key = p_key AND rate_slots.lease = p_lease
                    RETURNING rate_slots.taken_at INTO lease_end;
                INSERT INTO rate_slots (key, taken_at)
                    SELECT p_key, least(now() - make_interval(secs => s.ago), lease_end) FROM unnest(p_spent) AS s(ago);
                DELETE FROM rate_slots WHERE rate_slots.key = p_key AND rate_slots.taken_at <= window_start;
                SELECT coalesce(sum(rate_slots.slots), 0), min(rate_slots.taken_at) INTO counted, oldest
                    FROM rate_slots WHERE rate_slots.key = p_key;
                granted := greatest(0, least(p_want, p_limit - counted));
                IF granted > 0 THEN
                    INSERT INTO rate_slots (key, taken_at, slots, lease)
                        VALUES (p_key, now() + make_interval(secs => p_lease_seconds), granted, p_lease);
                ELSIF p_want > 0 THEN
                    wait := extract(epoch FROM oldest - window_start);
                END IF;
                RETURN NEXT;
            END $$"""
SQL = Statements.in_dialect(DIALECT)
GIVE_BACK_TICKET = "SELECT chatkeep_return_ticket($1, $2)"
RENEW_RATE_LEASE = "SELECT granted, wait FROM chatkeep_renew_rate_lease($1, $2, $3, $4, $5, $6, $7)"


# The columns m010's functions insert, as released; messages have had more since (MESSAGE_COLUMNS).
M010_COLUMNS = "id, chat_id, seq, role, content, created_at, model, prompt_tokens, completion_tokens, status, item"


def _append_message(ticket: str, *, as_in_m010: bool = False) -> str:
    """The append of one message, fenced by the ticket `ticket` spells: with a ticket, the chat
    row is counted only while that ticket is the chat's head, so a process that stalled past its
    lease writes nothing once another holds the turn. `as_in_m010`: the append as m010's
    functions embed it, which stores no incomplete reason ($14)."""
    columns, reason = (M010_COLUMNS, "") if as_in_m010 else (MESSAGE_COLUMNS, ", $14")
    return f"""WITH counted AS (
    UPDATE chats SET
        message_count = message_count + 1,
        user_message_count = user_message_count + $3,
        updated_at = $6,
        first_message_at = COALESCE(first_message_at, $6),
        last_message_at = $6
    WHERE id = $1 AND owner = $2 AND ({ticket}::bigint IS NULL OR {ticket} = (
        SELECT min(t.ticket) FROM turn_tickets t WHERE t.chat_id = $1 AND t.expires_at > now()))
    RETURNING id, message_count, system_prompt, revision
)
INSERT INTO messages ({columns})
    SELECT $4, id, message_count, $5, $7, $6, $8, $9, $10, $11, $13{reason} FROM counted
    RETURNING seq, (SELECT system_prompt FROM counted), (SELECT revision FROM counted)"""


# $1 chat, $2 owner, $3 1 for a user message, $4 id, $5 role, $6 created_at, $7 content, $8 model,
# $9 and $10 tokens, $11 status, $12 ticket, $13 item, $14 incomplete reason.
APPEND_MESSAGE = _append_message("$12")
# chatkeep_take_ticket's work, then the append of the turn's question when its ticket is at once
# the head, in one round trip and one commit. Its parameters are APPEND_MESSAGE's, with the
# lease's seconds in the ticket's place. Only a bare ticket skips the fsync: a question is durable.
TAKE_TICKET_WITH_QUESTION_FUNCTION = f"""CREATE FUNCTION chatkeep_open_turn(
                text, text, integer, text, text, timestamptz, text, text, integer, integer, text,
                double precision, text)
            RETURNS TABLE (taken bigint, head bigint, appended_seq bigint, chat_prompt text, chat_revision bigint)
            LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM FROM chats WHERE chats.id = $1 AND chats.owner = $2 FOR NO KEY UPDATE;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                INSERT INTO turn_tickets (chat_id, expires_at)
                    VALUES ($1, now() + make_interval(secs => $12))
                    RETURNING turn_tickets.ticket INTO taken;
                SELECT min(t.ticket) INTO head FROM turn_tickets t WHERE t.chat_id = $1 AND t.expires_at > now();
                IF taken = head THEN
                    {_append_message("taken", as_in_m010=True)}
                        INTO appended_seq, chat_prompt, chat_revision;
                ELSE
                    PERFORM set_config('synchronous_commit', 'off', true);
                END IF;
                RETURN NEXT;
            END $fn$"""
# APPEND_MESSAGE with its ticket given back in the same transaction, when it stores the turn's
# last message (`ends_turn`) with no incomplete reason. The chat row is locked first, as
# chatkeep_return_ticket does, so no waiter misses its nudge; the append keeps its durable commit.
APPEND_ENDING_TURN_FUNCTION = f"""CREATE FUNCTION chatkeep_append_and_hand_on(
                text, text, integer, text, text, timestamptz, text, text, integer, integer, text, bigint, text)
            RETURNS TABLE (appended_seq bigint, chat_prompt text, chat_revision bigint) LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM FROM chats WHERE chats.id = $1 FOR NO KEY UPDATE;
                {_append_message("$12", as_in_m010=True)}
                    INTO appended_seq, chat_prompt, chat_revision;
                IF FOUND THEN
                    DELETE FROM turn_tickets WHERE turn_tickets.ticket = $12;
                    IF EXISTS (SELECT FROM turn_tickets WHERE turn_tickets.chat_id = $1) THEN
                        PERFORM pg_notify('{CHANNEL}', $1);
                    END IF;
                    RETURN NEXT;
                END IF;
            END $fn$"""
# m012: the token columns 64-bit (a rewrite of the messages table, once), and with them the
# parameters of chatkeep_append_and_hand_on, which pass a reply's counts on: a bigint in an integer
# parameter overflows. A function's parameter types cannot be replaced, so m012 drops m010's and
# creates it anew, its body as m010's. chatkeep_open_turn keeps m010's: a question has no counts.
WIDEN_TOKEN_COLUMNS = """ALTER TABLE messages
    ALTER COLUMN prompt_tokens TYPE bigint,
    ALTER COLUMN completion_tokens TYPE bigint"""
DROP_M010_APPEND_ENDING_TURN = """DROP FUNCTION chatkeep_append_and_hand_on(
    text, text, integer, text, text, timestamptz, text, text, integer, integer, text, bigint, text)"""
APPEND_ENDING_TURN_FUNCTION_M012 = f"""CREATE FUNCTION chatkeep_append_and_hand_on(
                text, text, integer, text, text, timestamptz, text, text, bigint, bigint, text, bigint, text)
            RETURNS TABLE (appended_seq bigint, chat_prompt text, chat_revision bigint) LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM FROM chats WHERE chats.id = $1 FOR NO KEY UPDATE;
                {_append_message("$12", as_in_m010=True)}
                    INTO appended_seq, chat_prompt, chat_revision;
                IF FOUND THEN
                    DELETE FROM turn_tickets WHERE turn_tickets.ticket = $12;
                    IF EXISTS (SELECT FROM turn_tickets WHERE turn_tickets.chat_id = $1) THEN
                        PERFORM pg_notify('{CHANNEL}', $1);
                    END IF;
                    RETURN NEXT;
                END IF;
            END $fn$"""
MIGRATIONS = migrations_in(
    DIALECT,
    extra={
        "m002_turn_tickets": TICKET_FUNCTIONS,
        "m005_rate_slots": (RATE_SLOT_FUNCTION,),
        "m010_fewer_turn_round_trips": (APPEND_ENDING_TURN_FUNCTION, TAKE_TICKET_WITH_QUESTION_FUNCTION),
        "m012_bigint_token_counts": (
            WIDEN_TOKEN_COLUMNS,
            DROP_M010_APPEND_ENDING_TURN,
            APPEND_ENDING_TURN_FUNCTION_M012,
        ),
        "m015_message_search": M015_POSTGRES,
        "m018_rate_leases": (RATE_LEASE_FUNCTION,),
    },
)
TAKE_TICKET = "SELECT * FROM chatkeep_take_ticket($1, $2, $3)"
TAKE_TICKET_WITH_QUESTION = "SELECT * FROM chatkeep_open_turn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
USER_EXTRAS = (None, None, None, MessageStatus.COMPLETED.value)  # a question's model, tokens and status
APPEND_ENDING_TURN = "SELECT * FROM chatkeep_append_and_hand_on($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
# Several messages in one statement, as APPEND_MESSAGE appends one: their fields come as arrays.
APPEND_MESSAGES = f"""WITH counted AS (
    UPDATE chats SET
        message_count = message_count + $3,
        user_message_count = user_message_count + $4,
        updated_at = $5,
        first_message_at = COALESCE(first_message_at, $5),
        last_message_at = $5
    WHERE id = $1 AND owner = $2 AND ($6::bigint IS NULL OR $6 = (
        SELECT min(t.ticket) FROM turn_tickets t WHERE t.chat_id = $1 AND t.expires_at > now()))
    RETURNING id, message_count, system_prompt, revision
)
INSERT INTO messages ({MESSAGE_COLUMNS})
    SELECT m.id, c.id, c.message_count - $3 + m.n, m.role, m.content, $5, m.model, m.prompt_tokens,
        m.completion_tokens, m.status, m.item, m.incomplete_reason
    FROM counted c, unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
        $13::text[], $14::text[], $15::text[]) WITH ORDINALITY
        AS m(id, role, content, model, prompt_tokens, completion_tokens, status, item, incomplete_reason, n)
    RETURNING seq, (SELECT system_prompt FROM counted), (SELECT revision FROM counted)"""
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


def _no_chat(chat_id: str) -> ChatNotFoundError:
    return ChatNotFoundError(f"no chat {chat_id!r}")


def database_name(dsn: str) -> str:
    """The database `dsn` names, for logs: host, port and name, never the user or password."""
    parts = urlsplit(dsn)
    if not parts.hostname:
        return "PostgreSQL"
    return f"PostgreSQL at {parts.hostname}:{parts.port or 5432}{parts.path}"


class Database:
    """The pool, and each call on a connection of it: where OUTAGES become StoreUnavailableError."""

    def __init__(self, pool: Pool, name: str) -> None:
        self._pool = pool
        self.name = name

    async def call(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work` done on a pooled connection, taken within ACQUIRE_TIMEOUT_SECONDS."""
        try:
            async with asyncio.timeout(ACQUIRE_TIMEOUT_SECONDS):
                connection = await self._pool.acquire()
            try:
                return await work(connection)
            finally:
                await self._pool.release(connection)
        except OUTAGES as error:
            raise self.unavailable(error) from error

    def unavailable(self, error: BaseException) -> StoreUnavailableError:
        """The 503 for `error`, logged as a warning: the client is told only what kind of failure it was."""
        log.warning("%s does not answer: %s", self.name, _reason(error))
        kind = type(error).__name__
        return StoreUnavailableError(f"PostgreSQL does not answer ({kind})", retry_after=RETRY_AFTER_SECONDS)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await self.call(lambda connection: connection.fetch(query, *args))

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        return await self.call(lambda connection: connection.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: object) -> Any:
        return await self.call(lambda connection: connection.fetchval(query, *args))

    async def execute(self, query: str, *args: object) -> None:
        await self.call(lambda connection: connection.execute(query, *args))


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _OutageInOneLine(logging.Filter):
    """asyncpg's pool logs each failed try to keep its floor of connections open (backing off to
    a minute apart) with a traceback: an outage's is a warning of one line, like chatkeep's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OUTAGES):
            record.msg, record.exc_info, record.exc_text = f"{record.msg} ({_reason(error)})", None, None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OutageInOneLine())


async def _drive_in_transaction(connection: Connection, plan: Plan[T]) -> T:
    async with connection.transaction():
        return await _drive(connection, plan)


async def _drive(connection: Connection, plan: Plan[T]) -> T:
    """Run `plan` on `connection`."""
    step = advance(plan)
    while not isinstance(step, Done):
        try:
            answer = await _answer(connection, step)
        except asyncpg.ForeignKeyViolationError:
            step = advance(plan, error=ChatNotFoundError("the chat was deleted meanwhile"))
        else:
            step = advance(plan, answer)
    result: T = step.value
    return result


async def _answer(connection: Connection, statement: Statement) -> Any:
    query, args, answer = statement.query, statement.args, statement.answer
    if answer is Answer.ROWS:
        return await connection.fetch(query, *args)
    if answer is Answer.ROW:
        return await connection.fetchrow(query, *args)
    if answer is Answer.EACH:
        return await connection.executemany(query, args)
    status = await connection.execute(query, *args)
    return int(status.rpartition(" ")[2]) if answer is Answer.COUNT else None  # "DELETE <count>"


class PostgresDriver:
    sql = SQL
    touch_keys = TOUCH_KEYS
    search = staticmethod(postgres_search)
    search_in_transaction = True
    id_clash: type[Exception] = asyncpg.UniqueViolationError

    def __init__(self, db: Database, broadcast: "PostgresBroadcast", migrations: Sequence[Migration]) -> None:
        self._db = db
        self.broadcast = broadcast
        self.migrations = migrations

    async def run(self, plan: Plan[T], *, write: bool = False) -> T:
        drive = _drive_in_transaction if write else _drive
        return await self._db.call(lambda connection: drive(connection, plan))

    def stamp(self, moment: datetime) -> datetime:
        return moment

    def moment(self, value: datetime) -> datetime:
        return value

    async def catch_up_search(self) -> None:
        """Nothing to do: the GIN index is kept in step by each insert (its pending list batches the work)."""

    async def applied_migrations(self) -> set[str]:
        try:
            rows = await self._db.call(lambda c: c.fetch(SQL.applied_migrations, timeout=READY_TIMEOUT_SECONDS))
        except asyncpg.PostgresError as error:  # any other: the schema cannot be read, so it cannot be checked
            raise self._db.unavailable(error) from error
        return {row[0] for row in rows}

    async def append(
        self, owner: str, chat_id: str, messages: Sequence[NewRow], ticket: int | None, *, ends_turn: bool
    ) -> Appended:
        """One statement; with `ends_turn`, one that gives the ticket back too, for a single message
        (the turn's reply) with no incomplete reason: the caller gives it back right after otherwise."""
        now = utcnow()
        if len(messages) == 1:
            message_id, message = messages[0]
            role, content, model, prompt_tokens, completion_tokens, status, item, reason = message_values(message)
            user = int(message.role is Role.USER)
            args = [chat_id, owner, user, message_id, role, now, content, model, prompt_tokens, completion_tokens]
            hand_on = ends_turn and reason is None  # the function that hands on stores no reason
            if hand_on:
                row = await self._db.fetchrow(APPEND_ENDING_TURN, *args, status, ticket, item)
            else:
                row = await self._db.fetchrow(APPEND_MESSAGE, *args, status, ticket, item, reason)
            if row is None:
                raise await self._refused(owner, chat_id)
            return Appended(row[0], row[1], row[2], now, gave_back=hand_on)
        users = sum(message.role is Role.USER for _, message in messages)
        columns = [list(column) for column in zip(*(message_values(m) for _, m in messages), strict=True)]
        ids = [message_id for message_id, _ in messages]
        rows = await self._db.fetch(APPEND_MESSAGES, chat_id, owner, len(messages), users, now, ticket, ids, *columns)
        if not rows:
            raise await self._refused(owner, chat_id)
        return Appended(max(row[0] for row in rows), rows[0][1], rows[0][2], now)

    async def _refused(self, owner: str, chat_id: str) -> Exception:
        """Why an append wrote nothing: the chat is gone, or the append's ticket no longer holds its turn."""
        if await self._db.fetchval(SQL.select_stats, chat_id, owner) is not None:
            return TurnLapsedError(LAPSED_DETAIL)
        return _no_chat(chat_id)

    async def take_ticket(self, owner: str, chat_id: str, lease_seconds: float, question: NewRow | None) -> TakenTicket:
        now = utcnow()
        if question is None:
            row = await self._db.fetchrow(TAKE_TICKET, owner, chat_id, lease_seconds)
        else:
            message_id, message = question
            asked = (message_id, Role.USER.value, now, message.content)
            row = await self._db.fetchrow(
                TAKE_TICKET_WITH_QUESTION, chat_id, owner, 1, *asked, *USER_EXTRAS, lease_seconds, None
            )
        if row is None:
            raise _no_chat(chat_id)
        taken, head = row[0], row[0] == row[1]
        stored = Appended(row[2], row[3], row[4], now) if question is not None and head else None
        return TakenTicket(taken, head, stored)

    async def give_back_ticket(self, chat_id: str, ticket: int) -> None:
        await self._db.execute(GIVE_BACK_TICKET, chat_id, ticket)

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, now: Any, expired_before: Any, abandoned_before: Any
    ) -> tuple[bool, Row | None]:
        while True:
            row = await self._db.fetchrow(CLAIM_KEY, owner, key, fingerprint, now, expired_before, abandoned_before)
            assert row is not None  # the statement answers one row, always
            claimed, *previous = row
            if claimed or previous[0] is not None:
                return claimed, None if previous[0] is None else previous
            log.debug("a concurrent claim inserted key %r first; claiming again", key)

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
        args = (key, lease, list(spent), want, limit, window_seconds, lease_seconds)
        row = await self._db.fetchrow(RENEW_RATE_LEASE, *args)
        assert row is not None  # the function answers one row, always
        return RateLease(row[0], row[1])


class PostgresBroadcast:
    """Messages to every process on the database: NOTIFY through the pool, delivered by each
    process's one LISTEN connection (which also carries the turn nudges)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._listeners: list[Callable[[bytes], None]] = []

    async def publish(self, message: bytes) -> None:
        if len(message) > MAX_BROADCAST_BYTES:
            raise ValueError(f"a broadcast message is at most {MAX_BROADCAST_BYTES} bytes, not {len(message)}")
        await self._db.execute("SELECT pg_notify($1, $2)", BROADCAST_CHANNEL, message.decode())

    def subscribe(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def deliver(self, payload: str) -> None:
        message = payload.encode()
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:
                log.exception("a broadcast listener failed")


@asynccontextmanager
async def _migrating(connection: Connection) -> AsyncIterator[Connection]:
    """A transaction for `migrate`, under a lock that keeps other processes waiting until it commits."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        yield connection


async def _keep_session(connection: Connection) -> None:
    """Skip asyncpg's reset query on release (a round trip per call): we leave no session state."""


Listeners: TypeAlias = dict[str, Callable[[str], None]]  # by channel: what to do with a payload


async def _listen(dsn: str, listeners: Listeners) -> None:
    """Keep one LISTEN connection for the process, reconnecting when it drops, for ever: whatever
    fails (an outage, or anything else) is a warning and a try again, never the listener's end."""
    name = database_name(dsn)
    while True:
        try:
            await _listen_once(dsn, listeners)
            log.warning("lost the LISTEN connection to %s; turn waiters poll until it is back", name)
        except Exception as error:
            log.warning("cannot LISTEN on %s (%s); turn waiters poll meanwhile", name, _reason(error))
        await asyncio.sleep(RELISTEN_SECONDS)


async def _listen_once(dsn: str, listeners: Listeners) -> None:
    """Hand each NOTIFY's payload to its channel's listener until the connection drops."""

    def notified(connection: object, pid: int, channel: str, payload: object) -> None:
        listeners[channel](str(payload))

    connection = await asyncpg.connect(dsn, timeout=ACQUIRE_TIMEOUT_SECONDS)
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _: lost.set())
    try:
        for channel in listeners:
            await connection.add_listener(channel, notified)
        await lost.wait()
    finally:
        with contextlib.suppress(*OUTAGES):  # a connection the outage closed is closed already
            await connection.close(timeout=READY_TIMEOUT_SECONDS)


@asynccontextmanager
async def _listening(dsn: str, listeners: Listeners) -> AsyncIterator[None]:
    task = asyncio.create_task(_listen(dsn, listeners), name="chatkeep-listener")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    lease_seconds: float = LEASE_SECONDS,
    migrations: Sequence[Migration] = MIGRATIONS,
    blobs: BlobStore | None = None,
) -> AsyncIterator[SqlStore]:
    """The store in the database `url` names, upgraded to `migrations` first."""
    dsn, pool_size = pool_options(url)
    pool: Pool = await asyncpg.create_pool(
        dsn, min_size=min(MIN_POOL_SIZE, pool_size), max_size=pool_size, reset=_keep_session
    )
    try:
        async with pool.acquire() as connection:
            await migrate(_migrating(connection), DIALECT, migrations, applied_at=utcnow())
        poll = (0.05, min(MAX_POLL_SECONDS, lease_seconds / 4))
        db = Database(pool, database_name(dsn))
        driver = PostgresDriver(db, PostgresBroadcast(db), migrations)
        async with sql_store(driver, lease_seconds=lease_seconds, poll_seconds=poll, blobs=blobs) as store:
            listeners: Listeners = {CHANNEL: store.wake, BROADCAST_CHANNEL: driver.broadcast.deliver}
            async with _listening(dsn, listeners):
                yield store
    finally:
        await pool.close()
