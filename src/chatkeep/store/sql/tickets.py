"""Turn tickets as rows every process shares, and the one heartbeat that keeps a process's alive.

A turn holds its chat while its ticket is the chat's lowest live row; nothing stays open between
calls, because the LLM is called while a turn is held. A process's heartbeat extends its tickets
(and refreshes the Idempotency-Keys it works on), so a process that dies lets its turns go after
one lease, and one that stalls finds its ticket lapsed and its appends refused (fencing). Waiters
wake on a nudge and otherwise poll with a growing pause, so a lost nudge costs latency, never
correctness. The statements that take and give back a ticket are each dialect's (`TicketRows`).

While the database cannot answer (StoreUnavailableError), taking a ticket or waiting for one
fails the turn with that 503; a ticket that cannot be given back is left to lapse after its
lease (the chat's next turn waits that long at most) rather than failing a turn already stored;
a heartbeat that cannot reach the database is a warning, tried again at the next beat.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol, Self, TypeVar

from chatkeep.domain import Message, NewMessage, Role, new_id, utcnow
from chatkeep.errors import ChatNotFoundError, StoreUnavailableError
from chatkeep.store.protocols import TurnTicket
from chatkeep.store.sql.recent import RecentMessages
from chatkeep.store.sql.rows import Appended, NewRow, could_be_id, to_json
from chatkeep.store.sql.statements import Plan, Statements, execute, fetch, only

log = logging.getLogger(__name__)

T = TypeVar("T")

NEVER = datetime(1970, 1, 1, tzinfo=UTC)
LAPSED_DETAIL = "this server stalled past its hold on the chat's turn and another took it; nothing was stored"
LEASE_SECONDS = 15.0  # the default; `CHATKEEP_TURN_LEASE` sets it
HEARTBEATS_PER_LEASE = 3


class TicketState(Enum):
    HEAD = "head"  # the lowest live ticket of its chat: the turn is ours
    WAITING = "waiting"
    GONE = "gone"  # lapsed (this process stalled past its lease) or the chat was deleted


@dataclass(frozen=True, slots=True)
class TakenTicket:
    number: int
    head: bool  # already the chat's head
    question: Appended | None  # the question, as stored with the ticket (only when it is the head)


class TicketRows(Protocol):
    """What `Tickets` needs of a database. Ticket numbers are unique across chats; expiries use one
    clock that every process shares (the database's, or the machine's for SQLite)."""

    sql: Statements
    touch_keys: str  # refreshes the RUNNING ones among (owner, key) pairs given as a JSON array of {"owner", "key"}

    def run(self, plan: Plan[T], *, write: bool = False) -> Awaitable[T]: ...

    def stamp(self, moment: datetime) -> Any: ...

    async def take_ticket(self, owner: str, chat_id: str, lease_seconds: float, question: NewRow | None) -> TakenTicket:
        """A new ticket, last in the chat's queue, and whether it is already the head; when it is,
        `question` stored too, durably as an append (created at that moment), in the same transaction.

        Raises ChatNotFoundError when the owner has no such chat.
        """
        ...

    async def give_back_ticket(self, chat_id: str, ticket: int) -> None:
        """Drop the ticket (no-op when gone) and nudge the chat's waiters in other processes."""
        ...


def state_of(ticket: int, live: list[int]) -> TicketState:
    """Where `ticket` stands among a chat's live tickets, lowest first."""
    if ticket not in live:
        return TicketState.GONE
    return TicketState.HEAD if live[0] == ticket else TicketState.WAITING


@dataclass(slots=True)
class _Claim:
    chat_id: str
    question: NewRow | None
    number: int | None = None


class Tickets:
    def __init__(
        self, rows: TicketRows, recent: RecentMessages, *, lease_seconds: float, poll_seconds: tuple[float, float]
    ) -> None:
        self._rows = rows
        self._recent = recent  # where a question stored with its ticket goes, as any append does
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._tickets: set[int] = set()
        self._given_back: set[int] = set()  # by the turn's last append: nothing left to give back
        self._keys: set[tuple[str, str]] = set()
        self._wakers: dict[str, set[asyncio.Event]] = {}
        self._giving_back: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._heartbeat = asyncio.create_task(self._beat(), name="chatkeep-turn-heartbeat")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop extending. Tickets still held lapse on their own, as if this process had died."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await asyncio.gather(*self._giving_back, return_exceptions=True)

    def wake(self, chat_id: str) -> None:
        """The chat's queue moved: let this process's waiters on it look again."""
        for waker in self._wakers.get(chat_id, ()):
            waker.set()

    def given_back(self, ticket: int) -> None:
        """The store gave `ticket` back along with its turn's last append (`ends_turn`)."""
        self._tickets.discard(ticket)
        self._given_back.add(ticket)

    async def give_back(self, chat_id: str, ticket: int) -> None:
        """Give the ticket back now, before its turn's block ends (`ends_turn`). When the database
        cannot answer, the block's end tries again; the turn's append stands either way."""
        try:
            await self._rows.give_back_ticket(chat_id, ticket)
        except StoreUnavailableError:
            log.warning("turn ticket %s of chat %s is given back when its turn ends instead", ticket, chat_id)
            return
        self.given_back(ticket)
        self.wake(chat_id)

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._keys.add((owner, key))

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._keys.discard((owner, key))

    def abandoned_before(self, owner: str, key: str, moment: datetime) -> datetime:
        """The cutoff a claim of this key uses: never abandoned while this process keeps it alive."""
        return NEVER if (owner, key) in self._keys else moment

    @asynccontextmanager
    async def hold(self, owner: str, chat_id: str, question: str | None = None) -> AsyncIterator[TurnTicket]:
        """`ChatStore.turn_lease`."""
        if not could_be_id(chat_id):
            raise ChatNotFoundError(f"no chat {chat_id!r}")  # found nowhere: no database is asked
        claim = _Claim(chat_id, None if question is None else (new_id("msg"), NewMessage(Role.USER, question)))
        waker = asyncio.Event()
        wakers = self._wakers.setdefault(chat_id, set())
        wakers.add(waker)
        try:
            yield await self._queue(owner, claim, waker)
        finally:
            wakers.discard(waker)
            if not wakers:
                del self._wakers[chat_id]
            if claim.number is not None:
                await self._end(claim.chat_id, claim.number)

    async def _queue(self, owner: str, claim: _Claim, waker: asyncio.Event) -> TurnTicket:
        """Take a ticket and wait until it is the chat's head."""
        taken = await self._take(owner, claim)
        if taken.head:
            return self._granted(owner, claim.chat_id, taken, claim.question)
        pause = self._poll[0]
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await waker.wait()
            waker.clear()  # before looking, so a nudge that comes while we look is not lost
            pause = min(pause * 2, self._poll[1])
            state = await self._state(claim)
            if state is TicketState.HEAD:
                return TurnTicket(taken.number)
            if state is TicketState.GONE:
                log.warning(
                    "turn ticket %s of chat %s lapsed while waiting; queueing again", claim.number, claim.chat_id
                )
                self._tickets.discard(taken.number)
                claim.number = None
                taken = await self._take(owner, claim)
                if taken.head:
                    return self._granted(owner, claim.chat_id, taken, claim.question)

    async def _state(self, claim: _Claim) -> TicketState:
        assert claim.number is not None
        live = await self._rows.run(only(fetch(self._rows.sql.live_tickets, claim.chat_id)))
        return state_of(claim.number, [row[0] for row in live])

    async def _take(self, owner: str, claim: _Claim) -> TakenTicket:
        # A cancellation during this call can leave a ticket we never learn of; it lapses
        # after one lease, which only delays the chat's next turns.
        taken = await self._rows.take_ticket(owner, claim.chat_id, self._lease, claim.question)
        claim.number = taken.number
        self._tickets.add(taken.number)
        return taken

    def _granted(self, owner: str, chat_id: str, taken: TakenTicket, question: NewRow | None) -> TurnTicket:
        """The ticket of a turn that headed the chat at once, with its question when that was stored."""
        stored = taken.question
        if stored is None or question is None:
            return TurnTicket(taken.number)
        message_id, asked = question
        message = Message(message_id, chat_id, stored.last_seq, Role.USER, asked.content, stored.created_at)
        self._recent.appended(owner, chat_id, [message], revision=stored.revision, ticket=taken.number)
        return TurnTicket(taken.number, message, stored.system_prompt)

    async def _end(self, chat_id: str, ticket: int) -> None:
        """Give the ticket back even when the turn is being cancelled: the next one need not wait out the lease."""
        self._tickets.discard(ticket)
        if ticket in self._given_back:
            self._given_back.discard(ticket)
        else:
            task = asyncio.ensure_future(self._give_back_or_let_lapse(chat_id, ticket))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)
            await asyncio.shield(task)
        self.wake(chat_id)

    async def _give_back_or_let_lapse(self, chat_id: str, ticket: int) -> None:
        try:
            await self._rows.give_back_ticket(chat_id, ticket)
        except StoreUnavailableError:
            log.warning(
                "turn ticket %s of chat %s could not be given back; it lapses in %gs", ticket, chat_id, self._lease
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._lease / HEARTBEATS_PER_LEASE)
            if self._tickets:
                await self._extend_tickets()
            if self._keys:
                try:
                    await self._touch_keys(set(self._keys))
                except StoreUnavailableError:
                    log.warning("refreshing %d Idempotency-Keys failed; a later beat tries again", len(self._keys))
                except Exception:
                    log.exception("refreshing %d Idempotency-Keys failed; a later beat tries again", len(self._keys))

    async def _extend_tickets(self) -> None:
        tickets = set(self._tickets)
        try:
            live = await self._rows.run(self._extended(tickets), write=True)
        except StoreUnavailableError:
            log.warning("extending %d turn tickets failed; they lapse unless a later beat succeeds", len(tickets))
            return
        except Exception:
            log.exception("extending %d turn tickets failed; they lapse unless a later beat succeeds", len(tickets))
            return
        lost = (tickets - live) & self._tickets
        if lost:
            log.warning("turn tickets %s lapsed before their heartbeat: their turns' writes will be refused", lost)

    def _extended(self, tickets: Collection[int]) -> Plan[set[int]]:
        """Extend the live ones of `tickets`, and drop every lapsed ticket (of this process or a dead one)."""
        sql = self._rows.sql
        live = yield fetch(sql.extend_tickets, to_json(list(tickets)), self._lease)
        yield execute(sql.drop_lapsed_tickets)
        return {row[0] for row in live}

    async def _touch_keys(self, keys: Collection[tuple[str, str]]) -> None:
        held = to_json([{"owner": owner, "key": key} for owner, key in keys])
        await self._rows.run(only(execute(self._rows.touch_keys, held, self._rows.stamp(utcnow()))))
