"""Per-owner rate limits on message posts (`CHATKEEP_RATE_LIMIT`, e.g. `120/minute`).

A moving window from the `limits` library, counted in this process's memory: with several
server processes each one enforces the limit on its own share of the traffic.
"""

import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from chatkeep.errors import RateLimitedError


def parse_rate_limit(text: str) -> RateLimitItem:
    """`120/minute`, `10/second`, `1000 per hour`...; raises ValueError when unreadable."""
    return parse(text)


class RateLimit:
    def __init__(self, text: str) -> None:
        self._item = parse_rate_limit(text)
        self._text = text
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, owner: str) -> None:
        """Count one message post by `owner`. Raises RateLimitedError past the limit."""
        if await self._limiter.hit(self._item, owner):
            return
        stats = await self._limiter.get_window_stats(self._item, owner)
        raise RateLimitedError(
            f"over the rate limit of {self._text} message posts", retry_after=max(1.0, stats.reset_time - time.time())
        )
