"""What only the SQL stores promise: migrations, durability across reopening, turns across processes."""

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from chatkeep.domain import KeyState, NewMessage, PageRequest, Role, SummaryText, utcnow
from chatkeep.errors import ChatNotFoundError
from chatkeep.store import ChatStore, open_store, postgres, sqlite
from chatkeep.store.migrations import Migration, pending
from chatkeep.store.urls import pool_options, sqlite_location
from tests.stores import SQL_STORES, applied_migrations, execute_sql, fresh_database, open_sql_store

ALICE = "alice"
SHORT_LEASE = 1.0
ALL_MIGRATIONS = ["m001_initial", "m002_turn_tickets", "m003_idempotency_keys", "m004_message_status"]

# A message as the first schema (m001) stores it, for the upgrade tests: later code writes more columns.
OLD_VERSION_MESSAGE = {
    "sqlite": """INSERT INTO messages (id, chat_id, seq, role, content, created_at)
        VALUES ('msg_old', ?1, 1, 'user', 'from the old version', 0);
        UPDATE chats SET message_count = 1, user_message_count = 1 WHERE id = ?1""",
    "postgresql": """INSERT INTO messages (id, chat_id, seq, role, content, created_at)
        VALUES ('msg_old', $1, 1, 'user', 'from the old version', now());
        UPDATE chats SET message_count = 1, user_message_count = 1 WHERE id = $1""",
}

HOLD_AND_HANG = """
import asyncio, sys
from tests.stores import open_sql_store

async def main(url, chat_id, lease):
    async with open_sql_store(url, lease_seconds=float(lease)) as store, store.turn_lease("alice", chat_id):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(params=SQL_STORES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


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


async def test_migrations_are_applied_once_and_recorded(url: str) -> None:
    for _ in range(2):
        async with open_store(url):
            pass
    applied = await applied_migrations(url)
    assert [name for name, _ in applied] == ALL_MIGRATIONS
    async with open_store(url):
        assert await applied_migrations(url) == applied  # nothing re-applied, nothing re-recorded


async def test_reopening_keeps_every_write(url: str) -> None:
    async with open_store(url) as store:
        chat_id = await new_chat(store)
        for n in range(5):
            role = Role.USER if n % 2 == 0 else Role.ASSISTANT
            await store.append_message(ALICE, chat_id, NewMessage(role, f"m{n}"))
        await store.save_summary(ALICE, chat_id, SummaryText("s", ["h"], 4, utcnow()))
        before = await everything(store, chat_id)
    async with open_store(url) as store:
        assert await everything(store, chat_id) == before
        assert (await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "more"))).seq == 6
        newer = await new_chat(store)
        assert [c.id for c in (await store.list_chats(ALICE, PageRequest())).data] == [chat_id, newer]


def test_both_dialects_know_every_migration() -> None:
    for dialect in (sqlite, postgres):
        assert [migration.name for migration in dialect.MIGRATIONS] == ALL_MIGRATIONS


@pytest.mark.parametrize("old_steps", range(1, len(ALL_MIGRATIONS)))
async def test_an_old_database_upgrades_and_keeps_its_data(url: str, old_steps: int) -> None:
    async with open_sql_store(url, migrations=old_steps) as store:
        chat_id = await new_chat(store)
    await execute_sql(url, OLD_VERSION_MESSAGE[url.partition(":")[0]], chat_id)  # written as the first schema allows
    assert [name for name, _ in await applied_migrations(url)] == ALL_MIGRATIONS[:old_steps]
    async with open_store(url) as store:
        assert [name for name, _ in await applied_migrations(url)] == ALL_MIGRATIONS
        async with store.turn_lease(ALICE, chat_id):
            await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "from the new one"))
        messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
        assert [(m.seq, m.content) for m in messages] == [(1, "from the old version"), (2, "from the new one")]
        now = utcnow()
        claim = await store.claim_key(
            ALICE, "key", "request", expired_before=now - timedelta(days=1), abandoned_before=now
        )
        assert claim.claimed
        assert await store.purge_keys(expired_before=utcnow()) == 1


async def test_turns_are_fifo_and_exclusive_across_two_stores(url: str) -> None:
    """Two store instances on one database stand for two server processes."""
    async with open_sql_store(url) as first, open_sql_store(url) as second:
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
            *(turn(s, label, n * 0.02) for n, (s, label) in enumerate(zip(stores, labels, strict=True)))
        )
        assert entered == labels


async def test_one_of_two_stores_racing_for_a_key_claims_it(url: str) -> None:
    """Two store instances on one database stand for two server processes."""
    async with open_sql_store(url) as first, open_sql_store(url) as second:
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


async def test_a_turn_on_a_missing_chat_is_refused(url: str) -> None:
    async with open_store(url) as store:
        chat_id = await new_chat(store)
        with pytest.raises(ChatNotFoundError):
            async with store.turn_lease("bob", chat_id):
                pass
        await store.delete_chat(ALICE, chat_id)
        with pytest.raises(ChatNotFoundError):
            async with store.turn_lease(ALICE, chat_id):
                pass


async def test_a_waiting_turn_whose_chat_is_deleted_ends_not_found(url: str) -> None:
    async with open_sql_store(url) as first, open_sql_store(url) as second:
        chat_id = await new_chat(first)
        async with first.turn_lease(ALICE, chat_id):
            waiter = await waiting(second, chat_id)
            await first.delete_chat(ALICE, chat_id)
        with pytest.raises(ChatNotFoundError):
            await waiter


async def test_a_cancelled_waiter_gives_its_place_up_at_once(url: str) -> None:
    async with open_sql_store(url) as first, open_sql_store(url) as second:
        chat_id = await new_chat(first)
        async with first.turn_lease(ALICE, chat_id):
            waiter = await waiting(second, chat_id)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        started = time.monotonic()
        await _hold(second, chat_id)
        assert time.monotonic() - started < 1.0  # not the 15 s lease of a lapsed ticket


async def test_a_dead_holders_turn_is_taken_over_after_the_lease(url: str) -> None:
    """A process that holds a turn is SIGKILLed: the turn frees itself within about one lease."""
    async with open_sql_store(url, lease_seconds=SHORT_LEASE) as store:
        chat_id = await new_chat(store)
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-c", HOLD_AND_HANG, url, chat_id, str(SHORT_LEASE)),
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
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
