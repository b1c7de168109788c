"""`PostgresStore`: chats in PostgreSQL, shared by any number of server processes.

Every store call is one statement on a pooled connection (asyncpg prepares and caches it), and
a connection goes back to the pool as soon as the statement ends, so a pool of ~20 serves
thousands of turns in flight. An append bumps the chat's counters and inserts the message in
one statement: the chat row's lock makes concurrent appends, from any process, take
consecutive seqs. Turns across processes are ticket rows (`leases`) taken and returned by
two small PL/pgSQL functions that lock the chat row, so a chat's tickets commit in number order;
a returned ticket NOTIFYs `chatkeep_turns`, which one listening connection per process turns
into wake-ups (polling covers a lost one). An append that carries its turn's ticket counts the
message only while that ticket is still the chat's head, in the same statement, so a process
that stalled past its lease writes nothing into the next turn. An Idempotency-Key claim is one
statement too, sent again only when another claim inserted the same key while it ran; a rate
slot is one function call under an advisory lock on its key. The same listening connection
carries `chatkeep_broadcast`, the channel processes use to follow each other's streamed turns.
A turn reads its context from the chat's newest messages this process keeps (`tails`), which
its own appends prove current, so a warm turn reads no rows at all. A turn on a chat whose line
is empty stores its question in the function that grants its ticket (`chatkeep_open_turn`), and
its reply in the one that hands the turn on (`chatkeep_append_and_hand_on`): two write round
trips a turn.
Timestamps are `timestamptz`; ticket expiries and rate slots use the database clock, which every
process shares. The tables and most statements are shared with SQLite (`schema`, `sql`); the
ones here are those whose guarantee rests on PostgreSQL's locks, and the functions with NOTIFY.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TypeAlias

import asyncpg

from chatkeep.domain import (
    DELETED_ITEM,
    Chat,
    ChatChanges,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    MessageStatus,
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
from chatkeep.store.protocols import MAX_BROADCAST_BYTES, Broadcast
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
from chatkeep.store.sql.statements import Dialect, Statements, paged
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
from chatkeep.store.urls import pool_options

log = logging.getLogger(__name__)

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"  # generic only to the type checker
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

MIN_POOL_SIZE = 2
MAX_POLL_SECONDS = 1.0  # LISTEN/NOTIFY wakes waiters; polling only covers a lost nudge or a dead holder
RELISTEN_SECONDS = 1.0
CHANNEL = "chatkeep_turns"
READY_TIMEOUT_SECONDS = 2.0
MIGRATION_LOCK = 0x63686174_6B656570  # "chatkeep": one process migrates a database at a time
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
SQL = Statements.in_dialect(DIALECT)


def _append_message(ticket: str) -> str:
    """The append of one message, fenced by the ticket `ticket` spells: with a ticket, the chat
    row is counted only while that ticket is the chat's head, so a process that stalled past its
    lease writes nothing once another holds the turn."""
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
INSERT INTO messages ({MESSAGE_COLUMNS})
    SELECT $4, id, message_count, $5, $7, $6, $8, $9, $10, $11, $13 FROM counted
    RETURNING seq, (SELECT system_prompt FROM counted), (SELECT revision FROM counted)"""


# $1 chat, $2 owner, $3 1 for a user message, $4 id, $5 role, $6 created_at, $7 content, $8 model,
# $9 and $10 tokens, $11 status, $12 ticket, $13 item.
APPEND_MESSAGE = _append_message("$12")
# chatkeep_take_ticket's work, then the append of the turn's question when its ticket is at once
# the head: one round trip and one commit fewer a turn. Its parameters are APPEND_MESSAGE's, with
# the lease's seconds in the ticket's place. Only a bare ticket skips the fsync: a question is durable.
OPEN_TURN_FUNCTION = f"""CREATE FUNCTION chatkeep_open_turn(
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
                    {_append_message("taken")}
                        INTO appended_seq, chat_prompt, chat_revision;
                ELSE
                    PERFORM set_config('synchronous_commit', 'off', true);
                END IF;
                RETURN NEXT;
            END $fn$"""
# APPEND_MESSAGE with its ticket returned in the same transaction, when it stored the turn's last
# message: one round trip fewer a turn. The chat row is locked first, as chatkeep_return_ticket
# does, so no waiter misses its nudge; the append keeps its durable commit.
HAND_ON_FUNCTION = f"""CREATE FUNCTION chatkeep_append_and_hand_on(
                text, text, integer, text, text, timestamptz, text, text, integer, integer, text, bigint, text)
            RETURNS TABLE (appended_seq bigint, chat_prompt text, chat_revision bigint) LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM FROM chats WHERE chats.id = $1 FOR NO KEY UPDATE;
                {APPEND_MESSAGE}
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
        "m010_fewer_turn_round_trips": (HAND_ON_FUNCTION, OPEN_TURN_FUNCTION),
    },
)
TAKE_TICKET = "SELECT * FROM chatkeep_take_ticket($1, $2, $3)"
OPEN_TURN = "SELECT * FROM chatkeep_open_turn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
USER_EXTRAS = (None, None, None, MessageStatus.COMPLETED.value)  # a question's model, tokens and status
APPEND_AND_HAND_ON = "SELECT * FROM chatkeep_append_and_hand_on($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
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
        m.completion_tokens, m.status, m.item
    FROM counted c, unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::integer[], $12::integer[],
        $13::text[], $14::text[]) WITH ORDINALITY
        AS m(id, role, content, model, prompt_tokens, completion_tokens, status, item, n)
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


def _when(moment: datetime) -> datetime:
    return moment


def _no_chat(chat_id: str) -> ChatNotFoundError:
    return ChatNotFoundError(f"no chat {chat_id!r}")


class PostgresStore:
    def __init__(
        self, pool: Pool, leases: Leases, broadcast: "PostgresBroadcast", migrations: Sequence[Migration]
    ) -> None:
        self._pool = pool
        self._leases = leases
        self._broadcast = broadcast
        self._migrations = migrations
        self._tails = Tails()  # the newest messages of chats this process takes turns on

    async def check_ready(self) -> None:
        try:
            applied = {row[0] for row in await self._pool.fetch(SQL.applied_migrations, timeout=READY_TIMEOUT_SECONDS)}
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise StoreUnavailableError(f"PostgreSQL does not answer: {error or type(error).__name__}") from error
        check_schema(applied, self._migrations)

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        now = utcnow()
        chat = Chat(new_id("chat"), title, dict(metadata), system_prompt, now, now)
        await self._pool.execute(SQL.insert_chat, chat.id, owner, title, to_json(metadata), system_prompt, now)
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        row = await self._pool.fetchrow(SQL.select_chat, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return chat_from_row(row, _when)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = await self._pool.fetch(SQL.chat_cursors, owner, page.after or "", page.before or "")
            keys = {row[0]: row[1] for row in cursors}
        span = key_range(page, keys, "chat")
        rows = await self._pool.fetch(paged(SQL.chat_page, span), owner, span.above, span.below, span.fetch)
        chats, has_more = page_rows(rows, page, span)
        return Page([chat_from_row(row, _when) for row in chats], has_more)

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        row = await self._pool.fetchrow(SQL.update_chat, *update_chat_values(chat_id, owner, changes, utcnow()))
        if row is None:
            raise _no_chat(chat_id)
        return chat_from_row(row, _when)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        deleted = await self._pool.fetchval(SQL.delete_chat, chat_id, owner)
        if deleted is None:
            raise _no_chat(chat_id)
        self._tails.forget(chat_id)

    def turn_lease(
        self, owner: str, chat_id: str, *, question: str | None = None
    ) -> AbstractAsyncContextManager[int | None]:
        return self._leases.hold(owner, chat_id, opening_of(question))

    async def append_message(
        self, owner: str, chat_id: str, message: NewMessage, *, ticket: int | None = None, hand_on: bool = False
    ) -> Message:
        return (await self._append(owner, chat_id, message, ticket, hand_on=hand_on))[0]

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: int | None = None
    ) -> tuple[Message, str | None]:
        opened = self._leases.opened(ticket) if ticket is not None else None
        if opened is not None:  # stored as the turn was taken
            question = opened.message(chat_id)
            self._tails.appended(owner, chat_id, [question], revision=opened.revision, ticket=ticket)
            return question, opened.system_prompt
        return await self._append(owner, chat_id, NewMessage(Role.USER, content), ticket)

    async def _append(
        self, owner: str, chat_id: str, message: NewMessage, ticket: int | None, *, hand_on: bool = False
    ) -> tuple[Message, str | None]:
        message_id, now, usage = message.id or new_id("msg"), utcnow(), message.usage
        handing_on = hand_on and ticket is not None
        row = await self._pool.fetchrow(
            APPEND_AND_HAND_ON if handing_on else APPEND_MESSAGE,
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
            ticket,
            item_json(message),
        )
        if row is None:
            raise await self._refused(owner, chat_id)
        if handing_on:
            assert ticket is not None
            self._leases.handed_on(ticket)
        seq, system_prompt, revision = row
        role, content, model, status, item = message.role, message.content, message.model, message.status, message.item
        stored = Message(message_id, chat_id, seq, role, content, now, model, usage, status, item)
        self._tails.appended(owner, chat_id, [stored], revision=revision, ticket=ticket)
        return stored, system_prompt

    async def append_messages(
        self, owner: str, chat_id: str, messages: Sequence[NewMessage], *, ticket: int | None = None
    ) -> tuple[list[Message], str | None]:
        now, ids = utcnow(), [message.id or new_id("msg") for message in messages]
        users = sum(message.role is Role.USER for message in messages)
        columns = [
            ids,
            [m.role.value for m in messages],
            [m.content for m in messages],
            [m.model for m in messages],
            [m.usage.prompt_tokens if m.usage else None for m in messages],
            [m.usage.completion_tokens if m.usage else None for m in messages],
            [m.status.value for m in messages],
            [item_json(m) for m in messages],
        ]
        rows = await self._pool.fetch(APPEND_MESSAGES, chat_id, owner, len(messages), users, now, ticket, *columns)
        if not rows:
            raise await self._refused(owner, chat_id)
        first = min(row[0] for row in rows)
        stored = [
            Message(message_id, chat_id, first + n, m.role, m.content, now, m.model, m.usage, m.status, m.item)
            for n, (message_id, m) in enumerate(zip(ids, messages, strict=True))
        ]
        self._tails.appended(owner, chat_id, stored, revision=rows[0][2], ticket=ticket)
        return stored, rows[0][1]

    async def _refused(self, owner: str, chat_id: str) -> Exception:
        """Why an append wrote nothing: the chat is gone, or the append's ticket no longer holds its turn."""
        if await self._pool.fetchval(SQL.select_stats, chat_id, owner) is not None:
            return TurnLapsedError(LAPSED_DETAIL)
        return _no_chat(chat_id)

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            check_message(
                await connection.fetchrow(SQL.forget_message, chat_id, owner, message_id), chat_id, message_id
            )
            await connection.execute(SQL.forgotten_message, chat_id, message_id, to_json(DELETED_ITEM))
            await connection.execute(SQL.revise_chat, chat_id)
        self._tails.forget(chat_id)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = await self._pool.fetch(SQL.message_cursors, chat_id, owner, page.after or "", page.before or "")
            keys = joined_keys_from_rows(cursors, chat_id)
        span = key_range(page, keys, "message")
        window, has_more = page_rows(await self._window(owner, chat_id, span), page, span)
        return Page(window, has_more)

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
            lambda span: self._window(owner, chat_id, span),
            limit=limit,
            before_seq=before_seq,
            after_seq=after_seq,
            ticket=ticket,
        )

    async def _window(self, owner: str, chat_id: str, span: KeyRange) -> list[Message]:
        query = paged(SQL.message_page, span)
        rows = await self._pool.fetch(query, chat_id, owner, span.above, span.below, span.fetch)
        return joined_messages_from_rows(rows, _when, chat_id)

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        row = await self._pool.fetchrow(SQL.select_stats, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return stats_from_row(row, _when)

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        row = await self._pool.fetchrow(SQL.select_summary, chat_id, owner)
        return joined_summary_from_row(row, _when, chat_id)

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        values = (summary.summary, to_json(summary.highlights), summary.up_to_seq, summary.created_at)
        try:
            saved = await self._pool.fetchval(SQL.save_summary, chat_id, owner, *values)
        except asyncpg.ForeignKeyViolationError as error:  # the chat was deleted while we wrote
            raise _no_chat(chat_id) from error
        if saved is None:
            await self.get_chat(owner, chat_id)  # not saved: the chat is missing, or its cached summary covers more

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        row = await self._pool.fetchrow(SQL.select_rolling_summary, chat_id, owner)
        if row is None:
            raise _no_chat(chat_id)
        return None if row[0] is None else RollingSummary(row[0], row[1])

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        try:
            return bool(await self._pool.fetchval(SQL.claim_rolling_summary, chat_id, owner, hold_seconds))
        except asyncpg.ForeignKeyViolationError:  # the chat was deleted meanwhile
            return False

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        text, up_to_seq = (summary.text, summary.up_to_seq) if summary is not None else ("", 0)
        await self._pool.execute(SQL.end_rolling_summary, chat_id, owner, up_to_seq, text)

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        row = await self._pool.fetchrow(SQL.select_message, chat_id, owner, message_id)
        return joined_message_from_row(row, _when, chat_id, message_id)

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        abandoned_before = self._leases.abandoned_before(owner, key, abandoned_before)
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
        await self._pool.execute(SQL.update_key, owner, key, state.value, result, user_message_id, utcnow())

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._leases.keep_key_alive(owner, key)

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._leases.let_key_lapse(owner, key)

    async def release_key(self, owner: str, key: str) -> None:
        await self._pool.execute(SQL.release_key, owner, key)

    async def purge_keys(self, *, expired_before: datetime) -> int:
        status = await self._pool.execute(SQL.purge_keys, expired_before)
        return int(status.rpartition(" ")[2])  # "DELETE <count>"

    async def save_response(self, owner: str, response: StoredResponse) -> None:
        await self._pool.execute(SQL.insert_response, *response_values(owner, response, response.created_at))

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        row = await self._pool.fetchrow(SQL.select_response, response_id, owner)
        return response_from_row(row, _when, response_id)

    async def delete_response(self, owner: str, response_id: str) -> None:
        if await self._pool.fetchval(SQL.delete_response, response_id, owner) is None:
            raise ResponseNotFoundError(f"no response {response_id!r}")

    async def take_rate_slot(self, key: str, *, limit: int, window_seconds: float) -> float | None:
        wait: float | None = await self._pool.fetchval(
            "SELECT chatkeep_take_rate_slot($1, $2, $3)", key, limit, window_seconds
        )
        return wait

    @property
    def broadcast(self) -> Broadcast:
        return self._broadcast


class PostgresTickets:
    """Turn tickets as rows; expiries on the database clock."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def take_ticket(
        self, owner: str, chat_id: str, lease_seconds: float, opening: Opening | None
    ) -> tuple[int, bool, Opened | None]:
        if opening is None:
            row = await self._pool.fetchrow(TAKE_TICKET, owner, chat_id, lease_seconds)
        else:
            question = (opening.message_id, Role.USER.value, opening.created_at, opening.content)
            row = await self._pool.fetchrow(OPEN_TURN, chat_id, owner, 1, *question, *USER_EXTRAS, lease_seconds, None)
        if row is None:
            raise _no_chat(chat_id)
        taken, head = row[0], row[1]
        opened = None if opening is None or taken != head else Opened(opening, row[2], row[3], row[4])
        return taken, taken == head, opened

    async def ticket_state(self, chat_id: str, ticket: int) -> TicketState:
        live = await self._pool.fetch(SQL.live_tickets, chat_id)
        return state_of(ticket, [row[0] for row in live])

    async def return_ticket(self, chat_id: str, ticket: int) -> None:
        await self._pool.execute("SELECT chatkeep_return_ticket($1, $2)", chat_id, ticket)

    async def extend_tickets(self, tickets: Collection[int], lease_seconds: float) -> set[int]:
        """Extend the live ones and drop every lapsed ticket (of this process or a dead one)."""
        async with self._pool.acquire() as connection, connection.transaction():
            live = {row[0] for row in await connection.fetch(SQL.extend_tickets, to_json(list(tickets)), lease_seconds)}
            await connection.execute(SQL.drop_lapsed_tickets)
        return live

    async def touch_keys(self, keys: Collection[tuple[str, str]]) -> None:
        held = to_json([{"owner": owner, "key": key} for owner, key in keys])
        await self._pool.execute(TOUCH_KEYS, held, utcnow())


class PostgresBroadcast:
    """Messages to every process on the database: NOTIFY through the pool, delivered by each
    process's one LISTEN connection (which also carries the turn nudges)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._listeners: list[Callable[[bytes], None]] = []

    async def publish(self, message: bytes) -> None:
        if len(message) > MAX_BROADCAST_BYTES:
            raise ValueError(f"a broadcast message is at most {MAX_BROADCAST_BYTES} bytes, not {len(message)}")
        await self._pool.execute("SELECT pg_notify($1, $2)", BROADCAST_CHANNEL, message.decode())

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
    """Keep one LISTEN connection for the process, reconnecting when it drops, for ever."""
    while True:
        try:
            await _listen_once(dsn, listeners)
            log.warning("lost the LISTEN connection; turn waiters poll until it is back")
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("cannot LISTEN (%s); turn waiters poll meanwhile", error)
        await asyncio.sleep(RELISTEN_SECONDS)


async def _listen_once(dsn: str, listeners: Listeners) -> None:
    """Hand each NOTIFY's payload to its channel's listener until the connection drops."""

    def notified(connection: object, pid: int, channel: str, payload: object) -> None:
        listeners[channel](str(payload))

    connection = await asyncpg.connect(dsn)
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _: lost.set())
    try:
        for channel in listeners:
            await connection.add_listener(channel, notified)
        await lost.wait()
    finally:
        await connection.close()


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
    url: str, *, lease_seconds: float = LEASE_SECONDS, migrations: Sequence[Migration] = MIGRATIONS
) -> AsyncIterator[PostgresStore]:
    """The store in the database `url` names, upgraded to `migrations` first."""
    dsn, pool_size = pool_options(url)
    pool: Pool = await asyncpg.create_pool(
        dsn, min_size=min(MIN_POOL_SIZE, pool_size), max_size=pool_size, reset=_keep_session
    )
    try:
        async with pool.acquire() as connection:
            await migrate(_migrating(connection), DIALECT, migrations, applied_at=utcnow())
        poll = (0.05, min(MAX_POLL_SECONDS, lease_seconds / 4))
        leases = Leases(PostgresTickets(pool), lease_seconds=lease_seconds, poll_seconds=poll)
        broadcast = PostgresBroadcast(pool)
        listeners: Listeners = {CHANNEL: leases.wake, BROADCAST_CHANNEL: broadcast.deliver}
        async with leases, _listening(dsn, listeners):
            yield PostgresStore(pool, leases, broadcast, migrations)
    finally:
        await pool.close()
