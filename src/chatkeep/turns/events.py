"""A turn's events: written by the one task that runs the turn, followed live by any number of readers.

The task never waits on a reader and a reader that leaves loses nothing, so a client that
disconnects from a streamed turn costs it nothing (the turn goes on and is stored) and one that
reconnects follows the same events from after the last one it saw. The native API writes these
events as they are; OpenAI's API translates them into its own at its edge.

A tool call the model writes streams too, as `call_delta` events: the piece of its arguments
that came, under the id its stored item will have. The native API's stream leaves them out (its
final message holds the calls); OpenAI's shows them as `response.function_call_arguments.delta`.

Event ids: the user message is "0", deltas (of text or calls) count up from "1", the final event
(`assistant_message` or `error`) is "end". A reader that saw event k gets the deltas after k
that are known, then always the final event; only one that saw "end" gets nothing more.
"""

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from chatkeep.domain import Message, PageRequest, Role, new_id
from chatkeep.errors import Failure, InvalidCursorError, MessageNotFoundError, ReplyNotFoundError
from chatkeep.llm.base import Reply, ToolCallDelta
from chatkeep.store import ChatStore

END_ID = "end"
KEEPALIVE_SECONDS = 15.0

EventKind = Literal["user_message", "delta", "call_delta", "assistant_message", "error"]


def event_number(event_id: str | None) -> int | None:
    """The number of a numbered event id ("0", "1", ...); None for the end, or for anything else a
    client may send as Last-Event-ID (ASCII digits only: `"²".isdigit()` is true, `int("²")` fails)."""
    if event_id is None or not (event_id.isascii() and event_id.isdigit()):
        return None
    return int(event_id)


@dataclass(slots=True, frozen=True)
class TurnOutcome:
    """What a turn stored: the messages it added, then its reply's, and the reply itself."""

    inputs: list[Message]  # stored before the reply (or, for a retried key, the stored question)
    outputs: list[Message]  # the reply: a message, function calls, or both; none when no reply was asked
    reply: Reply | None


@dataclass(slots=True)  # not frozen: a streamed reply makes one per delta, and frozen init is slow
class TurnEvent:
    id: str
    kind: EventKind
    message: Message | None = None  # the user message, or the reply's first stored message
    text: str = ""  # a delta's
    call: ToolCallDelta | None = None  # a call_delta's piece of a tool call
    item_id: str = ""  # a call_delta's: the id the call is stored under
    error: Failure | None = None
    outcome: TurnOutcome | None = None  # the whole stored reply, on the final event of a turn run here

    @property
    def final(self) -> bool:
        return self.id == END_ID


class TurnEvents:
    """One turn's events, in order; `follow` reads them live."""

    __slots__ = ("_waiters", "call_ids", "done", "events")

    def __init__(self) -> None:
        self.events: list[TurnEvent] = []
        self.call_ids: dict[int, str] = {}  # the stored id of each tool call streamed, by its index in the reply
        self.done = False  # the final event is written: nothing more comes
        self._waiters: list[asyncio.Future[bool]] = []

    @classmethod
    def ended(cls, question: Message, answer: Message) -> "TurnEvents":
        """The events of a turn that ended before (a replayed request): its question and answer."""
        events = cls()
        events.user_message(question)
        events.push(TurnEvent(END_ID, "assistant_message", message=answer))
        return events

    def user_message(self, message: Message) -> None:
        self.push(TurnEvent("0", "user_message", message=message))

    def delta(self, text: str) -> None:
        self.push(TurnEvent(str(len(self.events)), "delta", text=text))

    def call_delta(self, piece: ToolCallDelta) -> None:
        """A piece of a tool call; its first names the id the call will be stored under (OpenAI's `fc_`)."""
        item_id = self.call_ids.setdefault(piece.index, new_id("fc"))
        self.push(TurnEvent(str(len(self.events)), "call_delta", call=piece, item_id=item_id))

    def answered(self, outcome: TurnOutcome) -> None:
        self.push(TurnEvent(END_ID, "assistant_message", message=outcome.outputs[0], outcome=outcome))

    def failed(self, error: Failure) -> None:
        self.push(TurnEvent(END_ID, "error", error=error))

    def push(self, event: TurnEvent) -> None:
        """Append `event` (numbered ones in order, the final one last) and wake the readers; nothing after the end."""
        if self.done:
            return
        self.events.append(event)
        self.done = event.final
        self._wake()

    @property
    def last_number(self) -> int:
        """The id of the last numbered event (user message or delta), -1 when there is none."""
        return len(self.events) - self.done - 1

    def follow(
        self, last_event_id: str | None = None, *, keepalive: float | None = None
    ) -> AsyncGenerator[list[TurnEvent], None]:
        """Batches of the events after `last_event_id`, live until the final one.

        An empty batch means nothing was yielded for `keepalive` seconds (KEEPALIVE_SECONDS by
        default): time for a keep-alive. One timer per reader, moved on only when it fires,
        keeps that cheap: arming a timeout for every wait would cost more than the delta itself.
        """
        return self._follow_from(self._start(last_event_id), KEEPALIVE_SECONDS if keepalive is None else keepalive)

    def _start(self, last_event_id: str | None) -> int:
        """The index of the first event a reader that saw `last_event_id` has not seen."""
        if last_event_id == END_ID:
            return len(self.events)
        number = event_number(last_event_id)
        if number is None:
            return 0
        return max(0, min(number + 1, len(self.events) - self.done))

    async def _follow_from(self, index: int, period: float) -> AsyncGenerator[list[TurnEvent], None]:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        waiter: asyncio.Future[bool] | None = None
        timer: asyncio.TimerHandle

        def alarm() -> None:
            nonlocal timer
            now, due = loop.time(), quiet_since + period
            if now >= due:
                if waiter is not None and not waiter.done():
                    waiter.set_result(True)  # idle: the reader yields a keep-alive
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


async def stored_end(store: ChatStore, owner: str, chat_id: str, question_id: str) -> TurnEvent:
    """How the store says the turn answering `question_id` ended: its reply, or an error when none
    is stored. Raises MessageNotFoundError when the chat has no such message."""
    try:
        following = await store.list_messages(owner, chat_id, PageRequest(limit=1, after=question_id))
    except InvalidCursorError:
        raise MessageNotFoundError(f"no message {question_id!r} in chat {chat_id!r}") from None
    reply = following.data[0] if following.data else None
    if reply is not None and reply.role is Role.ASSISTANT:
        return TurnEvent(END_ID, "assistant_message", message=reply)
    missing = ReplyNotFoundError(f"no reply to message {question_id!r} is stored or being written")
    return TurnEvent(END_ID, "error", error=missing)
