"""The one way in for a turn, whichever API asked for it.

Every request to run something on a chat (a native message post, a response of OpenAI's API in a
conversation or chained to earlier ones, conversation items appended) is checked here in one
order, the cheapest refusal first and nothing counted against a request that is only a retry:

1. capacity: a process already at its bound of turns in flight refuses at once (503);
2. the chat, when there is one: the owner's, or 404;
3. the Idempotency-Key: a request that already succeeded gets its stored result here, before any
   limit is counted; one still in flight is a 409, one reused for another body a 422;
4. the owner's rate slot (429);
5. a place in the chat's queue (429 when the owner already has its share of the turns in
   flight, or too many already wait on the chat).

What is admitted is then run by the engine, now or in the background, which settles the key
when the turn ends. A refusal after the key was claimed gives it back.
"""

import secrets
from dataclasses import dataclass

from chatkeep.domain import Chat
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
    ) -> None:
        self._store = store
        self._queue = queue
        self._keys = keys
        self._metrics = metrics
        self._rate_limit = rate_limit

    async def admit(self, owner: str, chat_id: str | None, key: IdempotencyKey | None) -> Admitted:
        """Let a turn on `chat_id` (None: on no chat) in, or refuse it (see the module).

        Raises OverloadedError, ChatNotFoundError, IdempotencyKeyInFlightError,
        IdempotencyKeyReusedError, RateLimitedError, ChatBusyError, or StoreUnavailableError.
        """
        self._queue.check_capacity()
        chat = None if chat_id is None else await self._store.get_chat(owner, chat_id)
        held = await self.hold_key(owner, key)
        if held.replay is not None:
            return Admitted(owner, chat, held, None)
        try:
            if self._rate_limit is not None:
                await self._rate_limit.check(owner)
            # A turn on no chat waits for nothing; its own queue counts it in flight.
            queued = self._queue.join(chat_id if chat_id is not None else secrets.token_hex(8), owner)
        except BaseException:
            await held.settle()
            raise
        return Admitted(owner, chat, held, queued)

    async def hold_key(self, owner: str, key: IdempotencyKey | None) -> HeldKey:
        """Claim `key` for a request (see idempotency.py); a replay is counted. For what is no turn
        (creating a chat), this is the whole admission."""
        held = await self._keys.hold(owner, key)
        if held.replay is not None:
            self._metrics.idempotent_replay()
        return held
