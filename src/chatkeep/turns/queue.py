"""This process's queue of turns per chat: one turn at a time on a chat, in arrival order, with bounded waiting.

Each chat that has a turn running gets a queue (an `asyncio.Lock`, whose waiters are woken in
FIFO order); chats never share one, so they never wait for each other. A queue exists only
while someone holds or waits on it, so idle chats cost nothing. Other processes sharing the
store are ordered by the store's turn tickets; this queue keeps one process's turns from
crowding them, and bounds how many may wait.

Taking a turn has two steps so that "too busy" can be answered before any work starts (and
before a streamed response has begun): `join` takes a place in the queue at once or raises
ChatBusyError; entering it waits for the turn.

One owner may hold at most its share of the turns in flight (`max_per_owner`), so an owner
that starts many long turns cannot take every place and starve the others.
"""

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from chatkeep.errors import ChatBusyError, OverloadedError, OwnerBusyError
from chatkeep.metrics import Metrics

BUSY_RETRY_AFTER_SECONDS = 1.0
OVERLOADED_RETRY_AFTER_SECONDS = 1.0


@dataclass(slots=True)
class _ChatQueue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    members: int = 0  # the holder plus the waiters


class TurnQueue:
    def __init__(
        self, metrics: Metrics, *, max_waiting: int, max_in_flight: int, max_per_owner: int | None = None
    ) -> None:
        self._metrics = metrics
        self._max_waiting = max_waiting
        self._max_in_flight = max_in_flight
        self._max_per_owner = max_per_owner  # None: no share (a single owner)
        self._queues: dict[str, _ChatQueue] = {}
        self._owners: dict[str, int] = {}  # turns in flight by owner, for those with any
        self.in_flight = 0  # turns running or waiting, over every chat

    def join(self, chat_id: str, owner: str) -> "QueuedTurn":
        """A place in the chat's queue, to enter with `async with` (exactly once).

        Raises OverloadedError when `max_in_flight` turns are already running or waiting in this
        process, OwnerBusyError when `owner` already has `max_per_owner` of them, and
        ChatBusyError when `max_waiting` turns already wait behind the chat's running one.
        """
        self.check_capacity()
        held = self._owners.get(owner, 0)
        if self._max_per_owner is not None and held >= self._max_per_owner:
            raise OwnerBusyError(
                f"{held} of your turns are in flight on this server, your share of it; retry later",
                retry_after=OVERLOADED_RETRY_AFTER_SECONDS,
            )
        queue = self._queues.get(chat_id)
        if queue is None:
            queue = self._queues[chat_id] = _ChatQueue()
        elif queue.members > self._max_waiting:
            raise ChatBusyError(
                f"{queue.members - 1} turns already wait on chat {chat_id!r}; retry later",
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        queue.members += 1
        self._owners[owner] = held + 1
        self.in_flight += 1
        self._metrics.turns_in_flight(1)
        return QueuedTurn(self, chat_id, owner, queue)

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
        queue = self._queues.get(chat_id)
        return max(0, queue.members - 1) if queue else 0

    def _leave(self, chat_id: str, owner: str, queue: _ChatQueue) -> None:
        self.in_flight -= 1
        self._metrics.turns_in_flight(-1)
        left = self._owners[owner] - 1
        if left:
            self._owners[owner] = left
        else:
            del self._owners[owner]
        queue.members -= 1
        if queue.members == 0:
            del self._queues[chat_id]


class QueuedTurn:
    """A turn's place in its chat's queue: `async with` waits for its turn, holds it inside, and leaves."""

    __slots__ = ("_chat_id", "_owner", "_queue", "_turns")

    def __init__(self, turns: TurnQueue, chat_id: str, owner: str, queue: _ChatQueue) -> None:
        self._turns, self._chat_id, self._owner, self._queue = turns, chat_id, owner, queue

    async def __aenter__(self) -> None:
        try:
            await self._queue.lock.acquire()
        except BaseException:
            self._turns._leave(self._chat_id, self._owner, self._queue)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._queue.lock.release()
        self._turns._leave(self._chat_id, self._owner, self._queue)
