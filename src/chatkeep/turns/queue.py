"""Per-chat turn taking: one turn at a time on a chat, in arrival order, with bounded waiting.

Each chat that has a turn running gets a line (an `asyncio.Lock`, whose waiters are woken in
FIFO order); chats never share a line, so they never wait for each other. A line exists only
while someone holds or waits on it, so idle chats cost nothing.

Taking a turn has two steps so that "too busy" can be answered before any work starts (and
before a streamed response has begun): `reserve` takes a slot in line at once or raises
ChatBusyError; entering the slot waits for the turn.
"""

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from chatkeep.errors import ChatBusyError, OverloadedError
from chatkeep.metrics import Metrics

BUSY_RETRY_AFTER_SECONDS = 1.0
OVERLOADED_RETRY_AFTER_SECONDS = 1.0


@dataclass(slots=True)
class _ChatLine:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    members: int = 0  # the holder plus the waiters


class TurnQueue:
    def __init__(self, metrics: Metrics, *, max_waiting: int, max_in_flight: int) -> None:
        self._metrics = metrics
        self._max_waiting = max_waiting
        self._max_in_flight = max_in_flight
        self._lines: dict[str, _ChatLine] = {}
        self.in_flight = 0  # turns running or waiting, over every chat

    def reserve(self, chat_id: str) -> "TurnSlot":
        """A slot in the chat's line, to enter with `async with` (exactly once).

        Raises OverloadedError when `max_in_flight` turns are already running or waiting in this
        process, and ChatBusyError when `max_waiting` turns already wait behind the chat's running one.
        """
        self.check_capacity()
        line = self._lines.get(chat_id)
        if line is None:
            line = self._lines[chat_id] = _ChatLine()
        elif line.members > self._max_waiting:
            raise ChatBusyError(
                f"{line.members - 1} turns already wait on chat {chat_id!r}; retry later",
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        line.members += 1
        self.in_flight += 1
        self._metrics.turns_in_flight(1)
        return TurnSlot(self, chat_id, line)

    def check_capacity(self) -> None:
        """Raise OverloadedError when `max_in_flight` turns are already running or waiting here.

        Cheap, so a full server can refuse before doing any work for the request.
        """
        if self.in_flight >= self._max_in_flight:
            raise OverloadedError(
                f"{self.in_flight} turns are in flight on this server; retry later",
                retry_after=OVERLOADED_RETRY_AFTER_SECONDS,
            )

    def waiting(self, chat_id: str) -> int:
        """How many turns wait (not counting the one running) on the chat."""
        line = self._lines.get(chat_id)
        return max(0, line.members - 1) if line else 0

    def _leave(self, chat_id: str, line: _ChatLine) -> None:
        self.in_flight -= 1
        self._metrics.turns_in_flight(-1)
        line.members -= 1
        if line.members == 0:
            del self._lines[chat_id]


class TurnSlot:
    """A reserved slot in one chat's line; holds the turn inside `async with`."""

    __slots__ = ("_chat_id", "_line", "_queue")

    def __init__(self, queue: TurnQueue, chat_id: str, line: _ChatLine) -> None:
        self._queue, self._chat_id, self._line = queue, chat_id, line

    async def __aenter__(self) -> None:
        try:
            await self._line.lock.acquire()
        except BaseException:
            self._queue._leave(self._chat_id, self._line)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._line.lock.release()
        self._queue._leave(self._chat_id, self._line)
