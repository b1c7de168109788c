"""What only the SQL stores promise: migrations, durability across reopening, turns across processes.

Also that both dialects create one schema, and that a store that cannot answer (PostgreSQL cut
off, a SQLite file locked too long or on a full disk) is reported as unavailable, then works again.
"""

import asyncio
import logging
import re
import signal
import sqlite3 as sqlite_driver
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from chatkeep.domain import ChatChanges, KeyState, NewMessage, PageRequest, Role, StoredResponse, SummaryText, utcnow
from chatkeep.errors import ChatNotFoundError, StoreUnavailableError, TurnLapsedError
from chatkeep.store import ChatStore, TurnTicket, open_store
from chatkeep.store.sql import postgres, sqlite
from chatkeep.store.sql.migrations import Migration, pending
from chatkeep.store.urls import pool_options, sqlite_location
from tests.support.forwarder import Forwarder
from tests.support.stores import (
    OLD_VERSION_CHAT,
    OLD_VERSION_MESSAGE,
    applied_migrations,
    execute_sql,
    fresh_database,
    open_sql_store,
)

ALICE = "alice"
SHORT_LEASE = 1.0
ALL_MIGRATIONS = [
    "m001_initial",
    "m002_turn_tickets",
    "m003_idempotency_keys",
    "m004_message_status",
    "m005_rate_slots",
    "m006_conversation_items",
    "m007_responses",
    "m008_context_summaries",
    "m009_chat_revisions",
    "m010_fewer_turn_round_trips",
    "m011_incomplete_reasons",
    "m012_bigint_token_counts",
    "m013_background_responses",
    "m014_attachment_blobs",
    "m015_message_search",
    "m016_chat_models",
    "m017_branches",
    "m018_rate_leases",
    "m019_lazy_search_index",
]
TABLES = [
    "blobs",
    "branch_messages",
    "chatkeep_migrations",
    "chats",
    "context_summaries",
    "idempotency_keys",
    "messages",
    "rate_slots",
    "responses",
    "summaries",
    "turn_tickets",
]

# How a PostgreSQL column's type is spelled in SQLite. Timestamps are SQLite INTEGERs of
# microseconds since the epoch; both integer widths are SQLite's one INTEGER.
SQLITE_TYPE = {
    "text": "TEXT",
    "bigint": "INTEGER",
    "integer": "INTEGER",
    "timestamp with time zone": "INTEGER",
    "bytea": "BLOB",
}
# Columns spelled otherwise: moments on the database's clock (a ticket's expiry, when a rate slot
# was taken, a rolling summary's hold, how long a background response stays alive) are REAL
# seconds since the epoch on SQLite's.
SQLITE_TYPE_OF_COLUMN = {
    ("turn_tickets", "expires_at"): "REAL",
    ("rate_slots", "taken_at"): "REAL",
    ("context_summaries", "folding_until"): "REAL",
    ("responses", "live_until"): "REAL",
}
# Defaults only PostgreSQL has: its first release let the database stamp applied migrations.
POSTGRES_ONLY_DEFAULTS = {("chatkeep_migrations", "applied_at"): "now()"}
PG_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}

# Each database's own search index (store/sql/search.py: SQLite's FTS5 tables, PostgreSQL's
# search_vector column and its GIN index) is left out of the comparison; test_search_contract tests both.
POSTGRES_COLUMNS = """SELECT table_name, column_name, data_type, is_nullable = 'NO', column_default, is_identity = 'YES'
    FROM information_schema.columns WHERE table_schema = current_schema() AND column_name <> 'search_vector'
    ORDER BY table_name, ordinal_position"""
SCHEMA_OID = "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
POSTGRES_CONSTRAINTS = f"""SELECT c.conrelid::regclass::text, c.contype::text,
    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.n),
    c.confrelid::regclass::text,
    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.n),
    c.confdeltype::text, pg_get_constraintdef(c.oid)
    FROM pg_constraint c WHERE c.connamespace = {SCHEMA_OID}"""
POSTGRES_INDEXES = f"""SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema()
    AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE connamespace = {SCHEMA_OID})
    AND indexdef NOT LIKE '%(search_vector)'"""

# Every ticket lapses at once, as it would for a process that stalled past its lease.
EXPIRE_TICKETS = {
    "sqlite": "UPDATE turn_tickets SET expires_at = 0",
    "postgresql": "UPDATE turn_tickets SET expires_at = now() - interval '1 second'",
}

HOLD_AND_HANG = """
import asyncio, sys
from tests.support.stores import open_sql_store

async def main(url, chat_id, lease):
    async with open_sql_store(url, lease_seconds=float(lease)) as store, store.turn_lease("alice", chat_id):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type: str  # as SQLite spells it
    not_null: bool
    default: str | None
    identity: bool  # an integer key the database assigns


@dataclass(slots=True)
class Table:
    """A table as the comparison sees it, in either dialect."""

    columns: list[Column] = field(default_factory=list)
    primary_key: tuple[str, ...] = ()
    uniques: set[tuple[str, ...]] = field(default_factory=set)
    foreign_keys: set[tuple[str, str, str, str]] = field(default_factory=set)  # column, table, column, ON DELETE
    checks: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)  # column, the values it may hold
    indexes: set[tuple[str, bool, tuple[str, ...]]] = field(default_factory=set)  # name, unique, columns


def sqlite_schema(path: str) -> dict[str, Table]:
    db = sqlite_driver.connect(path)
    try:
        query = """SELECT name, sql FROM sqlite_master
            WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'messages_search%'"""
        return {name: _sqlite_table(db, name, sql) for name, sql in db.execute(query).fetchall()}
    finally:
        db.close()


def _sqlite_table(db: sqlite_driver.Connection, name: str, sql: str) -> Table:
    info = db.execute(f"PRAGMA table_info({name})").fetchall()  # cid, name, type, notnull, dflt_value, pk
    # A key column counts as NOT NULL, as in PostgreSQL (SQLite lets a TEXT key hold NULL; no statement writes one).
    columns = [
        Column(column, type_, bool(not_null or pk), default, bool(pk) and "AUTOINCREMENT" in sql)
        for _, column, type_, not_null, default, pk in info
    ]
    indexes = db.execute(f"PRAGMA index_list({name})").fetchall()  # seq, name, unique, origin, partial
    foreign_keys = db.execute(f"PRAGMA foreign_key_list({name})").fetchall()  # id, seq, table, from, to, ...
    checks = re.findall(r"CHECK \((\w+) IN \(([^)]*)\)\)", sql)
    assert len(checks) == sql.count("CHECK"), f"a CHECK of another form in {sql}"
    return Table(
        columns=columns,
        primary_key=tuple(row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]),
        uniques={_sqlite_index_columns(db, index) for _, index, _, origin, _ in indexes if origin == "u"},
        foreign_keys={
            (source, table, target, on_delete) for _, _, table, source, target, _, on_delete, _ in foreign_keys
        },
        checks={(column, tuple(sorted(re.findall(r"'([^']*)'", values)))) for column, values in checks},
        indexes={
            (index, bool(unique), _sqlite_index_columns(db, index))
            for _, index, unique, origin, _ in indexes
            if origin == "c"
        },
    )


def _sqlite_index_columns(db: sqlite_driver.Connection, index: str) -> tuple[str, ...]:
    return tuple(row[2] for row in db.execute(f"PRAGMA index_info({index})"))


async def postgres_schema(url: str) -> dict[str, Table]:
    """The schema `url` names, its types and defaults written as SQLite's by the stated mapping."""
    connection = await asyncpg.connect(url)
    try:
        tables: dict[str, Table] = {}
        for table, *column in await connection.fetch(POSTGRES_COLUMNS):
            tables.setdefault(table, Table()).columns.append(_as_sqlite(table, *column))
        for table, kind, columns, foreign_table, foreign_columns, on_delete, definition in await connection.fetch(
            POSTGRES_CONSTRAINTS
        ):
            _add_constraint(tables[table], kind, tuple(columns), foreign_table, foreign_columns, on_delete, definition)
        for table, definition in await connection.fetch(POSTGRES_INDEXES):
            match = re.fullmatch(r"CREATE (UNIQUE )?INDEX (\w+) ON \S+ USING btree \((.*)\)", definition)
            assert match is not None, definition
            tables[table].indexes.add((match[2], match[1] is not None, tuple(match[3].split(", "))))
        return tables
    finally:
        await connection.close()


def _as_sqlite(table: str, name: str, type_: str, not_null: bool, default: str | None, identity: bool) -> Column:
    if default is not None and POSTGRES_ONLY_DEFAULTS.get((table, name)) == default:
        default = None
    elif default is not None:
        default = re.sub(r"::[a-z ]+$", "", default)  # 'completed'::text is SQLite's 'completed'
    sqlite_type = SQLITE_TYPE_OF_COLUMN.get((table, name)) or SQLITE_TYPE[type_]
    return Column(name, sqlite_type, not_null, default, identity)


def _add_constraint(
    table: Table,
    kind: str,
    columns: tuple[str, ...],
    foreign_table: str,
    foreign_columns: list[str],
    on_delete: str,
    definition: str,
) -> None:
    if kind == "p":
        table.primary_key = columns
    elif kind == "u":
        table.uniques.add(columns)
    elif kind == "f":
        ((column,), (target,)) = (columns, foreign_columns)
        table.foreign_keys.add((column, foreign_table, target, PG_ON_DELETE[on_delete]))
    else:
        match = re.fullmatch(r"CHECK \(\((\w+) = ANY \(ARRAY\[(.*)\]\)\)\)", definition)
        assert kind == "c", definition
        assert match is not None, definition
        table.checks.add((match[1], tuple(sorted(re.findall(r"'([^']*)'", match[2])))))


async def new_chat(store: ChatStore) -> str:
    return (await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None)).id


async def _hold(store: ChatStore, chat_id: str) -> None:
    async with store.turn_lease(ALICE, chat_id):
        pass


async def waiting(store: ChatStore, chat_id: str) -> asyncio.Task[None]:
    """A turn on the chat that has queued (its ticket taken) and waits."""
    waiter = asyncio.create_task(_hold(store, chat_id))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    return waiter


async def everything(store: ChatStore, chat_id: str) -> tuple[object, ...]:
    """All a chat reads back as, to compare before and after reopening."""
    return (
        await store.get_chat(ALICE, chat_id),
        await store.list_chats(ALICE, PageRequest(limit=100)),
        await store.list_messages(ALICE, chat_id, PageRequest(limit=100)),
        await store.message_stats(ALICE, chat_id),
        await store.get_summary(ALICE, chat_id),
    )


async def test_migrations_are_applied_once_and_recorded(sql_store_url: str) -> None:
    for _ in range(2):
        async with open_store(sql_store_url):
            pass
    applied = await applied_migrations(sql_store_url)
    assert [name for name, _ in applied] == ALL_MIGRATIONS
    async with open_store(sql_store_url):
        assert await applied_migrations(sql_store_url) == applied  # nothing re-applied, nothing re-recorded


async def test_reopening_keeps_every_write(sql_store_url: str) -> None:
    async with open_store(sql_store_url) as store:
        chat_id = await new_chat(store)
        for n in range(5):
            role = Role.USER if n % 2 == 0 else Role.ASSISTANT
            await store.append_message(ALICE, chat_id, NewMessage(role, f"m{n}"))
        await store.save_summary(ALICE, chat_id, SummaryText("s", ["h"], 4, utcnow()))
        before = await everything(store, chat_id)
    async with open_store(sql_store_url) as store:
        assert await everything(store, chat_id) == before
        assert (await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "more"))).seq == 6
        newer = await new_chat(store)
        assert [c.id for c in (await store.list_chats(ALICE, PageRequest())).data] == [chat_id, newer]


async def test_both_dialects_create_the_same_tables(tmp_path: Path) -> None:
    """Column by column, key by key, with PostgreSQL's types mapped to SQLite's by SQLITE_TYPE."""
    async with fresh_database("sqlite", tmp_path) as sqlite_url, fresh_database("postgres", tmp_path) as postgres_url:
        for url in (sqlite_url, postgres_url):
            async with open_store(url):
                pass
        expected = sqlite_schema(sqlite_location(sqlite_url)[0])
        assert sorted(expected) == TABLES
        assert [column.name for column in expected["messages"].columns][-1] == "incomplete_reason"  # m011's, added last
        assert await postgres_schema(postgres_url) == expected
        await execute_sql(postgres_url, "ALTER TABLE chats ADD COLUMN only_in_postgres text")
        assert await postgres_schema(postgres_url) != expected  # the comparison sees a column one dialect lacks


def test_both_dialects_know_every_migration() -> None:
    for dialect in (sqlite, postgres):
        assert [migration.name for migration in dialect.MIGRATIONS] == ALL_MIGRATIONS


@pytest.mark.parametrize("old_steps", range(1, len(ALL_MIGRATIONS)))
async def test_an_old_database_upgrades_and_keeps_its_data(sql_store_url: str, old_steps: int) -> None:
    async with open_sql_store(sql_store_url, migrations=old_steps):
        pass
    # written as the first schema allows
    chat_id, dialect = "conv_old", sql_store_url.partition(":")[0]
    await execute_sql(sql_store_url, OLD_VERSION_CHAT[dialect], chat_id)
    await execute_sql(sql_store_url, OLD_VERSION_MESSAGE[dialect], chat_id)
    assert [name for name, _ in await applied_migrations(sql_store_url)] == ALL_MIGRATIONS[:old_steps]
    async with open_store(sql_store_url) as store:
        assert [name for name, _ in await applied_migrations(sql_store_url)] == ALL_MIGRATIONS
        async with store.turn_lease(ALICE, chat_id):
            await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "from the new one"))
        messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
        assert [(m.seq, m.content) for m in messages] == [(1, "from the old version"), (2, "from the new one")]
        await store.fork_at(ALICE, chat_id, 2)  # m017: an old chat branches
        assert (await store.get_chat(ALICE, chat_id)).message_count == 1
        assert [kept.message.content for kept in await store.off_branch_messages(ALICE, chat_id)] == [
            "from the new one"
        ]
        listed = await store.list_chats(ALICE, PageRequest(order_by="updated_at"))
        assert [(chat.id, chat.model) for chat in listed.data] == [(chat_id, None)]  # m016: the default model
        now = utcnow()
        claim = await store.claim_key(
            ALICE, "key", "request", expired_before=now - timedelta(days=1), abandoned_before=now
        )
        assert claim.claimed
        assert await store.purge_keys(expired_before=utcnow()) == 1


async def test_turns_are_fifo_and_exclusive_across_two_stores(sql_store_url: str) -> None:
    """Two store instances on one database stand for two server processes."""
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        entered: list[str] = []
        inside = 0

        async def turn(store: ChatStore, label: str, delay: float) -> None:
            nonlocal inside
            await asyncio.sleep(delay)
            async with store.turn_lease(ALICE, chat_id):
                inside += 1
                entered.append(label)
                await asyncio.sleep(0.03)
                assert inside == 1
                inside -= 1

        labels = [f"turn {n}" for n in range(8)]
        stores = [first, second] * 4
        await asyncio.gather(
            # 50 ms apart: each asks for its ticket well after the one before, even on a loaded machine
            *(turn(s, label, n * 0.05) for n, (s, label) in enumerate(zip(stores, labels, strict=True)))
        )
        assert entered == labels


async def test_one_of_two_stores_racing_for_a_key_claims_it(sql_store_url: str) -> None:
    """Two store instances on one database stand for two server processes."""
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        for key in (f"key {n}" for n in range(20)):
            now = utcnow()
            window = {"expired_before": now - timedelta(days=1), "abandoned_before": now - timedelta(minutes=1)}
            stores = [first, second] * 10
            outcomes = await asyncio.gather(*(s.claim_key(ALICE, key, "request", **window) for s in stores))
            assert [outcome.claimed for outcome in outcomes].count(True) == 1
            for outcome in outcomes:
                if not outcome.claimed:
                    assert outcome.previous is not None
                    assert (outcome.previous.state, outcome.previous.fingerprint) == (KeyState.RUNNING, "request")


async def test_a_chat_whose_first_messages_cannot_be_stored_is_not_created(sql_store_url: str) -> None:
    async with open_store(sql_store_url) as store:
        clash = [NewMessage(Role.USER, "one", id="msg_same"), NewMessage(Role.ASSISTANT, "two", id="msg_same")]
        with pytest.raises((sqlite_driver.IntegrityError, asyncpg.UniqueViolationError)):
            await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None, messages=clash)
        assert (await store.list_chats(ALICE, PageRequest())).data == []


async def test_a_waiting_turn_whose_chat_is_deleted_ends_not_found(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        async with first.turn_lease(ALICE, chat_id):
            waiter = await waiting(second, chat_id)
            await first.delete_chat(ALICE, chat_id)
        with pytest.raises(ChatNotFoundError):
            await waiter


async def test_a_cancelled_waiter_gives_its_place_up_at_once(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        async with first.turn_lease(ALICE, chat_id):
            waiter = await waiting(second, chat_id)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        started = time.monotonic()
        await _hold(second, chat_id)
        assert time.monotonic() - started < 1.0  # not the 15 s lease of a lapsed ticket


async def test_a_dead_holders_turn_is_taken_over_after_the_lease(sql_store_url: str) -> None:
    """A process that holds a turn is SIGKILLed: the turn frees itself within about one lease."""
    async with open_sql_store(sql_store_url, lease_seconds=SHORT_LEASE) as store:
        chat_id = await new_chat(store)
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-c", HOLD_AND_HANG, sql_store_url, chat_id, str(SHORT_LEASE)),
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        try:
            assert holder.stdout is not None
            assert await holder.stdout.readline() == b"held\n"
            waiter = await waiting(store, chat_id)
            await asyncio.sleep(2 * SHORT_LEASE)
            assert not waiter.done()  # a live holder keeps its turn past the lease: the heartbeat extends it
            holder.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(waiter, timeout=5 * SHORT_LEASE)
            assert time.monotonic() - killed < 2 * SHORT_LEASE
        finally:
            if holder.returncode is None:
                holder.kill()
            await holder.wait()


def test_pending_migrations_keep_their_order_and_skip_applied_ones(caplog: pytest.LogCaptureFixture) -> None:
    steps = [Migration("m001_a", ()), Migration("m002_b", ()), Migration("m003_c", ())]
    assert pending(steps, {"m001_a"}) == steps[1:]
    with caplog.at_level(logging.WARNING):
        assert pending(steps, {"m001_a", "m002_b", "m003_c", "m004_newer"}) == []
    assert "m004_newer" in caplog.text
    with pytest.raises(ValueError, match="in order"):
        pending(steps[::-1], set())


def test_store_urls_name_their_backend() -> None:
    assert sqlite_location("sqlite:///relative.db") == ("relative.db", "normal")
    assert sqlite_location("sqlite:////abs/path.db?synchronous=FULL") == ("/abs/path.db", "full")
    for bad in ("sqlite://", "sqlite:///x.db?synchronous=off", "sqlite:///x.db?cache=shared", "sqlite://host/x.db"):
        with pytest.raises(ValueError, match=r"sqlite|synchronous"):
            sqlite_location(bad)
    assert pool_options("postgresql://u@h/db") == ("postgresql://u@h/db", 20)
    assert pool_options("postgres://u@h/db?pool_size=5&search_path=t") == ("postgres://u@h/db?search_path=t", 5)


async def test_an_unknown_store_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported store URL 'mysql://x'"):
        async with open_store("mysql://x"):
            pass


async def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 100)
    async with fresh_database("sqlite", tmp_path) as url, open_store(url) as store:
        chat_id = await new_chat(store)
        other_process = sqlite_driver.connect(sqlite_location(url)[0], isolation_level=None)
        other_process.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="stayed locked") as raised:
                await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "while locked"))
            assert raised.value.retry_after == sqlite.LOCKED_RETRY_SECONDS == 1.0
            assert time.monotonic() - started < 5.0  # the patched busy timeout, not the 10 s one
            assert (await store.get_chat(ALICE, chat_id)).message_count == 0  # readers never wait in WAL mode
        finally:
            other_process.execute("ROLLBACK")
            other_process.close()
        assert (await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "after"))).seq == 1


async def test_other_sqlite_errors_are_not_called_unavailable(tmp_path: Path) -> None:
    db = sqlite_driver.connect(tmp_path / "chatkeep.db", check_same_thread=False)
    try:
        with (
            ThreadPoolExecutor(max_workers=1) as executor,
            pytest.raises(sqlite_driver.OperationalError, match="no such table"),
        ):
            await sqlite.SqliteThread(executor, db).fetch("SELECT * FROM nowhere")
    finally:
        db.close()


def every_call(store: ChatStore, chat_id: str, message_id: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each call a store makes of its database, by name, to make while it cannot answer."""
    now, page = utcnow(), PageRequest()
    response = StoredResponse("resp_outage", None, None, now, {"id": "resp_outage"}, [])
    broadcast = store.broadcast
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "check_ready": store.check_ready,
        "create_chat": lambda: store.create_chat(ALICE, title=None, metadata={}, system_prompt=None),
        "get_chat": lambda: store.get_chat(ALICE, chat_id),
        "list_chats": lambda: store.list_chats(ALICE, page),
        "count_chats": lambda: store.count_chats(ALICE),
        "update_chat": lambda: store.update_chat(ALICE, chat_id, ChatChanges(frozenset({"title"}), title="t")),
        "delete_chat": lambda: store.delete_chat(ALICE, chat_id),
        "append_message": lambda: store.append_message(ALICE, chat_id, NewMessage(Role.USER, "x")),
        "append_messages": lambda: store.append_messages(ALICE, chat_id, [NewMessage(Role.USER, "x")] * 2),
        "append_question": lambda: store.append_question(ALICE, chat_id, "x"),
        "forget_message": lambda: store.forget_message(ALICE, chat_id, message_id),
        "list_messages": lambda: store.list_messages(ALICE, chat_id, page),
        "recent_messages": lambda: store.recent_messages(ALICE, chat_id, limit=5),
        "message_stats": lambda: store.message_stats(ALICE, chat_id),
        "get_message": lambda: store.get_message(ALICE, chat_id, message_id),
        "get_summary": lambda: store.get_summary(ALICE, chat_id),
        "save_summary": lambda: store.save_summary(ALICE, chat_id, SummaryText("s", [], 1, now)),
        "get_rolling_summary": lambda: store.get_rolling_summary(ALICE, chat_id),
        "claim_rolling_summary": lambda: store.claim_rolling_summary(ALICE, chat_id, hold_seconds=1),
        "end_rolling_summary": lambda: store.end_rolling_summary(ALICE, chat_id, None),
        "claim_key": lambda: store.claim_key(ALICE, "k", "f", expired_before=now, abandoned_before=now),
        "update_key": lambda: store.update_key(ALICE, "k", state=KeyState.DONE),
        "release_key": lambda: store.release_key(ALICE, "k"),
        "purge_keys": lambda: store.purge_keys(expired_before=now),
        "save_response": lambda: store.save_response(ALICE, response),
        "get_response": lambda: store.get_response(ALICE, "resp_outage"),
        "delete_response": lambda: store.delete_response(ALICE, "resp_outage"),
        "renew_rate_lease": lambda: store.renew_rate_lease(
            "k", "l", spent=[], want=1, limit=5, window_seconds=60, lease_seconds=1
        ),
        "turn_lease": lambda: _hold(store, chat_id),
    }
    if broadcast is not None:
        calls["publish"] = lambda: broadcast.publish(b"hello")
    return calls


async def test_a_postgres_store_cut_off_is_unavailable_in_every_call_then_works_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL through a forwarder that is cut (every connection closed, new ones refused) and restored."""
    async with fresh_database("postgres", tmp_path) as url:
        target = urlsplit(url)
        forwarder = Forwarder(target.hostname or "127.0.0.1", target.port or 5432)
        async with forwarder, open_sql_store(forwarder.url(url), lease_seconds=SHORT_LEASE) as store:
            chat_id = await new_chat(store)
            async with store.turn_lease(ALICE, chat_id, question="before") as ticket:
                assert ticket.question is not None
                await forwarder.cut()
            # Its question stored, the turn's ticket could not be given back: the block still ends
            # without an error (its ticket lapses after the lease).
            for name, call in every_call(store, chat_id, ticket.question.id).items():
                with pytest.raises(StoreUnavailableError) as raised:
                    await call()
                assert raised.value.retry_after == postgres.RETRY_AFTER_SECONDS, name
                assert raised.value.detail.startswith("PostgreSQL does not answer ("), name
            await forwarder.restore()
            async with asyncio.timeout(SHORT_LEASE * 5):
                async with store.turn_lease(ALICE, chat_id) as ticket:  # once the lapsed ticket is gone
                    reply = [NewMessage(Role.USER, "after"), NewMessage(Role.ASSISTANT, "a")]
                    await store.append_messages(ALICE, chat_id, reply, ticket=ticket, ends_turn=True)
            await store.check_ready()
            messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
            assert [m.content for m in messages] == ["before", "after", "a"]
    assert "does not answer" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "warnings, no tracebacks"


async def test_a_sqlite_file_on_a_full_disk_is_unavailable_then_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's limit on the file's pages (set on the store's own connection) stands in for a full disk."""
    opened: list[sqlite_driver.Connection] = []
    connect = sqlite._connect

    def recording(path: str, synchronous: str) -> sqlite_driver.Connection:
        opened.append(connect(path, synchronous))
        return opened[-1]

    monkeypatch.setattr(sqlite, "_connect", recording)
    async with fresh_database("sqlite", tmp_path) as url, open_store(url) as store:
        chat_id = await new_chat(store)
        question = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "before"))
        (db,) = opened
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        big = "x" * 50_000
        for write in (
            lambda: store.append_message(ALICE, chat_id, NewMessage(Role.USER, big)),
            lambda: store.append_messages(ALICE, chat_id, [NewMessage(Role.USER, big)] * 2),
            lambda: store.create_chat(
                ALICE, title=None, metadata={}, system_prompt=None, messages=[NewMessage(Role.USER, big)]
            ),
        ):
            with pytest.raises(StoreUnavailableError, match="the disk is full") as raised:
                await write()
            assert raised.value.retry_after == sqlite.UNAVAILABLE_RETRY_SECONDS
        assert (await store.get_message(ALICE, chat_id, question.id)).content == "before"  # reads go on
        db.execute("PRAGMA max_page_count = 1073741823")
        assert (await store.append_message(ALICE, chat_id, NewMessage(Role.USER, big))).seq == 2
    assert "database or disk is full" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_an_append_with_a_lapsed_ticket_stores_nothing(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url, lease_seconds=60) as store:
        chat_id = await new_chat(store)
        async with store.turn_lease(ALICE, chat_id) as ticket:
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "asked in time"), ticket=ticket)
            # as if this process had stalled
            await execute_sql(sql_store_url, EXPIRE_TICKETS[sql_store_url.partition(":")[0]])
            with pytest.raises(TurnLapsedError):
                await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "too late"), ticket=ticket)
        messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
        assert [(m.seq, m.content) for m in messages] == [(1, "asked in time")]
        assert (await store.get_chat(ALICE, chat_id)).message_count == 1
        with pytest.raises(ChatNotFoundError):
            await store.append_message(ALICE, "chat_missing", NewMessage(Role.USER, "x"), ticket=ticket)


@pytest.fixture
def returned_tickets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ticket the stores give back by a call of their own (not with an append)."""
    returned: list[int] = []
    for driver in (postgres.PostgresDriver, sqlite.SqliteDriver):

        async def give_back_ticket(self: object, chat_id: str, ticket: int, give_back=driver.give_back_ticket) -> None:  # type: ignore[no-untyped-def]
            returned.append(ticket)
            await give_back(self, chat_id, ticket)

        monkeypatch.setattr(driver, "give_back_ticket", give_back_ticket)
    return returned


async def test_the_turns_last_append_gives_its_ticket_back(sql_store_url: str, returned_tickets: list[int]) -> None:
    """The reply's append gives the ticket back with it: the next turn, in another process, starts
    before the first one's block ends, and that block has nothing left to give back."""
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        entered = asyncio.Event()

        async def next_turn() -> None:
            async with second.turn_lease(ALICE, chat_id) as ticket:
                entered.set()
                await second.append_message(ALICE, chat_id, NewMessage(Role.USER, "next"), ticket=ticket)

        async with first.turn_lease(ALICE, chat_id) as ticket:
            await first.append_message(ALICE, chat_id, NewMessage(Role.USER, "q"), ticket=ticket)
            queued = asyncio.create_task(next_turn())
            await asyncio.sleep(0.1)
            assert not entered.is_set(), "the next turn waits while the first is not done"
            reply = NewMessage(Role.ASSISTANT, "a")
            await first.append_message(ALICE, chat_id, reply, ticket=ticket, ends_turn=True)
            await asyncio.wait_for(entered.wait(), 5)
        await queued
        assert len(returned_tickets) == 1, "only the next turn gave its ticket back"
        assert ticket.number not in returned_tickets
        messages = (await first.list_messages(ALICE, chat_id, PageRequest())).data
        assert [(m.seq, m.content) for m in messages] == [(1, "q"), (2, "a"), (3, "next")]


async def test_a_refused_last_append_stores_nothing_and_the_ticket_is_still_given_back(
    sql_store_url: str, returned_tickets: list[int]
) -> None:
    async with open_sql_store(sql_store_url, lease_seconds=60) as store:
        chat_id = await new_chat(store)
        async with store.turn_lease(ALICE, chat_id) as ticket:
            # as if this process had stalled
            await execute_sql(sql_store_url, EXPIRE_TICKETS[sql_store_url.partition(":")[0]])
            reply = NewMessage(Role.ASSISTANT, "too late")
            with pytest.raises(TurnLapsedError):
                await store.append_message(ALICE, chat_id, reply, ticket=ticket, ends_turn=True)
        assert returned_tickets == [ticket.number]
        assert (await store.get_chat(ALICE, chat_id)).message_count == 0
        async with store.turn_lease(ALICE, chat_id) as ticket:
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "next turn"), ticket=ticket)


async def contents(store: ChatStore, chat_id: str) -> list[tuple[int, str]]:
    return [(m.seq, m.content) for m in (await store.list_messages(ALICE, chat_id, PageRequest())).data]


async def test_a_question_waiting_in_another_processs_line_is_stored_when_its_turn_comes(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)

        async def next_turn() -> None:
            async with second.turn_lease(ALICE, chat_id, question="second q") as ticket:
                assert ticket.question is None
                await second.append_question(ALICE, chat_id, "second q", ticket=ticket)

        async with first.turn_lease(ALICE, chat_id, question="first q") as ticket:
            assert ticket.question is not None
            queued = asyncio.create_task(next_turn())
            await asyncio.sleep(0.1)
            assert await contents(first, chat_id) == [(1, "first q")], "a waiting turn stores nothing yet"
            await first.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "first a"), ticket=ticket)
        await queued
        assert await contents(first, chat_id) == [(1, "first q"), (2, "first a"), (3, "second q")]


async def test_a_ticket_that_is_not_the_head_cannot_write(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        async with first.turn_lease(ALICE, chat_id) as head:
            queued = asyncio.create_task(_hold(second, chat_id))
            await asyncio.sleep(0.1)
            waiting = TurnTicket(head.number + 1)  # the ticket the queued turn took
            with pytest.raises(TurnLapsedError):
                await second.append_message(ALICE, chat_id, NewMessage(Role.USER, "not mine"), ticket=waiting)
            await first.append_message(ALICE, chat_id, NewMessage(Role.USER, "mine"), ticket=head)
        await queued


async def test_a_key_kept_alive_outlives_the_lease_and_a_dead_holders_does_not(sql_store_url: str) -> None:
    now = utcnow()
    claim = {"expired_before": now - timedelta(days=1)}
    async with (
        open_sql_store(sql_store_url, lease_seconds=SHORT_LEASE) as holder,
        open_sql_store(sql_store_url) as other,
    ):
        assert (await holder.claim_key(ALICE, "k", "req", abandoned_before=now, **claim)).claimed
        holder.keep_key_alive(ALICE, "k")
        await asyncio.sleep(3 * SHORT_LEASE)  # the holder's heartbeat refreshes the key meanwhile
        lease_ago = utcnow() - timedelta(seconds=SHORT_LEASE)
        assert not (await other.claim_key(ALICE, "k", "req", abandoned_before=lease_ago, **claim)).claimed
    await asyncio.sleep(SHORT_LEASE)  # the holder is gone: nothing refreshes the key any more
    async with open_sql_store(sql_store_url) as other:
        lease_ago = utcnow() - timedelta(seconds=SHORT_LEASE)
        assert (await other.claim_key(ALICE, "k", "req", abandoned_before=lease_ago, **claim)).claimed


async def test_rate_slots_are_shared_by_processes(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        leases = await asyncio.gather(
            *(
                store.renew_rate_lease(
                    "posts:alice", f"l{n}", spent=[], want=n % 3 + 1, limit=4, window_seconds=60, lease_seconds=1
                )
                for n, store in enumerate([first, second] * 5)
            )
        )
    assert sum(lease.slots for lease in leases) == 4


async def _turn(store: ChatStore, chat_id: str, question: str) -> list[str]:
    """A turn as the turn engine takes it: its question appended under its ticket, then the
    context read as that turn (the contents, newest first), then its reply."""
    async with store.turn_lease(ALICE, chat_id) as ticket:
        await store.append_question(ALICE, chat_id, question, ticket=ticket)
        context = await store.recent_messages(ALICE, chat_id, limit=100, ticket=ticket)
        await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, f"re: {question}"), ticket=ticket)
    return [message.content for message in context]


async def test_a_turns_context_sees_what_other_processes_did_to_the_chat(sql_store_url: str) -> None:
    """A store keeps the chats' newest messages between its turns (sql/recent.py); another process's
    turn, or a message it forgets, must still show in the next turn's context here."""
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        assert await _turn(first, chat_id, "one") == ["one"]
        assert await _turn(first, chat_id, "two") == ["two", "re: one", "one"]
        assert await _turn(second, chat_id, "three") == ["three", "re: two", "two", "re: one", "one"]
        assert await _turn(first, chat_id, "four") == ["four", "re: three", "three", "re: two", "two", "re: one", "one"]
        forgotten = (await second.list_messages(ALICE, chat_id, PageRequest(limit=1))).data[0]
        await second.forget_message(ALICE, chat_id, forgotten.id)
        assert await _turn(first, chat_id, "five") == [
            "five", "re: four", "four", "re: three", "three", "re: two", "two", "re: one", "",
        ]  # fmt: skip


async def test_reads_outside_the_turn_that_proved_the_kept_messages_go_to_the_database(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = await new_chat(first)
        await _turn(first, chat_id, "one")
        async with second.turn_lease(ALICE, chat_id) as ticket:
            await second.append_question(ALICE, chat_id, "two", ticket=ticket)
        newest = await first.recent_messages(ALICE, chat_id, limit=10)  # no ticket: not a turn's read
        assert [message.content for message in newest] == ["two", "re: one", "one"]


async def test_a_warm_turn_reads_its_context_from_memory(sql_store_url: str) -> None:
    """What makes a turn on a SQL store cheap: its context costs no read. Changed behind the
    store's back (no revision bump, as nothing in chatkeep does), the database goes unseen."""
    async with open_sql_store(sql_store_url) as store:
        chat_id = await new_chat(store)
        await _turn(store, chat_id, "one")
        await execute_sql(sql_store_url, "UPDATE messages SET content = 'changed'")
        assert await _turn(store, chat_id, "two") == ["two", "re: one", "one"]
