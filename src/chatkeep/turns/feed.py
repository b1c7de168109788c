"""A feed: events one task writes, followed live by any number of readers.

Streamed turns (`TurnLog`) and streamed responses of the Responses API both write to one, so
the task that runs a turn never waits on a client, and a client that leaves loses nothing.
"""

import asyncio
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

T = TypeVar("T")

KEEPALIVE_SECONDS = 15.0


class Feed(Generic[T]):
    def __init__(self) -> None:
        self.events: list[T] = []
        self.done = False  # the last event is written: nothing more comes
        self._waiters: list[asyncio.Future[bool]] = []

    def push(self, event: T, *, last: bool = False) -> None:
        """Write `event` (ignored once the feed is done) and wake the readers."""
        if self.done:
            return
        self.events.append(event)
        self.done = last
        self._wake()

    def close(self) -> None:
        """End the feed without another event."""
        self.done = True
        self._wake()

    async def follow_from(self, index: int, *, keepalive: float | None = None) -> AsyncGenerator[list[T], None]:
        """Batches of the events from `index` on, live until the feed is done.

        An empty batch means nothing was yielded for `keepalive` seconds (KEEPALIVE_SECONDS by
        default): time for a keep-alive. One timer per follower, moved on only when it fires,
        keeps that cheap: arming a timeout for every wait would cost more than the chunk itself.
        """
        loop = asyncio.get_running_loop()
        period = KEEPALIVE_SECONDS if keepalive is None else keepalive
        quiet_since = loop.time()
        waiter: asyncio.Future[bool] | None = None
        timer: asyncio.TimerHandle

        def alarm() -> None:
            nonlocal timer
            now, due = loop.time(), quiet_since + period
            if now >= due:
                if waiter is not None and not waiter.done():
                    waiter.set_result(True)  # idle: the follower yields a keep-alive
                due = now + period
            timer = loop.call_at(due, alarm)

        timer = loop.call_at(quiet_since + period, alarm)
        try:
            while True:
                if index < len(self.events):
                    batch = self.events[index:]
                    index += len(batch)
                    yield batch
                    quiet_since = loop.time()
                elif self.done:
                    return
                else:
                    waiter = loop.create_future()
                    self._waiters.append(waiter)
                    if await waiter:
                        yield []
                        quiet_since = loop.time()
        finally:
            timer.cancel()

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)
