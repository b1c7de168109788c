"""chatkeep's tables, as the named migrations both SQL stores apply, and `migrate` that applies them.

The tables are written once with the dialect's words for types (`{timestamp}` is SQLite's
INTEGER of microseconds, PostgreSQL's timestamptz); a store adds steps only its database has
(PostgreSQL's ticket functions) after the shared steps of a migration. Released steps are never
edited, so each template spells, for both dialects, exactly what its first release created.
`migrate` is the one procedure for both; a store only hands it a transaction holding the lock
that keeps two processes starting at once from applying a step twice.
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from chatkeep.store.sql.migrations import Migration, pending
from chatkeep.store.sql.rows import Row
from chatkeep.store.sql.statements import Dialect, Statements, spelled

log = logging.getLogger(__name__)

M001_INITIAL = (
    # A chat's rank is never handed out again after a delete, so ranks are monotonic.
    """CREATE TABLE chats (
    rank {identity},
    id {text} NOT NULL UNIQUE,
    owner {text} NOT NULL,
    title {text},
    metadata {text} NOT NULL,
    system_prompt {text},
    created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL,
    message_count {bigint} NOT NULL DEFAULT 0,
    user_message_count {bigint} NOT NULL DEFAULT 0,
    first_message_at {timestamp},
    last_message_at {timestamp}
)""",
    "CREATE INDEX chats_by_owner ON chats (owner, rank)",
    """CREATE TABLE messages (
    chat_id {text} NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq {bigint} NOT NULL,
    id {text} NOT NULL UNIQUE,
    role {text} NOT NULL CHECK (role IN ('user', 'assistant')),
    content {text} NOT NULL,
    created_at {timestamp} NOT NULL,
    model {text},
    prompt_tokens {integer},
    completion_tokens {integer},
    PRIMARY KEY (chat_id, seq)
)""",
    """CREATE TABLE summaries (
    chat_id {text} PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE,
    summary {text} NOT NULL,
    highlights {text} NOT NULL,
    up_to_seq {bigint} NOT NULL,
    created_at {timestamp} NOT NULL
)""",
)
M002_TURN_TICKETS = (
    """CREATE TABLE turn_tickets (
    ticket {identity},
    chat_id {text} NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    expires_at {expiry} NOT NULL
)""",
    "CREATE INDEX turn_tickets_by_chat ON turn_tickets (chat_id, ticket)",
)
M003_IDEMPOTENCY_KEYS = (
    """CREATE TABLE idempotency_keys (
    owner {text} NOT NULL,
    key {text} NOT NULL,
    fingerprint {text} NOT NULL,
    state {text} NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    result {text},
    user_message_id {text},
    created_at {timestamp} NOT NULL,
    updated_at {timestamp} NOT NULL,
    PRIMARY KEY (owner, key)
)""",
    "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
)
M004_MESSAGE_STATUS = (
    """ALTER TABLE messages ADD COLUMN status {text} NOT NULL DEFAULT 'completed'
    CHECK (status IN ('completed', 'incomplete'))""",
)
# One row per message post counted against an owner's rate limit, in the window it still counts.
M005_RATE_SLOTS = (
    """CREATE TABLE rate_slots (
    key {text} NOT NULL,
    taken_at {expiry} NOT NULL
)""",
    "CREATE INDEX rate_slots_by_key ON rate_slots (key, taken_at)",
)
# A conversation item other than a plain text message (OpenAI's Conversations API), kept verbatim as JSON.
M006_CONVERSATION_ITEMS = ("ALTER TABLE messages ADD COLUMN item {text}",)
# Responses of OpenAI's Responses API, kept for `previous_response_id` and for reading them back.
M007_RESPONSES = (
    """CREATE TABLE responses (
    id {text} PRIMARY KEY,
    owner {text} NOT NULL,
    chat_id {text},
    previous_response_id {text},
    created_at {timestamp} NOT NULL,
    body {text} NOT NULL,
    input {text} NOT NULL
)""",
)
# A chat's rolling summary of its older messages, and until when someone holds the right to write it
# (`folding_until`, named as first released).
M008_CONTEXT_SUMMARIES = (
    """CREATE TABLE context_summaries (
    chat_id {text} PRIMARY KEY REFERENCES chats (id) ON DELETE CASCADE,
    summary {text} NOT NULL,
    up_to_seq {bigint} NOT NULL,
    folding_until {expiry}
)""",
)
# Bumped whenever a stored message of the chat changes (a forgotten one is emptied): appends answer
# it, so a process that keeps a chat's newest messages (recent.py) knows when they went stale.
M009_CHAT_REVISIONS = ("ALTER TABLE chats ADD COLUMN revision {bigint} NOT NULL DEFAULT 0",)
# A turn's question is stored as its ticket is taken, and its reply as the ticket is given back.
# SQLite needs no schema for that; PostgreSQL adds two functions (postgres.py), so the migration
# exists for both and changes nothing on SQLite.
M010_FEWER_TURN_ROUND_TRIPS: tuple[str, ...] = ()
# Why an incomplete reply was cut short (a stop, a timeout, the upstream failing, a shutdown...).
M011_INCOMPLETE_REASONS = ("ALTER TABLE messages ADD COLUMN incomplete_reason {text}",)
# Token counts as wide as any upstream reports (a usage over 2**31 - 1 lost its reply). SQLite's
# INTEGER is 64-bit already; PostgreSQL widens its two columns, and the m010 function that takes
# the counts as parameters (postgres.py), so the migration exists for both and changes nothing on SQLite.
M012_BIGINT_TOKEN_COUNTS: tuple[str, ...] = ()
# Background responses: stored as they start and updated as they go. `status` (NULL on the rows
# before: they had all ended) lets an update refuse a response that ended; `live_until` is how long
# the process making an unfinished one keeps it alive; `stream` is what its events are replayed from.
M013_BACKGROUND_RESPONSES = (
    "ALTER TABLE responses ADD COLUMN status {text}",
    "ALTER TABLE responses ADD COLUMN live_until {expiry}",
    "ALTER TABLE responses ADD COLUMN stream {text}",
)

# Attachments' bytes (images and files sent inline), one row per content, named by its SHA-256;
# messages' and responses' items reference them (store/blobs.py). Numbered 14: 13 is taken.
M014_ATTACHMENT_BLOBS = (
    """CREATE TABLE blobs (
    sha256 {text} PRIMARY KEY,
    size {bigint} NOT NULL,
    data {binary} NOT NULL,
    created_at {timestamp} NOT NULL
)""",
)

# Search: each database's own full-text index over messages (store/sql/search.py), so no shared step.
M015_MESSAGE_SEARCH: tuple[str, ...] = ()

# A chat's model (NULL: the server's default), and its owner's chats by last activity: the list
# `GET /chats?order_by=updated_at` pages through, newest first, read from this index alone.
M016_CHAT_MODELS = (
    "ALTER TABLE chats ADD COLUMN model {text}",
    "CREATE INDEX chats_by_activity ON chats (owner, updated_at, id)",
)

# Branches: a chat's messages off its current branch (`protocols.Branches`), with `messages`'
# columns, the message before each on its own branch (`parent_id`, NULL at seq 1) and the chat's
# count of branch changes when it left the current branch (`left_at`); that count on `chats`
# (0: never branched, so a chat's siblings are answered without reading this table). A message
# moves between the two tables, so every read of `messages` (and its search index) sees the
# current branch only; a chat's delete cascades here as to `messages`.
M017_BRANCHES = (
    """CREATE TABLE branch_messages (
    chat_id {text} NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq {bigint} NOT NULL,
    id {text} NOT NULL UNIQUE,
    role {text} NOT NULL CHECK (role IN ('user', 'assistant')),
    content {text} NOT NULL,
    created_at {timestamp} NOT NULL,
    model {text},
    prompt_tokens {bigint},
    completion_tokens {bigint},
    status {text} NOT NULL CHECK (status IN ('completed', 'incomplete')),
    item {text},
    incomplete_reason {text},
    parent_id {text},
    left_at {bigint} NOT NULL
)""",
    "CREATE INDEX branch_messages_by_seq ON branch_messages (chat_id, seq)",
    "ALTER TABLE chats ADD COLUMN branch_changes {bigint} NOT NULL DEFAULT 0",
)

# Rate slots taken in blocks: a row counts `slots` slots, and a row a process's lease holds names
# it (`lease`), so that the process can give back what it did not spend (rate_limit.py).
M018_RATE_LEASES = (
    "ALTER TABLE rate_slots ADD COLUMN slots {integer} NOT NULL DEFAULT 1",
    "ALTER TABLE rate_slots ADD COLUMN lease {text}",
)

# SQLite's search index kept in step lazily (store/sql/search.py): its steps are SQLite's alone.
M019_LAZY_SEARCH_INDEX: tuple[str, ...] = ()

SHARED_MIGRATIONS = {
    "m001_initial": M001_INITIAL,
    "m002_turn_tickets": M002_TURN_TICKETS,
    "m003_idempotency_keys": M003_IDEMPOTENCY_KEYS,
    "m004_message_status": M004_MESSAGE_STATUS,
    "m005_rate_slots": M005_RATE_SLOTS,
    "m006_conversation_items": M006_CONVERSATION_ITEMS,
    "m007_responses": M007_RESPONSES,
    "m008_context_summaries": M008_CONTEXT_SUMMARIES,
    "m009_chat_revisions": M009_CHAT_REVISIONS,
    "m010_fewer_turn_round_trips": M010_FEWER_TURN_ROUND_TRIPS,
    "m011_incomplete_reasons": M011_INCOMPLETE_REASONS,
    "m012_bigint_token_counts": M012_BIGINT_TOKEN_COUNTS,
    "m013_background_responses": M013_BACKGROUND_RESPONSES,
    "m014_attachment_blobs": M014_ATTACHMENT_BLOBS,
    "m015_message_search": M015_MESSAGE_SEARCH,
    "m016_chat_models": M016_CHAT_MODELS,
    "m017_branches": M017_BRANCHES,
    "m018_rate_leases": M018_RATE_LEASES,
    "m019_lazy_search_index": M019_LAZY_SEARCH_INDEX,
}

CREATE_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS {migrations_table} (
    name {text} PRIMARY KEY, applied_at {timestamp} NOT NULL{applied_at_default})"""
RECORD_MIGRATION = "INSERT INTO {migrations_table} (name, applied_at) VALUES ($1, $2)"


def migrations_in(dialect: Dialect, *, extra: Mapping[str, Sequence[str]] | None = None) -> tuple[Migration, ...]:
    """Every migration spelled for `dialect`, with its `extra` steps (by migration name) after the shared ones."""
    extra = extra or {}
    unknown = set(extra) - set(SHARED_MIGRATIONS)
    if unknown:
        raise ValueError(f"extra steps for migrations that do not exist: {sorted(unknown)}")
    return tuple(
        Migration(name, tuple(spelled(step, dialect) for step in steps) + tuple(extra.get(name, ())))
        for name, steps in SHARED_MIGRATIONS.items()
    )


class SchemaConnection(Protocol):
    """A connection inside the migration transaction: an asyncpg connection, or the SQLite store's thread."""

    async def execute(self, query: str, *args: object) -> object: ...

    async def fetch(self, query: str, *args: object) -> Iterable[Row]: ...


async def migrate(
    transaction: AbstractAsyncContextManager[SchemaConnection],
    dialect: Dialect,
    migrations: Sequence[Migration],
    *,
    applied_at: object,
) -> None:
    """Apply the pending migrations in `transaction`, recording each as applied at `applied_at` (a dialect's timestamp).

    `transaction` holds the dialect's lock, so a second process starting meanwhile waits, then finds nothing to do.
    """
    async with transaction as connection:
        await connection.execute(spelled(CREATE_MIGRATIONS_TABLE, dialect))
        applied = {name for (name,) in await connection.fetch(Statements.in_dialect(dialect).applied_migrations)}
        for migration in pending(migrations, applied):
            for step in migration.steps:
                await connection.execute(step)
            await connection.execute(spelled(RECORD_MIGRATION, dialect), migration.name, applied_at)
            log.info("applied migration %s to the %s database", migration.name, dialect.name)
