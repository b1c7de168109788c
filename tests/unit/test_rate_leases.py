"""A process's leases of rate slots (rate_limit.py) give back what they leave unspent: when the
lease ends, and when the process stops; the count in the store then holds only spent slots."""

import asyncio

from chatkeep.rate_limit import KEY_PREFIX, StoreRateLimit, open_rate_limit
from chatkeep.store import MemoryStore

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
