"""ChatService: what the native API does, over the store, the turn engine and the summaries.

Turns themselves are `turn.py`'s; here they are asked for (one user message in, one reply out),
replayed for a retried Idempotency-Key, streamed (the turn runs in a task of its own and writes
its events to a `TurnLog` that HTTP streams read), resumed and stopped.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chatkeep.config import Settings
from chatkeep.domain import (
    Chat,
    ChatChanges,
    Message,
    NewMessage,
    Page,
    PageRequest,
    Role,
    Summary,
)
from chatkeep.errors import (
    StoreUnavailableError,
    TurnNotRunningError,
)
from chatkeep.idempotency import (
    HeldKey,
    IdempotencyKey,
    IdempotencyKeys,
    chat_from_result,
    chat_result,
    turn_from_result,
    turn_result,
)
from chatkeep.llm import LLM
from chatkeep.metrics import Metrics
from chatkeep.rate_limit import RateLimit
from chatkeep.store import ChatStore
from chatkeep.summaries.chat import SummaryKeeper
from chatkeep.summaries.rolling import Folds
from chatkeep.summaries.summarizer import ExtractiveSummarizer, LLMSummarizer, Summarizer
from chatkeep.turns.engine import TurnEngine, TurnOutcome, TurnRequest, TurnWatcher
from chatkeep.turns.events import TurnEvent, TurnLog, TurnStreams
from chatkeep.turns.queue import TurnQueue, TurnSlot
from chatkeep.turns.relay import TurnRelay

log = logging.getLogger(__name__)

PURGE_KEYS_EVERY_SECONDS = 3600.0
READY_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True, frozen=True)
class Turn:
    user_message: Message
    assistant_message: Message


class ChatService:
    def __init__(
        self, store: ChatStore, llm: LLM, settings: Settings, metrics: Metrics, *, rate_limit: RateLimit | None = None
    ) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self._metrics = metrics
        self._rate_limit = rate_limit
        self._turns = TurnQueue(
            metrics, max_waiting=settings.max_waiting_turns, max_in_flight=settings.max_turns_in_flight
        )
        summarizer: Summarizer = ExtractiveSummarizer() if settings.provider == "offline" else LLMSummarizer(llm)
        self._summaries = SummaryKeeper(store, summarizer, metrics, budget=settings.context_tokens // 2)
        self._folds = (
            Folds(
                store,
                summarizer,
                metrics,
                budget=settings.context_tokens,
                fold_at=settings.fold_at,
                summary_tokens=settings.rolling_summary_tokens,
            )
            if settings.context_folding
            else None
        )
        # A held key is refreshed a few times per lease; one not refreshed for a whole lease lost its process.
        self._keys = IdempotencyKeys(store, abandoned_after=timedelta(seconds=settings.turn_lease))
        self.engine = TurnEngine(
            store,
            llm,
            metrics,
            system_prompt=settings.system_prompt,
            budget=settings.context_tokens,
            folds=self._folds,
        )
        self._streams = TurnStreams(store)
        self._relay = (
            TurnRelay(store.broadcast, self._streams, store, self._stop_here) if store.broadcast is not None else None
        )
        if self._relay is not None:
            self._relay.start()
            self._streams.relay = self._relay
        self._tasks: set[asyncio.Task[None]] = set()
        self._janitor = asyncio.create_task(self._purge_expired_keys(), name="chatkeep-key-purge")

    async def aclose(self) -> None:
        """Stop the turns still running and wait while they store what they wrote.

        The server gives requests in flight their grace before it closes the service (a
        streamed turn's request lasts as long as the turn, even when its client has gone), so
        what still runs now has had its time: a streamed turn stops and stores its reply so
        far, marked incomplete; summary refreshes finish their current write.
        """
        self._janitor.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._janitor, *self._tasks, return_exceptions=True)
        await self._summaries.aclose()
        if self._folds is not None:
            await self._folds.aclose()
        if self._relay is not None:
            await self._relay.aclose()

    async def readiness(self) -> dict[str, str]:
        """What serves: the store (answering, schema current) and the LLM provider. Raises StoreUnavailableError."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                await self.store.check_ready()
                if self._rate_limit is not None:
                    await self._rate_limit.check_ready()
        except TimeoutError:
            raise StoreUnavailableError(f"the store did not answer within {READY_TIMEOUT_SECONDS:g}s") from None
        return {"status": "ready", "store": "ok", "llm": self.settings.provider}

    async def create_chat(
        self,
        owner: str,
        *,
        title: str | None,
        metadata: dict[str, str],
        system_prompt: str | None,
        key: IdempotencyKey | None = None,
    ) -> Chat:
        """Create a chat; with a key, once: a retry gets the chat the first try created."""
        async with await self.hold_key(owner, key) as hold:
            if hold.replay is not None:
                return chat_from_result(hold.replay)
            chat = await self.store.create_chat(owner, title=title, metadata=metadata, system_prompt=system_prompt)
            hold.succeeded(lambda: chat_result(chat))
            return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        return await self.store.get_chat(owner, chat_id)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        return await self.store.list_chats(owner, page)

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        return await self.store.update_chat(owner, chat_id, changes)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        await self.store.delete_chat(owner, chat_id)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        return await self.store.list_messages(owner, chat_id, page)

    async def summarize(self, owner: str, chat_id: str, *, refresh: bool = False) -> Summary:
        return await self._summaries.summary(owner, chat_id, refresh=refresh)

    async def post_message(self, owner: str, chat_id: str, content: str, *, key: IdempotencyKey | None = None) -> Turn:
        """Run one turn: store the question, ask the LLM with the chat's context, store the reply.

        Raises ChatNotFoundError, RateLimitedError, ChatBusyError, OverloadedError, the
        idempotency errors, or an LLMError naming the stored user message (which stays stored:
        nothing is lost, and a retry with the same key re-runs only the reply).
        """
        chat = await self.chat_to_post_to(owner, chat_id)
        async with await self.hold_key(owner, key) as hold:
            if hold.replay is not None:
                return await self._replayed(owner, chat_id, hold.replay)
            request = self._request(owner, chat, content, hold)
            async with self.engine.holding(self.reserve_turn(chat_id), request):
                outcome = await self.engine.run(request)
            return Turn(outcome.inputs[0], outcome.outputs[0])

    async def stream_message(
        self, owner: str, chat_id: str, content: str, *, key: IdempotencyKey | None = None
    ) -> TurnLog:
        """Start a turn whose reply is streamed; its events go to the returned log.

        Every error `post_message` raises before the LLM call is raised here, before anything
        streams. The turn runs in its own task, so it completes and is stored whether or not
        anyone reads the log.
        """
        chat = await self.chat_to_post_to(owner, chat_id)
        hold = await self.hold_key(owner, key)
        if hold.replay is not None:
            turn = await self._replayed(owner, chat_id, hold.replay)
            return self._streams.ended_log(turn.user_message, turn.assistant_message)
        events = self._streams.new_log(chat_id)
        try:
            slot = self.reserve_turn(chat_id)
        except BaseException:
            await hold.settle()
            raise
        self.background(self.engine.run_watched(slot, self._request(owner, chat, content, hold, events)))
        return events

    async def turn_events(
        self, owner: str, chat_id: str, user_message_id: str, last_event_id: str | None
    ) -> AsyncIterator[list[TurnEvent]]:
        """The events of the turn answering `user_message_id` after `last_event_id`, to resume a
        stream with; ends with the final event whatever id the client last saw.

        Raises ChatNotFoundError, or MessageNotFoundError when the chat has no such message.
        """
        return await self._streams.resume(owner, chat_id, user_message_id, last_event_id)

    async def stop_turn(self, owner: str, chat_id: str, user_message_id: str) -> Message:
        """Stop the reply to `user_message_id` where it is (on any process sharing a PostgreSQL
        store) and answer the stored reply: the text written so far, marked incomplete.

        Raises ChatNotFoundError or MessageNotFoundError, or TurnNotRunningError when no reply to
        that message is being written (it ended, failed, or its server is gone).
        """
        await self.store.get_message(owner, chat_id, user_message_id)
        answered = self._stop_here(user_message_id)
        if answered is not None:
            return (await asyncio.shield(answered)).outputs[0]
        if self._relay is not None and await self._relay.stop(owner, chat_id, user_message_id):
            ended = await self._streams.stored_end(owner, chat_id, user_message_id)
            if ended.message is not None:
                return ended.message
        raise TurnNotRunningError(f"no reply to {user_message_id!r} is being written; it has ended or failed")

    def _request(
        self, owner: str, chat: Chat, content: str, key: HeldKey, watcher: TurnWatcher | None = None
    ) -> TurnRequest:
        """A native turn: one user message in, one reply out, replayed by its two message ids."""
        return TurnRequest(owner, chat, [NewMessage(Role.USER, content)], key, _turn_replay, watcher=watcher)

    def _stop_here(self, user_message_id: str) -> "asyncio.Future[TurnOutcome] | None":
        return self.engine.stop(user_message_id)

    async def _replayed(self, owner: str, chat_id: str, result: str) -> Turn:
        user_message_id, assistant_message_id = turn_from_result(result)
        question = await self.store.get_message(owner, chat_id, user_message_id)
        return Turn(question, await self.store.get_message(owner, chat_id, assistant_message_id))

    async def hold_key(self, owner: str, key: IdempotencyKey | None) -> HeldKey:
        """Claim an Idempotency-Key for a request (see idempotency.py); a replay is counted."""
        hold = await self._keys.hold(owner, key)
        if hold.replay is not None:
            self._metrics.idempotent_replay()
        return hold

    def reserve_turn(self, line: str) -> TurnSlot:
        """A slot in a line of turns (a chat's id; or a key of its own, to be counted in flight)."""
        return self._turns.reserve(line)

    async def chat_to_post_to(self, owner: str, chat_id: str) -> Chat:
        """The chat, once the owner may post: raises OverloadedError, ChatNotFoundError, or RateLimitedError."""
        self._turns.check_capacity()
        chat = await self.store.get_chat(owner, chat_id)
        await self._take_rate_slot(owner)
        return chat

    async def admit(self, owner: str) -> None:
        """Let the owner start a turn that belongs to no chat: raises OverloadedError or RateLimitedError."""
        self._turns.check_capacity()
        await self._take_rate_slot(owner)

    async def _take_rate_slot(self, owner: str) -> None:
        if self._rate_limit is not None:
            await self._rate_limit.check(owner)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task the service owns: shutdown waits for it instead of cutting it off."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge_expired_keys(self) -> None:
        while True:
            await asyncio.sleep(PURGE_KEYS_EVERY_SECONDS)
            try:
                purged = await self._keys.purge()
            except Exception:
                log.exception("purging expired idempotency keys failed")
            else:
                log.info("purged %d expired idempotency keys", purged)


def _turn_replay(outcome: TurnOutcome) -> str:
    return turn_result(outcome.inputs[-1].id, outcome.outputs[0].id)
