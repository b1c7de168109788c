"""Streamed turns: the one owner of their events, live, ended, or running in another process.

A streamed turn runs in a task of its own and writes its events to a `TurnLog`; HTTP streams
only read one, so a client that disconnects loses nothing (the turn goes on and is stored) and
one that reconnects follows the same log from after the last event it saw. `TurnStreams` keeps
this process's logs (running ones, and finished ones for a while, bounded in time and number)
and answers every resume: from this process's log; from the process that runs the turn, over
the store's broadcast channel when processes share the store (PostgreSQL; see `TurnRelay`);
or, when no process has the turn, rebuilt from the store: its stored reply, or an error.

Event ids: the user message is "0", deltas count up from "1", the final event
(`assistant_message` or `error`) is "end". A resume after id k gets the deltas numbered above k
that are known, then always the final event; only a client that saw "end" gets nothing more.
"""

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from chatkeep.domain import Message, PageRequest, Role
from chatkeep.errors import InvalidCursorError, MessageNotFoundError, Problem, ReplyNotFoundError
from chatkeep.store import ChatStore
from chatkeep.turns.feed import Feed

if TYPE_CHECKING:  # turn.py reports to logs; the log only reads what it reports
    from chatkeep.turns.engine import TurnOutcome

END_ID = "end"
KEEP_FINISHED_SECONDS = 300.0
KEEP_FINISHED_COUNT = 1000

EventKind = Literal["user_message", "delta", "assistant_message", "error"]


@dataclass(slots=True)  # not frozen: a streamed reply makes one per delta, and frozen init is slow
class TurnEvent:
    id: str
    kind: EventKind
    message: Message | None = None
    text: str = ""
    error: Problem | None = None

    @property
    def final(self) -> bool:
        return self.id == END_ID


class TurnLog(Feed[TurnEvent]):
    """The events of one streamed turn, in order; written by the turn, read by any number of followers."""

    def __init__(self, chat_id: str, streams: "TurnStreams | None" = None, *, first_number: int = 0) -> None:
        super().__init__()
        self.chat_id = chat_id
        self.user_message_id: str | None = None
        self._streams = streams  # told when the log gets its id and when it ends
        self._first_number = first_number  # the id of events[0] when it is numbered

    def user_message(self, message: Message) -> None:
        self.user_message_id = message.id
        self.add(TurnEvent("0", "user_message", message=message))
        if self._streams is not None:
            self._streams.running(self)

    def delta(self, text: str) -> None:
        self.add(TurnEvent(str(self._first_number + len(self.events)), "delta", text=text))

    def assistant_message(self, message: Message) -> None:
        self.add(TurnEvent(END_ID, "assistant_message", message=message))

    def fail(self, error: Problem) -> None:
        self.add(TurnEvent(END_ID, "error", error=error))

    # As a turn's watcher (turn.py): a native turn has one input and one output.

    def started(self, inputs: list[Message]) -> None:
        self.user_message(inputs[-1])

    def ended(self, outcome: "TurnOutcome") -> None:
        self.assistant_message(outcome.outputs[0])

    def failed(self, error: Problem) -> None:
        self.fail(error)

    def add(self, event: TurnEvent) -> None:
        """Append `event` (numbered events in order, the final one last); nothing after the end."""
        if self.done:
            return
        self.push(event, last=event.final)
        if event.final and self._streams is not None:
            self._streams.finished(self)

    @property
    def last_number(self) -> int:
        """The id of the last numbered event (user message or delta), -1 when there is none."""
        numbered = len(self.events) - self.done
        return self._first_number + numbered - 1

    def follow(
        self, last_event_id: str | None = None, *, keepalive: float | None = None
    ) -> AsyncIterator[list[TurnEvent]]:
        """Batches of the events after `last_event_id`, live until the final one; an empty batch
        means nothing happened for `keepalive` seconds (the feed's default): time for a keep-alive."""
        return self.follow_from(self._start(last_event_id), keepalive=keepalive)

    def _start(self, last_event_id: str | None) -> int:
        """The index of the first event a client that saw `last_event_id` has not seen."""
        if last_event_id == END_ID:
            return len(self.events)
        numbered = len(self.events) - self.done
        if last_event_id is None or not last_event_id.isdigit():
            return 0
        return max(0, min(int(last_event_id) + 1 - self._first_number, numbered))


class TurnStreams:
    def __init__(self, store: ChatStore) -> None:
        self._store = store
        self._running: dict[str, TurnLog] = {}
        self._finished: OrderedDict[str, tuple[float, TurnLog]] = OrderedDict()  # oldest first
        self.relay: Relay | None = None  # set when processes share the store

    def new_log(self, chat_id: str) -> TurnLog:
        """A log for a streamed turn about to run; it is kept here from its user message on."""
        return TurnLog(chat_id, self)

    def ended_log(self, user_message: Message, answer: Message) -> TurnLog:
        """The log of a turn that ended before (a replayed request): its question and answer."""
        log = TurnLog(user_message.chat_id)
        log.user_message(user_message)
        log.assistant_message(answer)
        return log

    def running(self, log: TurnLog) -> None:
        assert log.user_message_id is not None
        self._running[log.user_message_id] = log

    def finished(self, log: TurnLog) -> None:
        """Keep the ended log for late readers; the same turn finishing again (a retried
        request re-running its reply) replaces its earlier log."""
        if log.user_message_id is None:
            return
        self._running.pop(log.user_message_id, None)
        self._finished.pop(log.user_message_id, None)
        self._finished[log.user_message_id] = (time.monotonic(), log)
        self._forget_old()

    def local(self, user_message_id: str) -> TurnLog | None:
        """This process's log of the turn, running or recently finished."""
        self._forget_old()
        log = self._running.get(user_message_id)
        if log is None:
            kept = self._finished.get(user_message_id)
            log = kept[1] if kept is not None else None
        return log

    async def resume(
        self, owner: str, chat_id: str, user_message_id: str, last_event_id: str | None
    ) -> AsyncIterator[list[TurnEvent]]:
        """The turn's events after `last_event_id`, from wherever the turn is (see the module).

        Raises ChatNotFoundError, or MessageNotFoundError when the chat has no such message,
        before anything streams.
        """
        await self._store.get_chat(owner, chat_id)
        log = self.local(user_message_id)
        if log is not None and log.chat_id == chat_id:
            return log.follow(last_event_id)
        ended = await self.stored_end(owner, chat_id, user_message_id)
        if ended.kind == "assistant_message" or self.relay is None:
            return _once(ended, last_event_id)
        return self.relay.follow(owner, chat_id, user_message_id, last_event_id)

    async def stored_end(self, owner: str, chat_id: str, user_message_id: str) -> TurnEvent:
        """How the store says the turn ended: its reply, or an error when none is stored."""
        try:
            following = await self._store.list_messages(owner, chat_id, PageRequest(limit=1, after=user_message_id))
        except InvalidCursorError:
            raise MessageNotFoundError(f"no message {user_message_id!r} in chat {chat_id!r}") from None
        reply = following.data[0] if following.data else None
        if reply is not None and reply.role is Role.ASSISTANT:
            return TurnEvent(END_ID, "assistant_message", message=reply)
        missing = ReplyNotFoundError(f"no reply to message {user_message_id!r} is stored or being written")
        return TurnEvent(END_ID, "error", error=missing)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - KEEP_FINISHED_SECONDS
        finished = self._finished
        while finished and (len(finished) > KEEP_FINISHED_COUNT or next(iter(finished.values()))[0] < horizon):
            finished.popitem(last=False)


class Relay(Protocol):
    """Follows a turn that another process runs (turn_relay.py)."""

    def follow(
        self, owner: str, chat_id: str, user_message_id: str, last_event_id: str | None
    ) -> AsyncIterator[list[TurnEvent]]:
        """Its events after `last_event_id`, ending with the final one (from the store when no
        process answers for the turn)."""
        ...


async def _once(event: TurnEvent, last_event_id: str | None) -> AsyncIterator[list[TurnEvent]]:
    if last_event_id != END_ID:
        yield [event]
