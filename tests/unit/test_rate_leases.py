"""A process's leases of rate slots (rate_limit.py) give back what they leave unspent: when the
lease ends, and when the process stops; the count in the store then holds only spent slots."""

import asyncio
from typing import Any

import pytest

from chatkeep.errors import RateLimitedError, StoreUnavailableError
from chatkeep.rate_limit import KEY_PREFIX, StoreRateLimit, open_rate_limit
from chatkeep.store import MemoryStore, RateLease

LIMIT = 100  # per minute: blocks of up to 10 slots, leases of one second


async def room_left(store: MemoryStore) -> int:
    """How many slots another process could take now (taking them)."""
    lease = await store.renew_rate_lease(
        KEY_PREFIX + "alice", "other", spent=[], want=LIMIT, limit=LIMIT, window_seconds=60, lease_seconds=1
    )
    return lease.slots


async def spend(limit: StoreRateLimit, turns: int) -> None:
    for _ in range(turns):
        await limit.check("alice")


async def test_a_lease_gives_back_its_unspent_slots_when_it_ends() -> None:
    store = MemoryStore()
    async with open_rate_limit(f"{LIMIT}/minute", store=store, redis_url=None) as limit:
        assert isinstance(limit, StoreRateLimit)
        await spend(limit, 6)
        assert await room_left(store) < LIMIT - 6, "the lease holds slots beyond those spent"
        await store.renew_rate_lease(  # give them back, as the other process would
            KEY_PREFIX + "alice", "other", spent=[], want=0, limit=LIMIT, window_seconds=60, lease_seconds=1
        )
        await asyncio.sleep(2.5 * limit.lease_seconds)
        assert await room_left(store) == LIMIT - 6


async def test_a_stopping_process_gives_back_its_unspent_slots() -> None:
    store = MemoryStore()
    async with open_rate_limit(f"{LIMIT}/minute", store=store, redis_url=None) as limit:
        assert isinstance(limit, StoreRateLimit)
        await spend(limit, 6)
    assert await room_left(store) == LIMIT - 6


class SlowStore(MemoryStore):
    """A memory store whose every lease renewal takes `delay` seconds, as a busy database's would."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.renewals = 0

    async def renew_rate_lease(self, key: str, lease: str, **counted: Any) -> RateLease:
        self.renewals += 1
        await asyncio.sleep(self.delay)
        return await super().renew_rate_lease(key, lease, **counted)


async def test_turns_waiting_on_a_slow_store_get_exactly_the_limit() -> None:
    store = SlowStore(0.02)
    limit = StoreRateLimit(store, "50/minute")  # blocks of up to 5: many renewals for 70 turns at once
    outcomes = await asyncio.gather(*(limit.check("alice") for _ in range(70)), return_exceptions=True)
    assert sum(outcome is None for outcome in outcomes) == 50
    refused = [outcome for outcome in outcomes if outcome is not None]
    assert all(isinstance(outcome, RateLimitedError) for outcome in refused)
    assert all(55 <= (outcome.retry_after or 0) <= 60 for outcome in refused if isinstance(outcome, RateLimitedError))


async def test_a_store_slower_than_a_lease_is_unavailable_not_a_refusal() -> None:
    limit = StoreRateLimit(SlowStore(0.2), "100/second")  # leases of a tenth of a second
    with pytest.raises(StoreUnavailableError):
        await limit.check("alice")


async def test_busy_turns_renew_ahead_and_rarely_ask_the_store() -> None:
    store = SlowStore(0.0)
    limit = StoreRateLimit(store, "100000/minute")
    for _ in range(20):
        await asyncio.gather(*(limit.check("alice") for _ in range(30)))
    assert store.renewals <= 600 / 20
