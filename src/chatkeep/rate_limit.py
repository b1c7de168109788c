"""Per-owner rate limits on turns (`CHATKEEP_RATE_LIMIT`, e.g. `120/minute`), taken at admission.

A moving window: a turn is allowed while fewer than the limit were allowed in the window before
it. The count is shared by every process that serves the same chats: it lives in the store
(`ChatStore.take_rate_slot`: this process's memory for the memory store, the database for
SQLite and PostgreSQL), or, when `CHATKEEP_REDIS_URL` is set, in Redis through the `limits`
library's own storage, which also suits several deployments sharing one limit.
"""

import logging
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

log = logging.getLogger(__name__)


def parse_rate_limit(text: str) -> RateLimitItem:
    """`120/minute`, `10/second`, `1000 per hour`...; raises ValueError when unreadable."""
    return parse(text)


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
