"""ChatService: the turn, the only place that combines the store and the LLM.

A turn holds its slot in its chat's line (`TurnQueue`, and the store's cross-process lease) for its
whole length, so turns on one chat run one at a time in arrival order and each reply is stored
right after its question. Nothing else is held across the LLM call: other chats go on, and the
store is only touched in short calls before and after it. Streamed turns run the same steps in
a task of their own, writing their events to a `TurnLog` that HTTP streams read.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

from chatkeep.config import Settings
from chatkeep.context import build_context
from chatkeep.domain import (
    Chat,
    ChatChanges,
    Message,
    MessageStatus,
    NewMessage,
    Page,
    PageRequest,
    PromptMessage,
    Role,
    Summary,
)
from chatkeep.errors import (
    ChatkeepError,
    ChatMovedOnError,
    LLMError,
    StoreUnavailableError,
    TurnNotRunningError,
    TurnStoppedError,
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
from chatkeep.llm import LLM, Reply
from chatkeep.metrics import Metrics
from chatkeep.rate_limit import RateLimit
from chatkeep.store import ChatStore
from chatkeep.summaries import ExtractiveSummarizer, LLMSummarizer, Summarizer
from chatkeep.summary_keeper import SummaryKeeper
from chatkeep.turn_relay import TurnRelay
from chatkeep.turn_streams import TurnEvent, TurnLog, TurnStreams
from chatkeep.turns import TurnQueue, TurnSlot

log = logging.getLogger(__name__)

PURGE_KEYS_EVERY_SECONDS = 3600.0
READY_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True, frozen=True)
class Turn:
    user_message: Message
    assistant_message: Message


@dataclass(slots=True)
class _Asked:
    """A turn being run: who asked what on which chat, and what it holds while it runs."""

    owner: str
    chat: Chat
    content: str
    key: HeldKey
    events: TurnLog | None = None  # where a streamed turn's events go
    ticket: int | None = None  # the store's hold on the chat's turn, which fences its appends


@dataclass(slots=True, eq=False)
class _Running:
    """A turn of this process past its question: where to stop it, and its answer once stored."""

    task: "asyncio.Task[Any] | None"
    answered: "asyncio.Future[Message]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    replying: bool = False  # in the part a stop request may cut short
    stop_requested: bool = False


class _HeldTurn:
    """The chat's turn, for an `async with` block: this process's line first, then other
    processes' (the store's lease, whose ticket the turn's appends carry); the wait is counted.

    A class rather than a generator-based context manager: every turn enters one.
    """

    __slots__ = ("_asked", "_lease", "_metrics", "_slot")

    def __init__(
        self, slot: TurnSlot, lease: AbstractAsyncContextManager[int | None], metrics: Metrics, asked: _Asked
    ) -> None:
        self._slot, self._lease, self._metrics, self._asked = slot, lease, metrics, asked

    async def __aenter__(self) -> None:
        started = time.perf_counter()
        self._metrics.turns_waiting(1)
        try:
            await self._slot.__aenter__()
            try:
                self._asked.ticket = await self._lease.__aenter__()
            except BaseException:
                await self._slot.__aexit__(None, None, None)
                raise
        finally:
            self._metrics.turns_waiting(-1)
        self._metrics.turn_waited(time.perf_counter() - started)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            await self._lease.__aexit__(kind, error, trace)
        finally:
            await self._slot.__aexit__(kind, error, trace)


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
        # A held key is refreshed a few times per lease; one not refreshed for a whole lease lost its process.
        self._keys = IdempotencyKeys(store, abandoned_after=timedelta(seconds=settings.turn_lease))
        self._streams = TurnStreams(store)
        self._relay = (
            TurnRelay(store.broadcast, self._streams, store, self._stop_here) if store.broadcast is not None else None
        )
        if self._relay is not None:
            self._relay.start()
            self._streams.relay = self._relay
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, _Running] = {}  # turns past their question, by user message id
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
        async with await self._keys.hold(owner, key) as hold:
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
        chat = await self._chat_to_post_to(owner, chat_id)
        async with await self._keys.hold(owner, key) as hold:
            if hold.replay is not None:
                self._metrics.idempotent_replay()
                return await self._replayed(owner, chat_id, hold.replay)
            asked = _Asked(owner, chat, content, hold)
            async with self._holding_turn(self._turns.reserve(chat_id), asked):
                return await self._turn(asked)

    async def stream_message(
        self, owner: str, chat_id: str, content: str, *, key: IdempotencyKey | None = None
    ) -> TurnLog:
        """Start a turn whose reply is streamed; its events go to the returned log.

        Every error `post_message` raises before the LLM call is raised here, before anything
        streams. The turn runs in its own task, so it completes and is stored whether or not
        anyone reads the log.
        """
        chat = await self._chat_to_post_to(owner, chat_id)
        hold = await self._keys.hold(owner, key)
        if hold.replay is not None:
            self._metrics.idempotent_replay()
            turn = await self._replayed(owner, chat_id, hold.replay)
            return self._streams.ended_log(turn.user_message, turn.assistant_message)
        events = self._streams.new_log(chat_id)
        try:
            slot = self._turns.reserve(chat_id)
        except BaseException:
            await hold.settle()
            raise
        self._background(self._streamed_turn(slot, _Asked(owner, chat, content, hold, events), events))
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
            return await asyncio.shield(answered)
        if self._relay is not None and await self._relay.stop(owner, chat_id, user_message_id):
            ended = await self._streams.stored_end(owner, chat_id, user_message_id)
            if ended.message is not None:
                return ended.message
        raise TurnNotRunningError(f"no reply to {user_message_id!r} is being written; it has ended or failed")

    def _holding_turn(self, slot: TurnSlot, asked: _Asked) -> "_HeldTurn":
        return _HeldTurn(slot, self.store.turn_lease(asked.owner, asked.chat.id), self._metrics, asked)

    async def _turn(self, asked: _Asked) -> Turn:
        """The turn itself, its slot in line held: question, context, reply, stored reply."""
        question, chat_prompt = await self._question(asked)
        if asked.events is not None:
            asked.events.user_message(question)
        running = _Running(asyncio.current_task())
        self._running[question.id] = running
        try:
            reply = await self._reply(asked, question, chat_prompt, running)
            answer = await self._answer(asked, question, reply)
        except BaseException as error:
            running.answered.set_exception(TurnNotRunningError(f"the turn answering {question.id!r} failed"))
            running.answered.exception()  # retrieved: nobody need wait for it
            raise error
        finally:
            del self._running[question.id]
        running.answered.set_result(answer)
        return Turn(question, answer)

    async def _reply(self, asked: _Asked, question: Message, chat_prompt: str | None, running: "_Running") -> Reply:
        """The LLM's reply to the chat so far; a reply stopped on request (or a streamed one cut by
        shutdown) is what was written by then, marked incomplete."""
        system_prompt = self.settings.system_prompt if chat_prompt is None else chat_prompt
        parts: list[str] = []
        running.replying = True
        try:
            prompt = await build_context(
                self.store, asked.owner, asked.chat.id, system_prompt=system_prompt, budget=self.settings.context_tokens
            )
            if asked.events is None:
                return await self.llm.complete(prompt)
            return await self._streamed_reply(prompt, asked.events, parts)
        except LLMError as error:
            error.user_message_id = question.id
            raise
        except asyncio.CancelledError:
            if not running.stop_requested and asked.events is None:
                raise  # a plain turn cut off by shutdown: its question stays, a retry runs the reply
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return Reply("".join(parts), model=None, usage=None, status=MessageStatus.INCOMPLETE)
        finally:
            running.replying = False

    async def _answer(self, asked: _Asked, question: Message, reply: Reply) -> Message:
        """Store the reply to `question`: the turn's answer, for the key to replay and the stream to end with."""
        stored = NewMessage(Role.ASSISTANT, reply.content, model=reply.model, usage=reply.usage, status=reply.status)
        answer = await self.store.append_message(asked.owner, asked.chat.id, stored, ticket=asked.ticket)
        asked.key.succeeded(lambda: turn_result(question.id, answer.id))
        if asked.events is not None:
            asked.events.assistant_message(answer)
        return answer

    def _stop_here(self, user_message_id: str) -> "asyncio.Future[Message] | None":
        """Stop the reply to `user_message_id` if this process writes it; the future of its answer."""
        running = self._running.get(user_message_id)
        if running is None:
            return None
        if running.replying and not running.stop_requested:
            running.stop_requested = True
            if running.task is not None:
                running.task.cancel()
        return running.answered

    async def _question(self, asked: _Asked) -> tuple[Message, str | None]:
        """The stored user message (a new one, or the one whose reply a retried key re-runs) and
        the chat's system prompt as it is now, when the turn runs: it may have changed while the
        turn waited in line."""
        owner, chat_id, key = asked.owner, asked.chat.id, asked.key
        if key.retry_of is None:
            question, system_prompt = await self.store.append_question(
                owner, chat_id, asked.content, ticket=asked.ticket
            )
            await key.question_stored(question.id)
            return question, system_prompt
        question = await self.store.get_message(owner, chat_id, key.retry_of)
        if (await self.store.message_stats(owner, chat_id)).last_seq != question.seq:
            raise ChatMovedOnError(
                f"messages came after {question.id!r} since its reply failed; post it again with a new key"
            )
        return question, (await self.store.get_chat(owner, chat_id)).system_prompt

    async def _streamed_reply(self, prompt: list[PromptMessage], events: TurnLog, parts: list[str]) -> Reply:
        """The reply as it streams into `events`, its text so far kept in `parts`."""
        async with aclosing(self.llm.stream(prompt)) as items:
            async for item in items:
                if isinstance(item, Reply):
                    return item
                parts.append(item)
                events.delta(item)
        raise AssertionError("an LLM stream ends with its Reply")

    async def _streamed_turn(self, slot: TurnSlot, asked: _Asked, events: TurnLog) -> None:
        try:
            async with asked.key, self._holding_turn(slot, asked):
                await self._turn(asked)
        except ChatkeepError as error:
            events.fail(error)
        except Exception:
            log.exception("streamed turn on chat %s failed", asked.chat.id)
            events.fail(ChatkeepError("the turn failed unexpectedly"))
        finally:
            if not events.done:  # stopped before its reply began (the server is shutting down)
                events.fail(TurnStoppedError("the turn was stopped before its reply began; post it again"))

    async def _replayed(self, owner: str, chat_id: str, result: str) -> Turn:
        user_message_id, assistant_message_id = turn_from_result(result)
        question = await self.store.get_message(owner, chat_id, user_message_id)
        return Turn(question, await self.store.get_message(owner, chat_id, assistant_message_id))

    async def _chat_to_post_to(self, owner: str, chat_id: str) -> Chat:
        """The chat, once the owner may post: raises OverloadedError, ChatNotFoundError, or RateLimitedError."""
        self._turns.check_capacity()
        chat = await self.store.get_chat(owner, chat_id)
        if self._rate_limit is not None:
            await self._rate_limit.check(owner)
        return chat

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
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
