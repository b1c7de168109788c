"""The one way in for a turn, whichever API asked for it.

Every request to run something on a chat (a native message post, a response of OpenAI's API in a
conversation or chained to earlier ones, conversation items appended) is checked here in one
order, the cheapest refusal first and nothing counted against a request that is only a retry:

1. capacity: a process already at its bound of turns in flight refuses at once (503);
2. the chat, when there is one: the owner's, or 404;
3. the Idempotency-Key: a request that already succeeded gets its stored result here, before any
   limit is counted; one still in flight is a 409, one reused for another body a 422;
4. room in the chat (429 `chat-full`): the messages it holds (`Chat.message_count`, as read in
   step 2) and those the turn adds, its inputs and its reply, within `max_chat_messages`;
5. the owner's rate slot (429);
6. a place in the chat's queue (429 when the owner already has its share of the turns in
   flight, or too many already wait on the chat).

What is admitted is then run by the engine, now or in the background, which settles the key
when the turn ends. A refusal after the key was claimed gives it back. Creating a chat is no
turn: its admission (`admit_chat`) is the key, then the owner's quota of chats (429
`chat-quota`, `max_chats`) and room for the chat's first messages.

Both quotas are checked against counts read before anything is stored, with no lock held until
the write: requests racing on one owner or one chat may pass them together, by at most the
requests in flight at once (on one chat, its queue: `max_waiting_turns` and the turn running).
"""

import secrets
from dataclasses import dataclass

from chatkeep.domain import Chat
from chatkeep.errors import ChatFullError, ChatQuotaError
from chatkeep.idempotency import HeldKey, IdempotencyKey, IdempotencyKeys
from chatkeep.metrics import Metrics
from chatkeep.rate_limit import RateLimit
from chatkeep.store import ChatStore
from chatkeep.turns.queue import QueuedTurn, TurnQueue


@dataclass(slots=True, frozen=True)
class Admitted:
    """A request let in: its owner and chat, its hold on its key, and its place in the chat's queue
    (None when it is a replay: the key's stored result answers it)."""

    owner: str
    chat: Chat | None  # None: a response chained to earlier ones, which belongs to no chat
    key: HeldKey
    queued: QueuedTurn | None

    @property
    def replay(self) -> str | None:
        return self.key.replay


class Admission:
    def __init__(
        self,
        store: ChatStore,
        queue: TurnQueue,
        keys: IdempotencyKeys,
        metrics: Metrics,
        *,
        rate_limit: RateLimit | None,
        max_chats: int | None = None,
        max_chat_messages: int | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._keys = keys
        self._metrics = metrics
        self._rate_limit = rate_limit
        self._max_chats = max_chats  # None: no quota
        self._max_chat_messages = max_chat_messages

    async def admit(
        self,
        owner: str,
        chat_id: str | None,
        key: IdempotencyKey | None,
        *,
        inputs: int = 1,
        replies: int = 1,
        rated: bool = True,
    ) -> Admitted:
        """Let a turn on `chat_id` (None: on no chat) in, or refuse it (see the module). The turn
        stores `inputs` messages, then `replies` (a question and its reply unless told otherwise);
        a retry whose inputs are stored already needs room for its reply alone. A change that
        calls no LLM (a branch switch) is not `rated`: it takes no rate slot.

        Raises OverloadedError, ChatNotFoundError, IdempotencyKeyInFlightError,
        IdempotencyKeyReusedError, ChatFullError, RateLimitedError, ChatBusyError, or
        StoreUnavailableError.
        """
        self._queue.check_capacity()
        chat = None if chat_id is None else await self._store.get_chat(owner, chat_id)
        held = await self.hold_key(owner, key)
        if held.replay is not None:
            return Admitted(owner, chat, held, None)
        try:
            if chat is not None:
                self._check_room(chat.id, chat.message_count, (0 if held.retry_of is not None else inputs) + replies)
            if rated and self._rate_limit is not None:
                await self._rate_limit.check(owner)
            # A turn on no chat waits for nothing; its own queue counts it in flight.
            queued = self._queue.join(chat_id if chat_id is not None else secrets.token_hex(8), owner)
        except BaseException:
            await held.settle()
            raise
        return Admitted(owner, chat, held, queued)

    async def admit_chat(self, owner: str, key: IdempotencyKey | None, *, messages: int = 0) -> HeldKey:
        """Let the creation of a chat with its first `messages` in: its key held (a replay is
        answered before any quota is counted), then the owner's quota of chats and room for the
        messages. Raises what `hold_key` does, ChatQuotaError or ChatFullError."""
        held = await self.hold_key(owner, key)
        if held.replay is not None:
            return held
        try:
            self._check_room(None, 0, messages)
            if self._max_chats is not None and await self._store.count_chats(owner) >= self._max_chats:
                raise ChatQuotaError(
                    f"this owner already keeps {self._max_chats} chats, as many as one owner may; delete one first"
                )
        except BaseException:
            await held.settle()
            raise
        return held

    async def hold_key(self, owner: str, key: IdempotencyKey | None) -> HeldKey:
        """Claim `key` for a request (see idempotency.py); a replay is counted."""
        held = await self._keys.hold(owner, key)
        if held.replay is not None:
            self._metrics.idempotent_replay()
        return held

    def _check_room(self, chat_id: str | None, holds: int, adding: int) -> None:
        """Raise ChatFullError unless a chat holding `holds` messages has room for `adding` more."""
        limit = self._max_chat_messages
        if limit is None or holds + adding <= limit:
            return
        chat = "a chat" if chat_id is None else f"chat {chat_id!r}"
        raise ChatFullError(
            f"{chat} may hold {limit} messages and items; it holds {holds}, and this request adds {adding}"
        )
