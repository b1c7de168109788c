"""Following a streamed turn that another process runs, over the store's broadcast channel.

Behind a load balancer a reconnecting client lands on any process. When the turn it resumes
runs elsewhere (PostgreSQL: every process shares the database and its NOTIFY channel), this
process asks, on the broadcast channel, whoever runs the turn to forward its events after
the client's last id; the process that has it (running, or recently ended) answers at once,
then forwards every batch as it comes, with a heartbeat while nothing happens. Nothing is
published for turns nobody follows from elsewhere, so the channel costs nothing in the common
case.

Messages are small JSON objects (the broadcast limit is a few KB): deltas travel as text, the
user and assistant messages as ids the follower reads from the store, an error as its problem
fields. A follower that hears nothing for a while asks again after the last event it has; when
no process answers at all (the turn's process died, or forgot the turn), the store says how the
turn ended: its stored reply, or an error.

A turn may be followed, and stopped, by another name than its question's id: a background
response by its id (`RunningTurns.known_as`), even while it waits for its chat. Such a follower
reads no messages (the response's own record says what it needs) and, when no process answers,
learns how it ended from the response's record, not from here.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatkeep.errors import Failure
from chatkeep.llm.base import ToolCallDelta
from chatkeep.store import MAX_BROADCAST_BYTES, Broadcast, ChatStore
from chatkeep.turns.events import END_ID, KEEPALIVE_SECONDS, TurnEvent, TurnEvents, event_number, stored_end
from chatkeep.turns.running import RunningTurns

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0  # a forwarder with nothing to send says it is alive this often
FIRST_ANSWER_SECONDS = 1.0  # how long a follower waits for anyone to answer its first ask
SILENT_ASKS = 3  # asks that go unanswered before the store is asked instead
MAX_FORWARDERS = 64  # per process: follows from elsewhere are rare; a flood of them is not served
STOP_ANSWER_SECONDS = 10.0  # how long a stop request waits for the turn's process to stop and store it


@dataclass(slots=True)
class RelayedFailure:
    """An error event from the process that ran the turn: enough to render its problem."""

    status: int
    title: str
    slug: str
    detail: str
    retry_after: float | None = None
    more: dict[str, Any] = field(default_factory=dict)

    def extensions(self) -> dict[str, Any]:
        return self.more


class TurnRelay:
    def __init__(self, broadcast: Broadcast, running: RunningTurns, store: ChatStore) -> None:
        self._broadcast = broadcast
        self._running = running  # the turns this process runs, which other processes may follow or stop
        self._store = store
        self._inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}  # this process's follows, by token
        self._forwarders: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self._broadcast.subscribe(self._received)

    async def aclose(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._forwarders:
            task.cancel()
        await asyncio.gather(*self._forwarders, return_exceptions=True)

    async def follow(
        self, owner: str, chat_id: str | None, user_message_id: str, last_event_id: str | None
    ) -> AsyncGenerator[list[TurnEvent], None]:
        """The turn's events after `last_event_id`, from whichever process runs it. With no
        `chat_id` (a turn followed by another name), its message events carry no message, and when
        no process answers the events just stop, with no final one."""
        token = os.urandom(12).hex()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._inboxes[token] = inbox
        follower = _Follower(last_event_id)
        try:
            await self._ask(token, user_message_id, follower.last_id)
            silent, wait, last_yield = 0, FIRST_ANSWER_SECONDS, time.monotonic()
            while True:
                try:
                    async with asyncio.timeout(wait):
                        message = await inbox.get()
                except TimeoutError:
                    silent += 1
                    if silent >= SILENT_ASKS:
                        if chat_id is not None:
                            yield [await stored_end(self._store, owner, chat_id, user_message_id)]
                        return
                    await self._ask(token, user_message_id, follower.last_id)
                    continue
                silent, wait = 0, 3 * HEARTBEAT_SECONDS
                batch = await self._events(owner, chat_id, follower, message)
                if batch is None:  # a gap: some of the forwarded events were lost on the way
                    token = self._renew(token, inbox)
                    await self._ask(token, user_message_id, follower.last_id)
                elif batch or time.monotonic() - last_yield >= KEEPALIVE_SECONDS:
                    last_yield = time.monotonic()
                    yield batch
                    if batch and batch[-1].final:
                        return
        finally:
            self._inboxes.pop(token, None)

    async def stop(self, owner: str, chat_id: str | None, user_message_id: str, *, cancel: bool = False) -> bool:
        """Ask whichever process writes the reply to `user_message_id` to stop it (with `cancel`,
        `RunningTurn.cancel`: a turn still waiting for its chat is ended too); True once it has
        stopped and stored it, False when no process answers for the turn."""
        token = os.urandom(12).hex()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._inboxes[token] = inbox
        try:
            await self._publish({"op": "stop", "turn": user_message_id, "to": token, "cancel": cancel})
            async with asyncio.timeout(STOP_ANSWER_SECONDS):
                return bool((await inbox.get()).get("stopped"))
        except TimeoutError:
            return False
        finally:
            self._inboxes.pop(token, None)

    def _renew(self, token: str, inbox: asyncio.Queue[dict[str, Any]]) -> str:
        self._inboxes.pop(token, None)
        renewed = os.urandom(12).hex()
        self._inboxes[renewed] = inbox
        return renewed

    async def _ask(self, token: str, user_message_id: str, last_id: str | None) -> None:
        await self._publish({"op": "follow", "turn": user_message_id, "after": last_id, "to": token})

    async def _events(
        self, owner: str, chat_id: str | None, follower: "_Follower", message: dict[str, Any]
    ) -> list[TurnEvent] | None:
        """The new events of a forwarded batch, in order; None when some before them went missing."""
        batch: list[TurnEvent] = []
        for event_id, kind, data in message["events"]:
            if not follower.is_new(event_id):
                continue
            if not follower.is_next(event_id, message.get("last")):
                return None
            batch.append(await self._event(owner, chat_id, event_id, kind, data))
            follower.saw(event_id)
        return batch

    async def _event(self, owner: str, chat_id: str | None, event_id: str, kind: Any, data: Any) -> TurnEvent:
        event = decoded([event_id, kind, data])
        if event.kind in ("user_message", "assistant_message") and chat_id is not None:
            event.message = await self._store.get_message(owner, chat_id, data)
        return event

    def _received(self, raw: bytes) -> None:
        message = orjson.loads(raw)
        if message["op"] in ("events", "stopped"):
            inbox = self._inboxes.get(message["to"])
            if inbox is not None:
                inbox.put_nowait(message)
        elif message["op"] == "stop":
            turn = self._running.find(message["turn"])
            if turn is not None and not turn.over:
                stopped = turn.cancel() if message.get("cancel") else turn.stop()
                self._start(self._tell_stopped(stopped, message["to"]))
        elif message["op"] == "follow" and len(self._forwarders) < MAX_FORWARDERS:
            self._forward_from_here(message)

    async def _tell_stopped(self, answered: "asyncio.Future[Any]", to: str) -> None:
        try:
            await asyncio.shield(answered)
            stopped = True
        except Exception:
            stopped = False
        await self._publish({"op": "stopped", "to": to, "stopped": stopped})

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._forwarders.add(task)
        task.add_done_callback(self._forwarders.discard)

    def _forward_from_here(self, ask: dict[str, Any]) -> None:
        turn = self._running.find(ask["turn"])
        if turn is None or turn.events is None:
            return  # not ours (the process that has it answers), or nobody streams it
        events = turn.events
        self._start(self._forward(events.follow(ask["after"], keepalive=HEARTBEAT_SECONDS), events, ask))

    async def _forward(self, batches: AsyncIterator[list[TurnEvent]], events: TurnEvents, ask: dict[str, Any]) -> None:
        """Forward the turn's events after the asker's last id, then every batch, until the final one."""
        try:
            await self._publish_events(ask["to"], [], events.last_number)  # answered: the asker need not wait
            async for batch in batches:
                await self._publish_events(ask["to"], batch, events.last_number)
        except Exception:
            log.exception("forwarding turn %s to another process failed", ask["turn"])

    async def _publish_events(self, to: str, batch: list[TurnEvent], last: int) -> None:
        """`batch` in as many messages as the broadcast limit needs; `last` names the turn's last delta."""
        message: dict[str, Any] = {"op": "events", "to": to, "events": [], "last": last}
        size = len(orjson.dumps(message))
        for event in batch:
            encoded = _encoded(event)
            grown = len(orjson.dumps(encoded)) + 1
            if message["events"] and size + grown > MAX_BROADCAST_BYTES:
                await self._publish(message)
                message = {**message, "events": []}
                size = len(orjson.dumps(message))
            message["events"].append(encoded)
            size += grown
        if message["events"] or not batch:
            await self._publish(message)

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._broadcast.publish(orjson.dumps(message))


@dataclass(slots=True)
class _Follower:
    """Where a follower is: the last event id it has (the client's own, at first)."""

    last_id: str | None

    def is_new(self, event_id: str) -> bool:
        if self.last_id == END_ID:
            return False
        have, number = event_number(self.last_id), event_number(event_id)
        if event_id == END_ID or have is None or number is None:
            return True
        return number > have

    def is_next(self, event_id: str, last: int | None) -> bool:
        """Whether `event_id` follows on from what this follower has, with nothing missing between
        (a follower that has nothing yet starts at the user message, "0")."""
        have = event_number(self.last_id)
        have = -1 if have is None else have
        if event_id == END_ID:
            return last is None or have >= last
        return event_number(event_id) == have + 1

    def saw(self, event_id: str) -> None:
        self.last_id = event_id


def encoded(event: TurnEvent) -> list[Any]:
    """An event as JSON carries it: deltas as text, pieces of calls as their fields, messages by id,
    errors by their problem fields."""
    if event.kind == "delta":
        return [event.id, "delta", event.text]
    if event.call is not None:
        piece = event.call
        fields = {"index": piece.index, "id": piece.id, "name": piece.name, "arguments": piece.arguments}
        return [event.id, "call_delta", {**fields, "item_id": event.item_id}]
    if event.error is not None:
        return [event.id, "error", _problem_fields(event.error)]
    return [event.id, event.kind, event.message.id if event.message is not None else ""]


def decoded(event: list[Any]) -> TurnEvent:
    """The event `encoded` gave, its message (known by id only) left out."""
    event_id, kind, data = event
    if kind == "delta":
        return TurnEvent(event_id, "delta", text=data)
    if kind == "call_delta":
        piece = ToolCallDelta(data["index"], data["id"], data["name"], data["arguments"])
        return TurnEvent(event_id, "call_delta", call=piece, item_id=data["item_id"])
    if kind == "error":
        return TurnEvent(event_id, "error", error=RelayedFailure(**data))
    return TurnEvent(event_id, kind)


def _encoded(event: TurnEvent) -> list[Any]:
    """An event as the broadcast carries it: `encoded`, with a delta (or a call's piece) too large for
    one message clipped."""
    carried = encoded(event)
    if event.kind == "delta":
        carried[2] = _clipped(event.text)
    elif event.call is not None:
        carried[2]["arguments"] = _clipped(event.call.arguments)
    return carried


def _problem_fields(error: Failure) -> dict[str, Any]:
    return {
        "status": error.status,
        "title": error.title,
        "slug": error.slug,
        "detail": error.detail[:1000],
        "retry_after": error.retry_after,
        "more": error.extensions(),
    }


def _clipped(text: str) -> str:
    """A delta too large for one broadcast message loses its tail here; the final message has it all."""
    limit = MAX_BROADCAST_BYTES // 2
    return text if len(text.encode()) <= limit else text.encode()[:limit].decode(errors="ignore")
