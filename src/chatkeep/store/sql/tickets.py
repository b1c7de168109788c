"""What a process holds in a shared store, kept alive by one heartbeat: turn tickets and claimed keys.

A turn takes a ticket row for its chat (the database hands a chat's tickets out in arrival
order) and holds the turn while its ticket is the lowest live one. Nothing stays open between
calls: a ticket is a row with an expiry that one background heartbeat per store extends for
every ticket this process holds or waits with. A process that dies stops extending, so its
tickets lapse after at most `lease_seconds` and the chat moves on; one that only stalls (a GC
pause, SIGSTOP) finds its ticket lapsed when it wakes, and the store refuses the appends that
carry it (fencing), so two turns never interleave. The same beat refreshes the Idempotency-Keys
this process works on, so only a dead holder's key can be claimed again. Waiters wake on a
nudge (PostgreSQL LISTEN/NOTIFY, or a release in this process) and otherwise poll with a growing
pause, so a lost nudge costs latency, never correctness. The SQL lives in each store's
`TicketBook`; this module is the protocol they share.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol, Self

from chatkeep.domain import Message, Role, new_id, utcnow

log = logging.getLogger(__name__)

NEVER = datetime(1970, 1, 1, tzinfo=UTC)
LAPSED_DETAIL = "this server stalled past its hold on the chat's turn and another took it; nothing was stored"
LEASE_SECONDS = 15.0  # the default; `CHATKEEP_TURN_LEASE` sets it
HEARTBEATS_PER_LEASE = 3


class TicketState(Enum):
    HEAD = "head"  # the lowest live ticket of its chat: the turn is ours
    WAITING = "waiting"
    GONE = "gone"  # lapsed (this process stalled past its lease) or the chat was deleted


@dataclass(frozen=True, slots=True)
class Opening:
    """The user question a turn stores first, which a store stores along with the turn's ticket
    when that ticket is at once the chat's head: one round trip for both."""

    message_id: str
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Opened:
    """An opening stored with its ticket: the seq it took, and the chat's system prompt and revision then."""

    opening: Opening
    seq: int
    system_prompt: str | None
    revision: int

    def message(self, chat_id: str) -> Message:
        opening = self.opening
        return Message(opening.message_id, chat_id, self.seq, Role.USER, opening.content, opening.created_at)


def opening_of(question: str | None) -> Opening | None:
    """The opening of a turn that stores `question` first: under a new id, created now."""
    return None if question is None else Opening(new_id("msg"), question, utcnow())


class TicketBook(Protocol):
    """A store's ticket rows. Tickets are unique across chats; expiries use one shared clock."""

    async def take_ticket(
        self, owner: str, chat_id: str, lease_seconds: float, opening: Opening | None
    ) -> tuple[int, bool, Opened | None]:
        """A new ticket, last in the chat's line, whether it is already the head, and the
        `opening` as stored when it is (durably, as an append; None when it is not the head).

        Raises ChatNotFoundError when the owner has no such chat.
        """
        ...

    async def ticket_state(self, chat_id: str, ticket: int) -> TicketState: ...

    async def return_ticket(self, chat_id: str, ticket: int) -> None:
        """Drop the ticket (no-op when gone) and nudge the chat's waiters in other processes."""
        ...

    async def extend_tickets(self, tickets: Collection[int], lease_seconds: float) -> set[int]:
        """Push the live ones among `tickets` to expire `lease_seconds` from now; return those."""
        ...

    async def touch_keys(self, keys: Collection[tuple[str, str]]) -> None:
        """Mark the RUNNING ones among these (owner, key) Idempotency-Keys as updated now."""
        ...


def state_of(ticket: int, live: Sequence[int]) -> TicketState:
    """Where `ticket` stands among a chat's live tickets, lowest first."""
    if ticket not in live:
        return TicketState.GONE
    return TicketState.HEAD if live[0] == ticket else TicketState.WAITING


@dataclass(slots=True)
class _Claim:
    chat_id: str
    opening: Opening | None
    ticket: int | None = None


class Leases:
    def __init__(self, book: TicketBook, *, lease_seconds: float, poll_seconds: tuple[float, float]) -> None:
        self._book = book
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._tickets: set[int] = set()
        self._handed_on: set[int] = set()  # returned by the turn's last append: nothing left to return
        self._opened: dict[int, Opened] = {}  # by ticket, until the turn asks for it (`opened`)
        self._keys: set[tuple[str, str]] = set()
        self._wakers: dict[str, set[asyncio.Event]] = {}
        self._returning: set[asyncio.Task[None]] = set()
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
        await asyncio.gather(*self._returning, return_exceptions=True)

    def wake(self, chat_id: str) -> None:
        """The chat's line moved: let this process's waiters on it look again."""
        for waker in self._wakers.get(chat_id, ()):
            waker.set()

    def handed_on(self, ticket: int) -> None:
        """The store returned `ticket` along with its turn's last append (`hand_on`)."""
        self._tickets.discard(ticket)
        self._handed_on.add(ticket)

    def opened(self, ticket: int) -> Opened | None:
        """The opening the hold of `ticket` stored along with taking it, once (see `hold`)."""
        return self._opened.pop(ticket, None)

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._keys.add((owner, key))

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._keys.discard((owner, key))

    def abandoned_before(self, owner: str, key: str, moment: datetime) -> datetime:
        """The cutoff a claim of this key uses: never abandoned while this process keeps it alive."""
        return NEVER if (owner, key) in self._keys else moment

    @asynccontextmanager
    async def hold(self, owner: str, chat_id: str, opening: Opening | None = None) -> AsyncIterator[int]:
        """The chat's turn for the block; yields its ticket, which fences the turn's appends.

        With an `opening`, the user question the turn stores first, the store may store it as
        it grants the turn; the turn then finds it in `opened(ticket)` instead of appending it.
        """
        claim = _Claim(chat_id, opening)
        waker = asyncio.Event()
        wakers = self._wakers.setdefault(chat_id, set())
        wakers.add(waker)
        try:
            await self._queue(owner, claim, waker)
            assert claim.ticket is not None
            yield claim.ticket
        finally:
            wakers.discard(waker)
            if not wakers:
                del self._wakers[chat_id]
            if claim.ticket is not None:
                self._opened.pop(claim.ticket, None)
                await self._return(claim.chat_id, claim.ticket)

    async def _queue(self, owner: str, claim: _Claim, waker: asyncio.Event) -> None:
        """Take a ticket and wait until it is the chat's head."""
        head = await self._take(owner, claim)
        pause = self._poll[0]
        while not head:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await waker.wait()
            waker.clear()  # before looking, so a nudge that comes while we look is not lost
            pause = min(pause * 2, self._poll[1])
            assert claim.ticket is not None
            state = await self._book.ticket_state(claim.chat_id, claim.ticket)
            if state is TicketState.GONE:
                log.warning(
                    "turn ticket %s of chat %s lapsed while waiting; queueing again", claim.ticket, claim.chat_id
                )
                self._tickets.discard(claim.ticket)
                claim.ticket = None
                head = await self._take(owner, claim)
            else:
                head = state is TicketState.HEAD

    async def _take(self, owner: str, claim: _Claim) -> bool:
        # A cancellation during this call can leave a ticket we never learn of; it lapses
        # after one lease, which only delays the chat's next turns.
        claim.ticket, head, opened = await self._book.take_ticket(owner, claim.chat_id, self._lease, claim.opening)
        self._tickets.add(claim.ticket)
        if opened is not None:
            self._opened[claim.ticket] = opened
        return head

    async def _return(self, chat_id: str, ticket: int) -> None:
        """Give the ticket back even when the turn is being cancelled: the next one need not wait out the lease."""
        self._tickets.discard(ticket)
        if ticket in self._handed_on:
            self._handed_on.discard(ticket)
        else:
            task = asyncio.ensure_future(self._book.return_ticket(chat_id, ticket))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)
            await asyncio.shield(task)
        self.wake(chat_id)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._lease / HEARTBEATS_PER_LEASE)
            if self._tickets:
                await self._extend_tickets()
            if self._keys:
                try:
                    await self._book.touch_keys(set(self._keys))
                except Exception:
                    log.exception("refreshing %d Idempotency-Keys failed; a later beat tries again", len(self._keys))

    async def _extend_tickets(self) -> None:
        tickets = set(self._tickets)
        try:
            live = await self._book.extend_tickets(tickets, self._lease)
        except Exception:
            log.exception("extending %d turn tickets failed; they lapse unless a later beat succeeds", len(tickets))
            return
        lost = (tickets - live) & self._tickets
        if lost:
            log.warning("turn tickets %s lapsed before their heartbeat: their turns' writes will be refused", lost)
