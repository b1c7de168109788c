"""The storage contract every backend meets; `MemoryStore` is its executable specification.

Every method takes the owner first: a chat of another owner is indistinguishable from a missing
one (`ChatNotFoundError`), so isolation cannot be forgotten by a caller. Text handed to a store
holds no NUL characters (PostgreSQL's `text` cannot store them; the API refuses them).
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from chatkeep.domain import (
    Chat,
    ChatChanges,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    NewMessage,
    Page,
    PageRequest,
    RollingSummary,
    StoredResponse,
    SummaryText,
)


class ChatStore(Protocol):
    async def check_ready(self) -> None:
        """Return once the store answers with its schema up to date; raise StoreUnavailableError otherwise.

        Cheap (one round trip at most): readiness probes call it every few seconds.
        """
        ...

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        """Create and return an empty chat with a fresh random id."""
        ...

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        """Return the chat. Raises ChatNotFoundError when missing or owned by someone else."""
        ...

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        """The owner's chats in creation order (`page.order`), by cursor.

        Raises InvalidCursorError when `after`/`before` names no chat of the owner.
        """
        ...

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        """Apply the named fields, bump `updated_at`, return the chat. Raises ChatNotFoundError."""
        ...

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        """Delete the chat with its messages and summary. Raises ChatNotFoundError."""
        ...

    def turn_lease(
        self, owner: str, chat_id: str, *, question: str | None = None
    ) -> AbstractAsyncContextManager[int | None]:
        """Hold the chat's turn against every other process sharing this store, for the block.

        The service's in-process `TurnQueue` already orders one process's turns; this orders
        processes, in request order. No database connection or transaction stays open while it is
        held (the LLM is called under it), and a holder that dies releases it after a bounded time
        (the lease). It yields the turn's ticket, which the turn's appends carry so that a holder
        that stalled past its lease cannot write once another process has the turn; a store only
        one process can use has nothing to do here and yields None. A store that queues on the
        chat's row (the SQL stores) raises ChatNotFoundError on entry when the owner has no such
        chat, also when the chat is deleted while the turn waits.

        `question` is the user message a turn that stores one first will store: a store may store
        it as it grants the turn (one round trip for both), and the turn's `append_question`
        with the ticket then answers that message instead of storing it again.
        """
        ...

    async def append_message(
        self, owner: str, chat_id: str, message: NewMessage, *, ticket: int | None = None, hand_on: bool = False
    ) -> Message:
        """Store `message` with the chat's next `seq` (gap-free, from 1), durably before returning.

        Concurrent appends to one chat get distinct consecutive seqs. With a `ticket` (from
        `turn_lease`), the append happens only while that ticket still holds the chat's turn, else
        raises TurnLapsedError and stores nothing. With `hand_on` too, this is the turn's last
        write: the ticket is returned with it, so the next turn in line, in any process, may start
        before the lease's block ends (which then has nothing left to return). Raises
        ChatNotFoundError.
        """
        ...

    async def append_messages(
        self, owner: str, chat_id: str, messages: Sequence[NewMessage], *, ticket: int | None = None
    ) -> tuple[list[Message], str | None]:
        """Append `messages` (at least one) in order, with consecutive seqs, all or none, as
        `append_message` does one; and tell the chat's system prompt as it is at that moment."""
        ...

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: int | None = None
    ) -> tuple[Message, str | None]:
        """Append a user message as `append_message` does, and tell the chat's system prompt as it
        is at that moment (the turn's context needs it; the append reads the chat anyway)."""
        ...

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        """Empty a message and mark it deleted (`DELETED_ITEM`), keeping its seq: seqs stay gap-free.

        Raises ChatNotFoundError or MessageNotFoundError.
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
        ticket: int | None = None,
    ) -> list[Message]:
        """Up to `limit` messages with after_seq < seq < before_seq, newest first.

        Costs O(limit), not O(history): the context builder walks back from the newest message with it.
        The turn holding `ticket` (from `turn_lease`) passes it to read its context: a store may
        then answer from the newest messages it keeps in memory, which that turn's own appends
        proved current (the SQL stores' `Tails`). Raises ChatNotFoundError.
        """
        ...

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        """Exact counts and first/last timestamps of the chat's messages. Raises ChatNotFoundError."""
        ...

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        """The cached summary, or None. Raises ChatNotFoundError."""
        ...

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        """Cache `summary` unless the cached one already covers more messages. Raises ChatNotFoundError."""
        ...

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        """The chat's rolling summary (folds.py), or None. Raises ChatNotFoundError."""
        ...

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        """Hold the chat's fold for `hold_seconds` unless someone else holds it: True when the caller
        now does. One fold per chat at a time, across every process sharing the store; a holder
        that dies lets go when its hold lapses. False for a chat that is gone."""
        ...

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        """Let go of the chat's fold, keeping `summary` (when given) unless the kept one covers as much."""
        ...

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        """One message of the chat. Raises ChatNotFoundError, or MessageNotFoundError."""
        ...

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
        """Record how far a claimed key's request got; bumps updated_at.

        `result` replaces the stored one; a `user_message_id` of None keeps the one recorded.
        """
        ...

    def keep_key_alive(self, owner: str, key: str) -> None:
        """This process works on the key it claimed until `let_key_lapse`: no other claim may take it over.

        The SQL stores refresh the key's `updated_at` with the heartbeat that keeps turn tickets
        alive, so only a key whose holder died (stopped refreshing it) counts as abandoned.
        """
        ...

    def let_key_lapse(self, owner: str, key: str) -> None:
        """Stop keeping the key alive (the request holding it ended)."""
        ...

    async def release_key(self, owner: str, key: str) -> None:
        """Forget a claimed key whose request stored nothing, so that a retry starts afresh."""
        ...

    async def purge_keys(self, *, expired_before: datetime) -> int:
        """Delete every key (of every owner) created before `expired_before`; how many went."""
        ...

    async def save_response(self, owner: str, response: StoredResponse) -> None:
        """Keep a response of the Responses API (its id is new)."""
        ...

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        """A kept response. Raises ResponseNotFoundError when missing or another owner's."""
        ...

    async def delete_response(self, owner: str, response_id: str) -> None:
        """Forget a kept response. Raises ResponseNotFoundError."""
        ...

    async def take_rate_slot(self, key: str, *, limit: int, window_seconds: float) -> float | None:
        """Count one event for `key` if fewer than `limit` were counted in the last `window_seconds`.

        None when it was counted, else the seconds until one would be. Shared by every process
        that shares the store; concurrent takers never count more than `limit` in a window.
        """
        ...

    @property
    def broadcast(self) -> "Broadcast | None":
        """Small messages to every process sharing this store (None: no other process can)."""
        ...


class Broadcast(Protocol):
    """Fire-and-forget messages between the processes that share a store, this one included.

    Delivery is at most once and only to processes listening when a message is sent; a message
    is at most MAX_BROADCAST_BYTES.
    """

    async def publish(self, message: bytes) -> None: ...

    def subscribe(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        """Call `listener` with every message from now on, until the returned function is called."""
        ...


MAX_BROADCAST_BYTES = 7000  # under PostgreSQL's NOTIFY payload limit of 8000 bytes
