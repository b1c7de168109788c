"""Per-owner rate limits on turns (`CHATKEEP_RATE_LIMIT`, e.g. `120/minute`), taken at admission.

A moving window: a turn is allowed while fewer than the limit were allowed in the window before
it. The count is shared by every process that serves the same chats: it lives in the store
(`ChatStore.renew_rate_lease`: this process's memory for the memory store, the database for
SQLite and PostgreSQL), or, when `CHATKEEP_REDIS_URL` is set, in Redis through the `limits`
library's own storage (a round trip per turn), which also suits several deployments sharing one limit.

In the store, a process does not count each turn there: it leases slots in blocks. Each process
holds at most one lease per owner, renewed in one store call that settles it (its spent slots
kept as taken when they were spent, its unspent ones given back) and grants it what it still
holds plus a new block, as many as fit under the limit; turns spend the lease's slots in this
process, with no store call, for at most `lease_seconds` (a tenth of the window, at most one
second). A block is four times what was spent since the last renewal, at least 1 and at most a
tenth of the limit (and 64), and once half a block is spent or half its time gone the lease is
renewed in the background, so a busy owner's turns reach the store about once in 32 and never
wait on it; a limit under 20 turns a window takes blocks of one, renewed by the turn that needs
it, a store call per turn as before.

The bound: never more than the limit in any window, however many processes share the count, for
no slot is ever spent uncounted. The store counts a lease's whole grant as taken at the lease's
end, which comes after every slot spent from it, so each of them is counted for at least a whole
window after it was spent even if its process dies without settling; a settled slot counts from
when it was spent. While a renewal is under way, the old grant covers the slots spent meanwhile
until the new one, which always has room for the slots held, replaces it. (A lease's end is
measured on the process's monotonic clock from before the store call, so a clock that runs at the
store's pace is all it assumes.) The price is the other way: an owner may be refused while other
processes' leases hold unspent slots, fewer than two blocks each (P processes serving the owner:
at most 2 (P - 1) blocks), until their leases end, within `lease_seconds`, and they give back what
they left; a process that dies holds its grant for a window. One process alone is exact both ways:
its own lease is settled before the count is read. A refused turn spares the store too: the
refusal stands in this process until a slot frees or a lease time passes, whichever comes first.
"""

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from chatkeep.errors import RateLimitedError, StoreUnavailableError
from chatkeep.store import ChatStore

KEY_PREFIX = "chatkeep:posts:"
RETRY_SECONDS = 5.0
MAX_LEASE_SECONDS = 1.0
MAX_LEASE_SLOTS = 64
LEASE_SHARE = 10  # a lease takes at most this share of the limit, and of the window
MAX_TURNS = 2**31 - 1  # the SQL stores count turns in 32-bit integers
EXAMPLE = "120/minute or 1000 per 2 hours"
# One rate: turns, then `/` or `per`, then the window: an optional count of units and a unit.
_RATE = re.compile(r"\s*([0-9]+)\s*(?:/|per)\s*([0-9]+)?\s*([a-z]+)\s*", re.IGNORECASE)

log = logging.getLogger(__name__)


def parse_rate_limit(text: str) -> RateLimitItem:
    """`120/minute`, `10/second`, `1000 per 2 hours`...: one rate of at least one turn in a window
    of at least one unit (second, minute, hour, day, month or year). Raises ValueError, saying
    why, for anything else: a rate that admits no turn would refuse every turn, and `limits`
    itself reads a window of 0 units as 1 and several rates (`1/second;5/minute`) as their first.
    """
    match = _RATE.fullmatch(text)
    if match is None:
        if re.search(r"[,;|]", text):
            raise ValueError(f"expected one rate such as {EXAMPLE}, not several: {text!r}")
        raise ValueError(f"expected a rate such as {EXAMPLE}, not {text!r}")
    turns, units, unit = match.groups()
    if int(turns) < 1:
        raise ValueError(f"{text!r} admits no turn: a rate allows at least 1 turn (unset it for no limit)")
    if int(turns) > MAX_TURNS:
        raise ValueError(f"{text!r} allows too many turns: at most {MAX_TURNS} (unset it for no limit)")
    if units is not None and int(units) < 1:
        raise ValueError(
            f"{text!r} has a window of no time: a window of at least 1 {unit.lower().removesuffix('s')} is needed"
        )
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"expected a rate such as {EXAMPLE}; {unit!r} is no unit of time") from None


class RateLimit(Protocol):
    async def check(self, owner: str) -> None:
        """Count one turn by `owner`. Raises RateLimitedError past the limit, or
        StoreUnavailableError when the count cannot be kept."""
        ...

    async def check_ready(self) -> None:
        """Raise StoreUnavailableError unless the count can be kept."""
        ...


@dataclass
class _Lease:
    """This process's slots of one owner: granted and not yet spent, usable until `ends`
    (monotonic); how many the last renewal granted; the times slots were spent since it was
    sent; the renewal under way; and, after a refusal, when to ask the store again and when a
    slot frees."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    slots: int = 0
    ends: float = 0.0
    block: int = 0
    spent: list[float] = field(default_factory=list)
    renewal: "asyncio.Task[None] | None" = None
    late: bool = False  # the last renewal's slots came back when its lease had ended
    refused_until: float = 0.0
    frees_at: float = 0.0

    def spend(self, now: float) -> bool:
        if self.slots == 0 or now >= self.ends:
            return False
        self.slots -= 1
        self.spent.append(now)
        return True

    def running_low(self, now: float, lease_seconds: float) -> bool:
        """Half its block spent or half its time gone: time to renew ahead of need (blocks of
        one are renewed on demand, so that a small limit is never held idle)."""
        return self.block > 1 and (2 * self.slots <= self.block or now >= self.ends - lease_seconds / 2)

    def idle(self, now: float) -> bool:
        return now >= max(self.ends, self.refused_until) and self.renewal is None


class StoreRateLimit:
    """The limit counted in the store, through leases of slots (see the module)."""

    def __init__(self, store: ChatStore, text: str) -> None:
        item = parse_rate_limit(text)
        self._store = store
        self._text = text
        self._limit = item.amount
        self._window = float(item.get_expiry())
        self.lease_seconds = min(MAX_LEASE_SECONDS, self._window / LEASE_SHARE)
        self._largest = max(1, min(MAX_LEASE_SLOTS, self._limit // LEASE_SHARE))
        self._leases: dict[str, _Lease] = {}

    async def check(self, owner: str) -> None:
        key = KEY_PREFIX + owner
        while True:
            lease = self._leases.setdefault(key, _Lease())
            now = time.monotonic()
            if lease.spend(now):
                if lease.renewal is None and lease.running_low(now, self.lease_seconds):
                    lease.renewal = self._renewing(key, lease, ahead=True)
                return
            if now < lease.refused_until:
                raise _limited(self._text, lease.frees_at - now)
            if lease.renewal is None:
                lease.renewal = self._renewing(key, lease, ahead=False)
            await asyncio.shield(lease.renewal)  # shared by the turns waiting, whichever is cancelled
            if lease.late:  # else its slots went to turns waiting before this one: ask again
                raise StoreUnavailableError(
                    f"the store took longer than a lease of rate slots ({self.lease_seconds:g} s) to answer",
                    retry_after=RETRY_SECONDS,
                )

    async def check_ready(self) -> None:
        return None  # the store's own readiness covers it

    async def settle_idle(self, *, everything: bool = False) -> None:
        """Give back what the leases that ended (or, with `everything`, all) left unspent, and
        forget them, so quiet owners hold no slots and take no memory here."""
        now = time.monotonic()
        idle = {key: lease for key, lease in self._leases.items() if everything or lease.idle(now)}
        for key, lease in idle.items():
            del self._leases[key]
            lease.ends = 0.0  # nothing more is spent from it
            if lease.renewal is not None:  # at the end, one may be under way: settle after it
                with contextlib.suppress(Exception):
                    await lease.renewal
            if lease.spent or lease.slots:
                await self._renew(key, lease, want=0)

    def _renewing(self, key: str, lease: _Lease, *, ahead: bool) -> "asyncio.Task[None]":
        """A renewal of `lease` keeping what it holds and adding a block: four times what was spent
        since the last (at least 1, at most the largest block), so a busy owner's blocks grow."""
        block = max(1, min(self._largest, 4 * len(lease.spent)))
        task = asyncio.create_task(self._renewed(key, lease, lease.slots + block))
        if ahead:  # nobody awaits it: its failure is only logged, and the next turn's need renews again
            task.add_done_callback(_log_failure)
        return task

    async def _renewed(self, key: str, lease: _Lease, want: int) -> None:
        try:
            await self._renew(key, lease, want=want)
        finally:
            lease.renewal = None

    async def _renew(self, key: str, lease: _Lease, *, want: int) -> None:
        """Settle `lease` and take up to `want` slots, the ones it holds among them. Turns may spend
        its slots meanwhile: they are covered by its old block until the store answers, by the new one
        after, which always has room for the slots held (they were counted already)."""
        started, held, spent = time.monotonic(), lease.slots, lease.spent
        lease.spent = []
        try:
            granted = await self._store.renew_rate_lease(
                key,
                lease.id,
                spent=[started - moment for moment in spent],
                want=want,
                limit=self._limit,
                window_seconds=self._window,
                lease_seconds=self.lease_seconds,
            )
        except BaseException:
            lease.spent = spent + lease.spent  # nothing was settled: send them again next time
            raise
        spent_meanwhile = held - lease.slots
        lease.slots, lease.block = max(0, granted.slots - spent_meanwhile), granted.slots
        lease.ends = started + self.lease_seconds
        lease.late = granted.slots > 0 and time.monotonic() >= lease.ends
        if granted.wait is not None:
            lease.refused_until = started + min(granted.wait, self.lease_seconds)
            lease.frees_at = started + granted.wait


def _log_failure(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("renewing a rate-limit lease ahead of need failed: %s", error)


class RedisRateLimit:
    def __init__(self, storage: RedisStorage, text: str) -> None:
        self._storage = storage
        self._item = parse_rate_limit(text)
        self._text = text
        self._limiter = MovingWindowRateLimiter(storage)

    async def check(self, owner: str) -> None:
        try:
            if await self._limiter.hit(self._item, KEY_PREFIX + owner):
                return
            stats = await self._limiter.get_window_stats(self._item, KEY_PREFIX + owner)
        except StorageError as error:
            raise _unreachable(error) from error
        raise _limited(self._text, stats.reset_time - time.time())

    async def check_ready(self) -> None:
        if not await self._storage.check():
            raise StoreUnavailableError("Redis, where rate limits are counted, does not answer")


def open_rate_limit(
    text: str | None, *, store: ChatStore, redis_url: str | None
) -> AbstractAsyncContextManager[RateLimit | None]:
    """The configured limit for the block (None when there is none), counted where it is shared."""
    return _opened(text, store, redis_url)


@asynccontextmanager
async def _opened(text: str | None, store: ChatStore, redis_url: str | None) -> AsyncIterator[RateLimit | None]:
    if text is None:
        yield None
    elif redis_url is None:
        limit = StoreRateLimit(store, text)
        sweeper = asyncio.create_task(_settle_leases(limit))
        try:
            yield limit
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await _settled(limit, everything=True)
    else:
        storage = RedisStorage("async+" + redis_url, implementation="redispy", wrap_exceptions=True)
        yield RedisRateLimit(storage, text)


async def _settle_leases(limit: StoreRateLimit) -> None:
    """Give back, a lease time after they end, the slots leases left unspent (see the module)."""
    while True:
        await asyncio.sleep(limit.lease_seconds)
        await _settled(limit)


async def _settled(limit: StoreRateLimit, *, everything: bool = False) -> None:
    try:
        await limit.settle_idle(everything=everything)
    except StoreUnavailableError as error:  # the store still counts the leases' slots, in the limit's favour
        log.warning("giving back unspent rate-limit slots failed: %s", error)
    except Exception:  # the sweeper must outlive one bad settlement
        log.exception("giving back unspent rate-limit slots failed")


def _unreachable(error: StorageError) -> StoreUnavailableError:
    log.warning("counting a rate limit in Redis failed: %s", error.storage_error)
    return StoreUnavailableError("Redis, where rate limits are counted, does not answer", retry_after=RETRY_SECONDS)


def _limited(text: str, wait: float) -> RateLimitedError:
    return RateLimitedError(f"over the rate limit of {text} turns", retry_after=max(1.0, wait))
