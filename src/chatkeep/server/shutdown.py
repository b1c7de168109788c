"""Turns still streaming when the server is told to stop end with their final event, not a dropped connection.

On SIGTERM (or Ctrl+C) the server stops accepting, gives the requests in flight `shutdown_grace`
seconds, then cancels what is left and drops its connections. A streamed reply can last longer
than any grace, so shortly before the grace is over (`WIND_DOWN_SECONDS` before, or halfway
through a short one) the turns still running are stopped as a client's stop would: what was
written is stored, marked incomplete (`shutdown`), and each stream gets that as its final event
while its client is still connected.

The server's own signal handlers stay in charge of shutting down; `winding_down_on_exit` only
adds to them, so this works under `chatkeep serve`, its workers, or any ASGI server that stops
on these signals. Signals reach only the main thread: elsewhere (an app served from a thread)
nothing is added.
"""

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WIND_DOWN_SECONDS = 5.0


def wind_down_after(grace: float) -> float:
    """Seconds after the signal to stop the turns still running: enough before the grace ends for
    them to store their text and send their final event."""
    return max(0.0, grace - min(WIND_DOWN_SECONDS, grace / 2))


@contextmanager
def winding_down_on_exit(wind_down: Callable[[], Awaitable[None]], grace: float) -> Iterator[None]:
    """Run `wind_down` `wind_down_after(grace)` seconds after the first exit signal, in the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []

    async def later() -> None:
        await asyncio.sleep(wind_down_after(grace))
        await wind_down()

    def start() -> None:
        if not started:
            started.append(loop.create_task(later(), name="chatkeep-wind-down"))

    previous: dict[int, Any] = {}

    def handler(number: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(start)
        _pass_on(number, frame, previous[number])

    for exit_signal in EXIT_SIGNALS:
        previous[exit_signal] = signal.signal(exit_signal, handler)
    try:
        yield
    finally:
        for exit_signal in EXIT_SIGNALS:
            if signal.getsignal(exit_signal) is handler:
                signal.signal(exit_signal, previous[exit_signal])
        for task in started:
            task.cancel()


def _pass_on(number: int, frame: FrameType | None, before: Any) -> None:
    """Let the handler that was there before ours (the server's) do what it does with the signal."""
    if callable(before):
        before(number, frame)
    elif before == signal.SIG_DFL:
        signal.signal(number, signal.SIG_DFL)
        signal.raise_signal(number)
