"""Per-owner rate limits on turns (`CHATKEEP_RATE_LIMIT`, e.g. `120/minute`), taken at admission.

A moving window: a turn is allowed while fewer than the limit were allowed in the window before
it. The count is shared by every process that serves the same chats: it lives in the store
(`ChatStore.take_rate_slot`: this process's memory for the memory store, the database for
SQLite and PostgreSQL), or, when `CHATKEEP_REDIS_URL` is set, in Redis through the `limits`
library's own storage, which also suits several deployments sharing one limit.
"""

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from chatkeep.errors import RateLimitedError, StoreUnavailableError
from chatkeep.store import ChatStore

KEY_PREFIX = "chatkeep:posts:"
RETRY_SECONDS = 5.0
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


class StoreRateLimit:
    def __init__(self, store: ChatStore, text: str) -> None:
        item = parse_rate_limit(text)
        self._store = store
        self._text = text
        self._limit = item.amount
        self._window = float(item.get_expiry())

    async def check(self, owner: str) -> None:
        wait = await self._store.take_rate_slot(KEY_PREFIX + owner, limit=self._limit, window_seconds=self._window)
        if wait is not None:
            raise _limited(self._text, wait)

    async def check_ready(self) -> None:
        return None  # the store's own readiness covers it


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
        yield StoreRateLimit(store, text)
    else:
        storage = RedisStorage("async+" + redis_url, implementation="redispy", wrap_exceptions=True)
        yield RedisRateLimit(storage, text)


def _unreachable(error: StorageError) -> StoreUnavailableError:
    log.warning("counting a rate limit in Redis failed: %s", error.storage_error)
    return StoreUnavailableError("Redis, where rate limits are counted, does not answer", retry_after=RETRY_SECONDS)


def _limited(text: str, wait: float) -> RateLimitedError:
    return RateLimitedError(f"over the rate limit of {text} turns", retry_after=max(1.0, wait))
