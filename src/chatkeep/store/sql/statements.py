"""The statements both SQL stores run, written once; the `Dialect` that spells them; and plans of them.

SQLite and PostgreSQL differ in a few words (parameters `?1`/`$1`, type names, the clock a
ticket's expiry is read on), so a template (`$n` parameters, `{name}` words) is `spelled` for
each. A store call of several statements is written once as a `Plan`, a generator that yields
each `Statement` and is sent its answer, so that each driver decides how to run it (one job on
SQLite's thread, one pooled connection on PostgreSQL). Statements whose guarantee rests on one
database's locking are each dialect's own.
"""

import re
from collections.abc import Generator
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Self, TypeVar

from chatkeep.store.paging import KeyRange
from chatkeep.store.sql.migrations import MIGRATIONS_TABLE
from chatkeep.store.sql.rows import (
    CHAT_COLUMNS,
    JOINED_MESSAGE_COLUMNS,
    JOINED_SUMMARY_COLUMNS,
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    STATS_COLUMNS,
    SUMMARY_COLUMNS,
)

T = TypeVar("T")

PARAMETER = re.compile(r"\$(\d+)")
# The `{name}`s every dialect fills in alike.
NAMES = {
    "chat_columns": CHAT_COLUMNS,
    "message_columns": MESSAGE_COLUMNS,
    "joined_message_columns": JOINED_MESSAGE_COLUMNS,
    "stats_columns": STATS_COLUMNS,
    "summary_columns": SUMMARY_COLUMNS,
    "joined_summary_columns": JOINED_SUMMARY_COLUMNS,
    "key_columns": KEY_COLUMNS,
    # the rolling summary ($3 its up_to_seq, $5 the message it was written through) summarizes the current branch
    "kept_through": "(EXISTS (SELECT 1 FROM messages WHERE chat_id = $1 AND seq = $3 AND id = $5) OR $5 IS NULL)",
    "migrations_table": MIGRATIONS_TABLE,
}


@dataclass(slots=True, frozen=True)
class Dialect:
    """What one database needs spelled its own way; each field is a `{word}` templates may use."""

    name: str
    placeholder: str  # written before a parameter's number: `?` gives SQLite's ?1, `$` PostgreSQL's $1
    identity: str  # an integer primary key the database assigns and never hands out again
    text: str
    integer: str  # 32 bits are plenty (token counts)
    bigint: str  # counts and sequence numbers
    timestamp: str  # a moment, to the microsecond
    expiry: str  # when a turn ticket lapses, on the clock `now` reads
    now: str  # the current time, as an expiry
    second: str  # one second, to add to an expiry
    json_elements: str  # the table function whose `value` column lists a JSON array's elements
    binary: str  # bytes (attachments' blobs)
    lock_row: str  # after a select of one row: lock it for the transaction (SQLite's writer holds the file)
    applied_at_default: str  # the migrations table's applied_at default, as each dialect first released it


def spelled(template: str, dialect: Dialect) -> str:
    """`template` in `dialect`: its `{name}`s filled in, its `$n` parameters written the dialect's way."""
    words = {field.name: getattr(dialect, field.name) for field in fields(dialect)}
    text = template.format_map(NAMES | words)
    return PARAMETER.sub(lambda parameter: dialect.placeholder + parameter[1], text)


def paged(statement: str, span: KeyRange[Any]) -> str:
    """A page statement (`%(order)s` in it) reading `span` from the end it starts at."""
    return statement % {"order": "DESC" if span.descending else "ASC"}


@dataclass(slots=True, frozen=True)
class Statements:
    """Every statement the stores share. Built bare it holds the templates; `in_dialect` spells them."""

    # A chat with its first $7 messages ($8 of them the user's, the last stored at $9: NULL for none).
    insert_chat: str = """INSERT INTO chats (id, owner, title, metadata, system_prompt, created_at, updated_at,
        message_count, user_message_count, first_message_at, last_message_at, model)
    VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $9, $10)"""
    # A chat stored as an export gave it (`insert_chats`): its own times and counts.
    import_chat: str = """INSERT INTO chats (id, owner, title, metadata, system_prompt, created_at, updated_at,
        message_count, user_message_count, first_message_at, last_message_at, model, branch_changes)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"""
    # $1 is a JSON array of ids; the first of them a chat (of any owner), or a message, holds.
    taken_chat_id: str = "SELECT id FROM chats WHERE id IN (SELECT value FROM {json_elements}($1)) LIMIT 1"
    taken_message_id: str = "SELECT id FROM messages WHERE id IN (SELECT value FROM {json_elements}($1)) LIMIT 1"
    insert_message: str = """INSERT INTO messages ({message_columns})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""
    select_chat: str = "SELECT {chat_columns} FROM chats WHERE id = $1 AND owner = $2"
    chat_cursors: str = "SELECT id, rank FROM chats WHERE owner = $1 AND id IN ($2, $3)"
    chat_page: str = """SELECT {chat_columns} FROM chats
    WHERE owner = $1 AND rank > $2 AND rank < $3 ORDER BY rank %(order)s LIMIT $4"""
    chat_activity_cursors: str = "SELECT id, updated_at FROM chats WHERE owner = $1 AND id IN ($2, $3)"
    # By (updated_at, id), from the index chats_by_activity.
    chat_activity_page: str = """SELECT {chat_columns} FROM chats
    WHERE owner = $1 AND (updated_at, id) > ($2, $3) AND (updated_at, id) < ($4, $5)
    ORDER BY updated_at %(order)s, id %(order)s LIMIT $6"""
    # Read from the index chats_by_owner alone.
    count_chats: str = "SELECT count(*) FROM chats WHERE owner = $1"
    update_chat: str = """UPDATE chats SET
    title = CASE WHEN $3 THEN $4 ELSE title END,
    metadata = CASE WHEN $5 THEN $6 ELSE metadata END,
    system_prompt = CASE WHEN $7 THEN $8 ELSE system_prompt END,
    model = CASE WHEN $10 THEN $11 ELSE model END,
    updated_at = $9
    WHERE id = $1 AND owner = $2
    RETURNING {chat_columns}"""
    delete_chat: str = "DELETE FROM chats WHERE id = $1 AND owner = $2 RETURNING true"
    # The message reads left-join the chat to what they ask for: no row means no chat, a row of
    # NULLs that nothing matched. (Ordered outside the join too: a join need not keep an order.)
    message_cursors: str = """SELECT m.id, m.seq FROM chats c
    LEFT JOIN messages m ON m.chat_id = c.id AND m.id IN ($3, $4)
    WHERE c.id = $1 AND c.owner = $2"""
    message_page: str = """SELECT m.* FROM chats c LEFT JOIN (
        SELECT {message_columns} FROM messages
        WHERE chat_id = $1 AND seq > $3 AND seq < $4 ORDER BY seq %(order)s LIMIT $5
    ) m ON true
    WHERE c.id = $1 AND c.owner = $2 ORDER BY m.seq %(order)s"""
    select_stats: str = "SELECT {stats_columns} FROM chats WHERE id = $1 AND owner = $2"
    select_summary: str = """SELECT c.id, {joined_summary_columns} FROM chats c
    LEFT JOIN summaries s ON s.chat_id = c.id WHERE c.id = $1 AND c.owner = $2"""
    # A row back when the summary was written; none when the chat is missing, its cached summary
    # covers more messages, or the message it was written through ($7, when given) left the
    # current branch, which the caller tells apart.
    save_summary: str = """INSERT INTO summaries (chat_id, {summary_columns})
    SELECT id, $3, $4, $5, $6 FROM chats WHERE id = $1 AND owner = $2
        AND (EXISTS (SELECT 1 FROM messages WHERE chat_id = $1 AND seq = $5 AND id = $7) OR $7 IS NULL)
    ON CONFLICT (chat_id) DO UPDATE SET summary = excluded.summary, highlights = excluded.highlights,
        up_to_seq = excluded.up_to_seq, created_at = excluded.created_at
    WHERE summaries.up_to_seq <= excluded.up_to_seq
    RETURNING true"""
    # A row of NULLs: no rolling summary yet; no row: no chat.
    select_rolling_summary: str = """SELECT s.summary, s.up_to_seq FROM chats c
    LEFT JOIN context_summaries s ON s.chat_id = c.id AND s.up_to_seq > 0 WHERE c.id = $1 AND c.owner = $2"""
    # A row back when the caller now holds the rolling summary; none when another does or the chat is gone.
    claim_rolling_summary: str = """INSERT INTO context_summaries (chat_id, summary, up_to_seq, folding_until)
    SELECT id, '', 0, {now} + $3 * {second} FROM chats WHERE id = $1 AND owner = $2
    ON CONFLICT (chat_id) DO UPDATE SET folding_until = excluded.folding_until
    WHERE context_summaries.folding_until IS NULL OR context_summaries.folding_until <= {now}
    RETURNING true"""
    # The hold let go; the summary kept when it covers more, through a message ($5, when given)
    # still on the current branch.
    end_rolling_summary: str = """UPDATE context_summaries SET folding_until = NULL,
        summary = CASE WHEN up_to_seq < $3 AND {kept_through} THEN $4 ELSE summary END,
        up_to_seq = CASE WHEN up_to_seq < $3 AND {kept_through} THEN $3 ELSE up_to_seq END
    WHERE chat_id = $1 AND chat_id IN (SELECT id FROM chats WHERE id = $1 AND owner = $2)"""
    select_message: str = """SELECT {joined_message_columns} FROM chats c
    LEFT JOIN messages m ON m.chat_id = c.id AND m.id = $3 WHERE c.id = $1 AND c.owner = $2"""
    # No row: no chat; a row of NULL: no such message in it.
    forget_message: str = """SELECT m.id FROM chats c LEFT JOIN messages m ON m.chat_id = c.id AND m.id = $3
    WHERE c.id = $1 AND c.owner = $2"""
    forgotten_message: str = """UPDATE messages SET content = '', model = NULL, prompt_tokens = NULL,
    completion_tokens = NULL, item = $3 WHERE chat_id = $1 AND id = $2"""
    revise_chat: str = "UPDATE chats SET revision = revision + 1 WHERE id = $1"
    update_key: str = """UPDATE idempotency_keys
    SET state = $3, result = $4, user_message_id = COALESCE($5, user_message_id), updated_at = $6
    WHERE owner = $1 AND key = $2"""
    release_key: str = "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2"
    purge_keys: str = "DELETE FROM idempotency_keys WHERE created_at < $1"
    live_tickets: str = "SELECT ticket FROM turn_tickets WHERE chat_id = $1 AND expires_at > {now} ORDER BY ticket"
    head_ticket: str = "SELECT min(ticket) FROM turn_tickets WHERE chat_id = $1 AND expires_at > {now}"
    # $1 is a JSON array of tickets: the one way to pass a list both databases read.
    extend_tickets: str = """UPDATE turn_tickets SET expires_at = {now} + $2 * {second}
    WHERE ticket IN (SELECT CAST(value AS bigint) FROM {json_elements}($1)) AND expires_at > {now}
    RETURNING ticket"""
    drop_lapsed_tickets: str = "DELETE FROM turn_tickets WHERE expires_at <= {now}"
    applied_migrations: str = "SELECT name FROM {migrations_table}"
    insert_response: str = """INSERT INTO responses (id, owner, chat_id, previous_response_id, created_at, body, input,
        status, stream, live_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {now} + $10 * {second})"""
    # $5 is a JSON array of the statuses it may replace; $7 is 1 to replace only a lapsed one.
    update_response: str = """UPDATE responses SET body = $3, input = $4, status = $5, stream = $6,
        live_until = {now} + $9 * {second}
    WHERE id = $1 AND owner = $2 AND status IN (SELECT value FROM {json_elements}($7))
        AND ($8 = 0 OR live_until IS NULL OR live_until <= {now})
    RETURNING true"""
    select_response: str = """SELECT id, chat_id, previous_response_id, created_at, body, input, stream,
        CASE WHEN status IN ('queued', 'in_progress') AND (live_until IS NULL OR live_until <= {now})
            THEN 1 ELSE 0 END
    FROM responses WHERE id = $1 AND owner = $2"""
    delete_response: str = "DELETE FROM responses WHERE id = $1 AND owner = $2 RETURNING true"
    # Branches (`protocols.Branches`). A branch write first reads its chat, locked where the
    # database locks rows: appends and tickets lock that row too, so they wait for the write.
    branching_chat: str = "SELECT message_count, branch_changes FROM chats WHERE id = $1 AND owner = $2{lock_row}"
    users_from: str = "SELECT count(*) FROM messages WHERE chat_id = $1 AND seq >= $2 AND role = 'user'"
    # The current branch's messages from $2 on, off it: each after the message before it, left at $3.
    take_off: str = """INSERT INTO branch_messages ({message_columns}, parent_id, left_at)
    SELECT {joined_message_columns},
        (SELECT p.id FROM messages p WHERE p.chat_id = m.chat_id AND p.seq = m.seq - 1), CAST($3 AS {bigint})
    FROM messages m WHERE m.chat_id = $1 AND m.seq >= $2"""
    delete_from: str = "DELETE FROM messages WHERE chat_id = $1 AND seq >= $2"
    # $2 is a JSON array of the ids of the off-branch messages that come on.
    bring_on: str = """INSERT INTO messages ({message_columns})
    SELECT {message_columns} FROM branch_messages
    WHERE chat_id = $1 AND id IN (SELECT value FROM {json_elements}($2)) ORDER BY seq"""
    delete_brought_on: str = """DELETE FROM branch_messages
    WHERE chat_id = $1 AND id IN (SELECT value FROM {json_elements}($2))"""
    branch_nodes: str = "SELECT id, parent_id, seq, role, left_at, created_at FROM branch_messages WHERE chat_id = $1"
    current_message: str = "SELECT id FROM messages WHERE chat_id = $1 AND id = $2"
    # The chat once its current branch holds $2 messages, $3 more of them the user's than before;
    # its revision bumped, so that no process answers a turn from the messages it kept (recent.py).
    branch_changed: str = """UPDATE chats SET message_count = $2, user_message_count = user_message_count + $3,
        first_message_at = (SELECT created_at FROM messages WHERE chat_id = $1 AND seq = 1),
        last_message_at = (SELECT created_at FROM messages WHERE chat_id = $1 AND seq = $2),
        branch_changes = branch_changes + 1, revision = revision + 1, updated_at = $4
    WHERE id = $1
    RETURNING {chat_columns}"""
    drop_summary_from: str = "DELETE FROM summaries WHERE chat_id = $1 AND up_to_seq >= $2"
    # Emptied rather than deleted: the row also holds the rolling summary's hold, if any.
    drop_rolling_summary_from: str = """UPDATE context_summaries SET summary = '', up_to_seq = 0
    WHERE chat_id = $1 AND up_to_seq >= $2"""
    chat_branch_changes: str = "SELECT branch_changes FROM chats WHERE id = $1 AND owner = $2"
    off_branch_between: str = """SELECT id, parent_id, seq, created_at FROM branch_messages
    WHERE chat_id = $1 AND seq >= $2 AND seq <= $3"""
    current_between: str = "SELECT seq, id, created_at FROM messages WHERE chat_id = $1 AND seq >= $2 AND seq <= $3"
    # No row: no chat; a row of NULLs: nothing off its current branch.
    off_branch_messages: str = """SELECT {joined_message_columns}, m.parent_id, m.left_at FROM chats c
    LEFT JOIN branch_messages m ON m.chat_id = c.id WHERE c.id = $1 AND c.owner = $2
    ORDER BY m.seq, m.created_at, m.id"""
    insert_branch_message: str = """INSERT INTO branch_messages ({message_columns}, parent_id, left_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"""
    taken_branch_message_id: str = """SELECT id FROM branch_messages
    WHERE id IN (SELECT value FROM {json_elements}($1)) LIMIT 1"""
    # Attachments' bytes, one row per content (store/blobs.py): a blob kept already stays as it is.
    insert_blob: str = """INSERT INTO blobs (sha256, size, data, created_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (sha256) DO NOTHING"""
    select_blob: str = "SELECT data FROM blobs WHERE sha256 = $1"

    @classmethod
    def in_dialect(cls, dialect: Dialect) -> Self:
        templates = cls()
        return cls(**{field.name: spelled(getattr(templates, field.name), dialect) for field in fields(cls)})


class Answer(Enum):
    """What a plan is sent back for a statement."""

    ROWS = "rows"  # every row
    ROW = "row"  # the first row, or None
    COUNT = "count"  # how many rows it changed
    NOTHING = "nothing"
    EACH = "each"  # nothing: the statement ran once for each tuple of arguments


@dataclass(slots=True, frozen=True)
class Statement:
    query: str
    args: Any  # a tuple for `$n` parameters (for EACH, a list of them), or a dict for SQLite's `:name`s
    answer: Answer


Plan = Generator[Statement, Any, T]


def fetch(query: str, *args: object) -> Statement:
    return Statement(query, args, Answer.ROWS)


def fetchrow(query: str, *args: object) -> Statement:
    return Statement(query, args, Answer.ROW)


def rowcount(query: str, *args: object) -> Statement:
    return Statement(query, args, Answer.COUNT)


def execute(query: str, *args: object) -> Statement:
    return Statement(query, args, Answer.NOTHING)


def execute_each(query: str, args: list[tuple[object, ...]]) -> Statement:
    return Statement(query, args, Answer.EACH)


def only(statement: Statement) -> Plan[Any]:
    """The plan of one statement: what it answers."""
    return (yield statement)


@dataclass(slots=True, frozen=True)
class Done:
    value: Any


def advance(plan: Plan[Any], answer: Any = None, *, error: BaseException | None = None) -> Statement | Done:
    """Send `plan` what its last statement answered (or throw it the `error` that statement
    raised): its next statement, or what it returned."""
    try:
        return plan.send(answer) if error is None else plan.throw(error)
    except StopIteration as done:
        return Done(done.value)
