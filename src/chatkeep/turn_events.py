"""The events of streamed turns, kept so that live readers and reconnecting clients can follow.

A streamed turn runs in its own task and writes its events to a `TurnLog`; the HTTP stream
only reads it. A client that disconnects therefore loses nothing (the turn goes on and is
stored), and one that reconnects reads the same log from the event after the last it saw.
Finished logs stay for a while (bounded in time and number) so late readers still get the
final event; after that the store tells how the turn ended.

Event ids: the user message is "0", deltas count up from "1", the final event is "end".
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from chatkeep.domain import Message
from chatkeep.errors import ChatkeepError

END_ID = "end"
KEEPALIVE_SECONDS = 15.0
KEEP_FINISHED_SECONDS = 300.0
KEEP_FINISHED_COUNT = 1000

EventKind = Literal["user_message", "delta", "assistant_message", "error"]


@dataclass(slots=True)  # not frozen: a streamed reply makes one per delta, and frozen init is slow
class TurnEvent:
    id: str
    kind: EventKind
    message: Message | None = None
    text: str = ""
    error: ChatkeepError | None = None


class TurnLog:
    def __init__(self, chat_id: str) -> None:
        self.chat_id = chat_id
        self.user_message_id: str | None = None
        self.events: list[TurnEvent] = []
        self.done = False
        self._waiters: list[asyncio.Future[None]] = []

    def user_message(self, message: Message) -> None:
        self.user_message_id = message.id
        self._add(TurnEvent("0", "user_message", message=message))

    def delta(self, text: str) -> None:
        self._add(TurnEvent(str(len(self.events)), "delta", text=text))

    def assistant_message(self, message: Message) -> None:
        self._add(TurnEvent(END_ID, "assistant_message", message=message))
        self._finish()

    def fail(self, error: ChatkeepError) -> None:
        self._add(TurnEvent(END_ID, "error", error=error))
        self._finish()

    async def follow(self, last_event_id: str | None = None) -> AsyncIterator[list[TurnEvent]]:
        """Batches of the events after `last_event_id`, live until the final one.

        An empty batch means nothing happened for KEEPALIVE_SECONDS: time for a keep-alive.
        """
        index = _resume_index(last_event_id, len(self.events))
        while True:
            if index < len(self.events):
                batch = self.events[index:]
                index += len(batch)
                yield batch
            elif self.done:
                return
            else:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        await waiter
                except TimeoutError:
                    yield []

    def _add(self, event: TurnEvent) -> None:
        if self.done:
            return
        self.events.append(event)
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _resume_index(last_event_id: str | None, count: int) -> int:
    if last_event_id is None:
        return 0
    if last_event_id == END_ID:
        return count  # the client has seen the end; an ended log then yields nothing
    return int(last_event_id) + 1 if last_event_id.isdigit() else 0


class TurnLogs:
    """Logs of streamed turns by user message id: running ones, and recently finished ones."""

    def __init__(self) -> None:
        self._running: dict[str, TurnLog] = {}
        self._finished: dict[str, TurnLog] = {}
        self._finish_times: deque[tuple[float, str]] = deque()  # oldest first

    def running(self, user_message_id: str, log: TurnLog) -> None:
        self._running[user_message_id] = log

    def finished(self, user_message_id: str) -> None:
        log = self._running.pop(user_message_id, None)
        if log is not None:
            self._finished[user_message_id] = log
            self._finish_times.append((asyncio.get_running_loop().time(), user_message_id))
            self._forget_old()

    def get(self, user_message_id: str) -> TurnLog | None:
        self._forget_old()
        return self._running.get(user_message_id) or self._finished.get(user_message_id)

    def _forget_old(self) -> None:
        horizon = asyncio.get_running_loop().time() - KEEP_FINISHED_SECONDS
        times = self._finish_times
        while times and (len(times) > KEEP_FINISHED_COUNT or times[0][0] < horizon):
            del self._finished[times.popleft()[1]]
