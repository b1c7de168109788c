"""The storage contract, one small protocol per concern, and `ChatStore`, their union.

A part of the service that needs one concern can say so in its signature (the context builder
reads a `MessageLog`, the rate limiter takes `RateSlots`); every backend implements the union,
and `MemoryStore` is its executable specification. Each method's contract (what it raises, its
ordering, its idempotence) is stated here, once. Every method that touches a chat takes the owner
first, and another owner's chat is indistinguishable from a missing one (`ChatNotFoundError`), so
isolation cannot be forgotten by a caller. Text handed to a store holds no NUL characters
(PostgreSQL's `text` cannot store them; the API refuses them).
"""

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from chatkeep.domain import (
    UNFINISHED_RESPONSES,
    Chat,
    ChatChanges,
    ChatCopy,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    NewMessage,
    OffBranchMessage,
    Page,
    PageRequest,
    RollingSummary,
    Siblings,
    StoredResponse,
    SummaryText,
)
from chatkeep.search import SearchKey, SearchPage

MAX_BROADCAST_BYTES = 7000  # under PostgreSQL's NOTIFY payload limit of 8000 bytes


@dataclass(slots=True, frozen=True)
class TurnTicket:
    """The hold on a chat's turn: its number fences the turn's appends; `question` is the
    user message stored as the turn was granted (asked for with `question=`, and the chat idle)."""

    number: int
    question: Message | None = None
    system_prompt: str | None = None  # the chat's, as it was when `question` was stored


class Chats(Protocol):
    async def create_chat(
        self,
        owner: str,
        *,
        title: str | None,
        metadata: dict[str, str],
        system_prompt: str | None,
        messages: Sequence[NewMessage] = (),
        model: str | None = None,
    ) -> Chat:
        """Create a chat with a fresh random id and its first `messages` (seqs 1 to n, so
        `message_count` n) in one atomic write: when it fails, nothing at all is stored. `model`
        is kept as it is given (the caller checked that the server serves it)."""
        ...

    async def insert_chats(self, owner: str, chats: Sequence[ChatCopy]) -> None:
        """Store whole chats exactly as given (an import): each chat's id, title, metadata, system
        prompt, model, `created_at` and `updated_at`, and its messages with their ids, seqs (1 to n,
        as given) and times, and its messages off the current branch as given (`off_branch`), all
        in one atomic write: all of them or nothing.

        Raises IdTakenError, storing nothing, when the store already holds a chat or a message
        under one of their ids, whoever owns it. Not a turn's path: it takes no ticket and keeps
        nothing in a turn's cache.
        """
        ...

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        """Return the chat. Raises ChatNotFoundError when missing or owned by someone else."""
        ...

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        """The owner's chats in creation order, or with `page.order_by == "updated_at"` in order of
        (`updated_at`, id), by cursor, in `page.order` (descending: the latest active first).

        A chat's `updated_at` is the moment of its last write: a message appended, an update; so
        a chat moves to the end of that order as it is written to. A cursor names a chat of the
        owner by id (its place now), or, in that order, spells out a place (`paging.activity_cursor`:
        where a chat was when listed), which pages on from there whatever was written since.
        Raises InvalidCursorError when `after`/`before` names no chat of the owner.
        """
        ...

    async def count_chats(self, owner: str) -> int:
        """How many chats the owner keeps (0 for an owner with none), in one cheap read: the
        quota check of every chat created asks it."""
        ...

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        """Apply the named fields (`model` as given), bump `updated_at`, return the chat. Raises ChatNotFoundError."""
        ...

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        """Delete the chat with its messages, summaries and turn tickets. Raises ChatNotFoundError.

        A turn waiting for the chat then raises ChatNotFoundError, and so do the appends of the
        turn holding it.
        """
        ...


class MessageLog(Protocol):
    async def append_message(
        self,
        owner: str,
        chat_id: str,
        message: NewMessage,
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> Message:
        """Store `message` with the chat's next `seq` (gap-free, from 1), durably before returning;
        its `created_at` is the moment it is stored.

        Concurrent appends to one chat get distinct consecutive seqs. With a `ticket` (from
        `turn_lease`), the message is stored only while that ticket heads the chat, else this
        raises TurnLapsedError and stores nothing (the ticket was given back, or it lapsed while
        its process stalled). With `ends_turn` too, this is the turn's last write: the ticket is
        given back with it, so the next turn in line, in any process, may start once the call
        returns, and the lease's block has nothing left to give back. Raises ChatNotFoundError.
        """
        ...

    async def append_messages(
        self,
        owner: str,
        chat_id: str,
        messages: Sequence[NewMessage],
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> tuple[list[Message], str | None]:
        """Append `messages` (at least one) in order, with consecutive seqs, all or none, as
        `append_message` does one (`ticket` and `ends_turn` alike); and tell the chat's system
        prompt as it is at that moment."""
        ...

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: TurnTicket | None = None
    ) -> tuple[Message, str | None]:
        """Append a user message as `append_message` does, and tell the chat's system prompt as it
        is at that moment (the turn's context needs it; the append reads the chat anyway).

        A turn whose ticket came with its question stored (`TurnTicket.question`) does not call this.
        """
        ...

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        """Empty a message and mark it deleted (`DELETED_ITEM`), keeping its seq: seqs stay gap-free.

        Idempotent. Raises ChatNotFoundError or MessageNotFoundError.
        """
        ...

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        """The chat's messages by `seq` in `page.order`, by cursor.

        Raises ChatNotFoundError, or InvalidCursorError when a cursor names no message of the chat.
        """
        ...

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int = 0,
        ticket: TurnTicket | None = None,
    ) -> list[Message]:
        """Up to `limit` messages with after_seq < seq < before_seq, newest first.

        Costs O(limit), not O(history): the context builder walks back from the newest message with
        it. The turn holding `ticket` passes it to read its context: a store may then answer from
        the newest messages it keeps in memory, which that turn's own appends proved current.
        Raises ChatNotFoundError.
        """
        ...

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        """Exact counts and first/last timestamps of the chat's messages. Raises ChatNotFoundError."""
        ...

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        """One message of the chat. Raises ChatNotFoundError, or MessageNotFoundError."""
        ...


class Branches(Protocol):
    """A chat's branches. A chat is a tree of messages; its current branch is one path from the
    first message to a leaf, and it is what every other read of a chat sees (its messages, its
    context, counts, summaries, search, OpenAI's linear conversation). `seq` is a message's depth:
    gap-free along every branch, fixed for life. The other branches' messages are kept apart,
    each with its parent (`OffBranchMessage`), and come back when a branch through them is
    made current. Writes are fenced by a turn's ticket like appends (TurnLapsedError); one that
    changes the current branch is a write to the chat (its `updated_at` moves) and counts as one
    branch change (the `left_at` of the messages it takes off).
    """

    async def fork_at(self, owner: str, chat_id: str, seq: int, *, ticket: TurnTicket | None = None) -> None:
        """Take the current branch's messages from `seq` on off it, in one atomic write: they are
        kept as a branch after message `seq - 1`, and the next message appended gets `seq`. The
        chat's counts follow the shortened branch; its cached summary and rolling summary are
        dropped when they cover message `seq` or later. `seq` one past the last message takes
        nothing off. Raises ChatNotFoundError, TurnLapsedError, or ValueError when `seq` is not
        in 1 to the chat's last seq + 1.
        """
        ...

    async def switch_branch(
        self, owner: str, chat_id: str, message_id: str, *, ticket: TurnTicket | None = None
    ) -> Chat:
        """Make the branch through `message_id` current, in one atomic write, and return the chat.

        The current branch's messages from where the two branches part are taken off (kept, as
        `fork_at` keeps them); `message_id`, the messages before it on its branch, and after it,
        at each step, the message that was current last (highest `left_at`), come on. A message
        already on the current branch changes nothing. Summaries are dropped as by `fork_at`.
        Raises ChatNotFoundError, MessageNotFoundError (no message of the chat by that id, on
        any branch), TurnLapsedError.
        """
        ...

    async def siblings(self, owner: str, chat_id: str, messages: Sequence[Message]) -> dict[str, Siblings]:
        """For those of `messages` (of the current branch) that have siblings (messages off the
        branch after the same parent: the message at `seq - 1` of the current branch, none at
        seq 1), their siblings, by message id; `{}` in one cheap read for a chat never branched.
        Raises ChatNotFoundError.
        """
        ...

    async def off_branch_messages(self, owner: str, chat_id: str) -> list[OffBranchMessage]:
        """Every message of the chat off its current branch, by seq then creation (an export takes
        them all). Raises ChatNotFoundError."""
        ...


class Search(Protocol):
    async def search_messages(
        self, owner: str, terms: Sequence[str], *, limit: int, after: SearchKey | None = None
    ) -> SearchPage:
        """Up to `limit` of the owner's messages that hold every one of `terms` (`search.query_terms`:
        lowercased words; a store never reads them as operators), best first, then by chat id and
        seq; with `after`, those that come after it in that order. Each hit carries its chat's
        title and a snippet with its matches marked. Another owner's messages, a deleted chat's and
        a forgotten message's are never found. Costs an index lookup on the SQL stores, whose
        index the append keeps in step; a scan of the owner's messages on the memory store.
        """
        ...


class TurnTickets(Protocol):
    def turn_lease(
        self, owner: str, chat_id: str, *, question: str | None = None
    ) -> AbstractAsyncContextManager[TurnTicket]:
        """Hold the chat's turn for the block, against every process sharing this store; yields
        the turn's ticket, which the turn's appends carry.

        A chat's tickets are granted in the order they were asked for, and one holds the turn at
        a time: the oldest live one heads the chat. Entering waits for the turns ahead of it.
        Nothing stays open in the database while a turn is held (the LLM is called under it); a
        holder whose process dies lets go after a bounded time (the lease), and one that stalled
        past it finds its appends refused. Within one process a ticket lapses only when its chat
        is deleted. The block's end gives the ticket back, unless an append with `ends_turn`
        already did. Raises ChatNotFoundError on entry when the owner has no such chat, and while
        waiting when the chat is deleted.

        With `question`, when the new ticket heads the chat at once, the user message `question`
        is stored in the same step as the ticket is granted (created at that moment, not when
        `turn_lease` was called) and comes back as `ticket.question`, with the chat's system
        prompt then. Otherwise `ticket.question` is None, and the turn appends its question
        itself (`append_question` with the ticket): a turn waiting in line stores nothing.
        """
        ...


class Summaries(Protocol):
    """A chat's cached summary (`SummaryText`, for the summary endpoint) and its rolling summary
    (`RollingSummary`, sent upstream instead of the older messages it covers).

    A summary names the message it was written through (`through_id`, the one at `up_to_seq`) when
    it is saved: it is written from messages read before an LLM call, and a branch change in
    between may have taken them off the current branch. It is then not kept: it would summarize
    another branch. Without `through_id`, it is kept on its `up_to_seq` alone.
    """

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        """The cached summary, or None. Raises ChatNotFoundError."""
        ...

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        """Cache `summary` unless the cached one already covers more messages, or `summary.through_id`
        is no longer the message at its `up_to_seq`. Raises ChatNotFoundError."""
        ...

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        """The chat's rolling summary, or None. Raises ChatNotFoundError."""
        ...

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        """Hold the right to write the chat's rolling summary for `hold_seconds` unless someone else
        holds it: True when the caller now does. One holder per chat at a time, across every
        process sharing the store; a holder that dies lets go when its hold lapses. False for a
        chat that is gone or another owner's."""
        ...

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        """Let go of the hold, keeping `summary` (when given) unless the kept one covers as much, or
        `summary.through_id` is no longer the message at its `up_to_seq`.

        Does nothing for a chat that is gone or another owner's.
        """
        ...


class IdempotencyKeyStore(Protocol):
    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        """Claim the owner's Idempotency-Key `key` for a request, atomically across processes.

        - No record, or one created before `expired_before`: a new RUNNING record is written
          (created and updated now, no result, no user message); claimed, previous None.
        - A record with another fingerprint: not claimed; previous is that record.
        - DONE, or RUNNING and kept alive by this process or updated at or after
          `abandoned_before` (in flight): not claimed.
        - FAILED, or RUNNING updated before `abandoned_before` and not kept alive here (its
          process died): claimed again; the record becomes RUNNING, updated now, keeping
          created_at and user_message_id; previous is the record as it was.
        Of concurrent claims of one absent key exactly one is claimed.
        """
        ...

    async def update_key(
        self,
        owner: str,
        key: str,
        *,
        state: KeyState,
        result: str | None = None,
        user_message_id: str | None = None,
    ) -> None:
        """Record how far a claimed key's request got; bumps updated_at. Does nothing for an unknown key.

        `result` replaces the stored one; a `user_message_id` of None keeps the one recorded.
        """
        ...

    def keep_key_alive(self, owner: str, key: str) -> None:
        """This process works on the key it claimed until `let_key_lapse`: no other claim may take it over.

        A store shared by processes refreshes the key's `updated_at` while it is kept alive, so
        only a key whose holder died (stopped refreshing it) counts as abandoned.
        """
        ...

    def let_key_lapse(self, owner: str, key: str) -> None:
        """Stop keeping the key alive (the request holding it ended)."""
        ...

    async def release_key(self, owner: str, key: str) -> None:
        """Forget a claimed key whose request stored nothing, so that a retry starts afresh. Idempotent."""
        ...

    async def purge_keys(self, *, expired_before: datetime) -> int:
        """Delete every key (of every owner) created before `expired_before`; how many went."""
        ...


class ResponseStore(Protocol):
    """Responses of the Responses API. One still being made (its status queued or in_progress, a
    background response) is kept alive by its process, `live_for` seconds at a time on the store's
    clock, so that a reader can tell a response at work from one whose process died (`lapsed`).
    Pre-existing rows have no status of their own: they had all ended."""

    async def save_response(self, owner: str, response: StoredResponse, *, live_for: float | None = None) -> None:
        """Keep a response of the Responses API (its id is new); an unfinished one alive for `live_for` seconds."""
        ...

    async def update_response(
        self,
        owner: str,
        response: StoredResponse,
        *,
        expected: Collection[str] = UNFINISHED_RESPONSES,
        live_for: float | None = None,
        if_lapsed: bool = False,
    ) -> bool:
        """Replace a kept response's object, input items and stream (its status is its object's),
        alive for `live_for` more seconds, only while its status is one of `expected` (and, with
        `if_lapsed`, nobody keeps it alive): True when replaced, False when it is gone or another
        writer moved it on. A response that ended stays ended: a late writer cannot undo that."""
        ...

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        """A kept response, `lapsed` when it is unfinished and its time alive ran out. Raises
        ResponseNotFoundError when missing or another owner's."""
        ...

    async def delete_response(self, owner: str, response_id: str) -> None:
        """Forget a kept response. Raises ResponseNotFoundError."""
        ...


@dataclass(frozen=True, slots=True)
class RateLease:
    """What `RateSlots.renew_rate_lease` granted: `slots` to spend (0: none), and when none were
    granted though some were wanted, the seconds until one frees (`wait`)."""

    slots: int
    wait: float | None = None


class RateSlots(Protocol):
    async def renew_rate_lease(
        self,
        key: str,
        lease: str,
        *,
        spent: Sequence[float],
        want: int,
        limit: int,
        window_seconds: float,
        lease_seconds: float,
    ) -> RateLease:
        """Settle the lease `lease` on `key`'s count and grant it up to `want` slots anew, in one step.

        A moving window: each slot counts for `window_seconds` from when it was taken, and no more
        than `limit` count at once. The slots `lease` held before are given back, except the ones
        its holder `spent`, given as their ages in seconds: each counts from that long ago (never
        later than the lease's own end). Then up to `want` slots, as many as fit under `limit`,
        are held by `lease` and count as taken `lease_seconds` from now, so that any spent before
        that moment is covered for a whole window even if the holder never settles again. With
        none granted, `wait` says when one frees (None when none was wanted).

        Shared by every process that shares the store, under a lock on `key`: the slots counted at
        once never exceed `limit`, however many leases take them.
        """
        ...


class Broadcast(Protocol):
    """Fire-and-forget messages between the processes that share a store, this one included.

    Delivery is at most once and only to processes listening when a message is sent; a message
    is at most MAX_BROADCAST_BYTES.
    """

    async def publish(self, message: bytes) -> None:
        """Send `message` to every listener; raises ValueError when it is over MAX_BROADCAST_BYTES."""
        ...

    def subscribe(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        """Call `listener` with every message from now on, until the returned function is called."""
        ...


class ChatStore(
    Chats, MessageLog, Branches, Search, TurnTickets, Summaries, IdempotencyKeyStore, ResponseStore, RateSlots, Protocol
):
    """Everything the service keeps: what every backend implements."""

    async def check_ready(self) -> None:
        """Return once the store answers with its schema up to date; raise StoreUnavailableError otherwise.

        Cheap (one round trip at most): readiness probes call it every few seconds.
        """
        ...

    @property
    def broadcast(self) -> Broadcast | None:
        """Small messages to every process sharing this store (None: no other process can)."""
        ...
