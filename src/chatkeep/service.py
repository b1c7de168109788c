"""ChatService: the turn and the summaries, the only place that combines the store and the LLM.

A turn holds its chat's place in the `TurnQueue` for its whole length, so turns on one chat run
one at a time in arrival order and each reply is stored right after its question. Nothing else
is held across the LLM call: other chats go on, and the store is only touched in short calls
before and after it.
"""

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from chatkeep.config import Settings
from chatkeep.context import build_context, message_tokens
from chatkeep.domain import (
    Chat,
    ChatChanges,
    Message,
    NewMessage,
    Page,
    PageRequest,
    PromptMessage,
    Role,
    Summary,
    SummaryText,
    utcnow,
)
from chatkeep.errors import ChatkeepError, InvalidCursorError, LLMError, MessageNotFoundError, ReplyNotFoundError
from chatkeep.llm import LLM, Reply
from chatkeep.rate_limit import RateLimit
from chatkeep.store import ChatStore
from chatkeep.turn_events import TurnLog, TurnLogs
from chatkeep.turns import Place, TurnQueue

log = logging.getLogger(__name__)

SUMMARY_BATCH = 256


@dataclass(slots=True, frozen=True)
class Turn:
    user_message: Message
    assistant_message: Message


class ChatService:
    def __init__(self, store: ChatStore, llm: LLM, settings: Settings) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self._rate_limit = RateLimit(settings.rate_limit) if settings.rate_limit else None
        self._turns = TurnQueue(max_waiting=settings.max_waiting_turns, max_in_flight=settings.max_turns_in_flight)
        self._summaries: dict[str, asyncio.Task[SummaryText | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._turn_logs = TurnLogs()

    async def aclose(self) -> None:
        """Wait for streamed turns and summary refreshes still running, so none is cut off mid-write."""
        await asyncio.gather(*self._tasks, *self._summaries.values(), return_exceptions=True)

    async def create_chat(
        self, owner: str, *, title: str | None, metadata: dict[str, str], system_prompt: str | None
    ) -> Chat:
        return await self.store.create_chat(owner, title=title, metadata=metadata, system_prompt=system_prompt)

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

    async def post_message(self, owner: str, chat_id: str, content: str) -> Turn:
        """Run one turn: store the question, ask the LLM with the chat's context, store the reply.

        Raises ChatNotFoundError, ChatBusyError when too many turns wait on the chat, or an
        LLMError naming the stored user message (which stays stored: nothing is lost).
        """
        chat = await self._chat_to_post_to(owner, chat_id)
        async with self._turns.reserve(chat_id), self.store.turn_lease(owner, chat_id):
            question, prompt = await self._ask(owner, chat, content)
            try:
                reply = await self.llm.complete(prompt)
            except LLMError as error:
                error.user_message_id = question.id
                raise
            answer = await self._answer(owner, chat_id, reply)
        return Turn(question, answer)

    async def stream_message(self, owner: str, chat_id: str, content: str) -> TurnLog:
        """Start a turn whose reply is streamed; its events go to the returned log.

        ChatNotFoundError and ChatBusyError are raised here, before anything streams. The turn
        runs in its own task, so it completes and is stored whether or not anyone reads the log.
        """
        chat = await self._chat_to_post_to(owner, chat_id)
        place = self._turns.reserve(chat_id)
        log = TurnLog(chat_id)
        self._background(self._streamed_turn(place, owner, chat, content, log))
        return log

    async def turn_events(self, owner: str, chat_id: str, user_message_id: str) -> TurnLog:
        """The log of the turn that answers `user_message_id`, to resume a stream from.

        A turn no longer (or never) streamed by this process is rebuilt from the store: its
        stored reply, or an error event when there is none. Raises ChatNotFoundError, or
        MessageNotFoundError when the chat has no such message.
        """
        await self.store.get_chat(owner, chat_id)
        log = self._turn_logs.get(user_message_id)
        if log is not None and log.chat_id == chat_id:
            return log
        try:
            following = await self.store.list_messages(owner, chat_id, PageRequest(limit=1, after=user_message_id))
        except InvalidCursorError:
            raise MessageNotFoundError(f"no message {user_message_id!r} in chat {chat_id!r}") from None
        log = TurnLog(chat_id)
        reply = following.data[0] if following.data else None
        if reply is not None and reply.role is Role.ASSISTANT:
            log.assistant_message(reply)
        else:
            log.fail(ReplyNotFoundError(f"no reply to message {user_message_id!r} is stored or being written here"))
        return log

    async def _streamed_turn(self, place: Place, owner: str, chat: Chat, content: str, events: TurnLog) -> None:
        question: Message | None = None
        try:
            async with place, self.store.turn_lease(owner, chat.id):
                question, prompt = await self._ask(owner, chat, content)
                self._turn_logs.running(question.id, events)
                events.user_message(question)
                reply = None
                async for item in self.llm.stream(prompt):
                    if isinstance(item, Reply):
                        reply = item
                    else:
                        events.delta(item)
                assert reply is not None, "an LLM stream ends with its Reply"
                events.assistant_message(await self._answer(owner, chat.id, reply))
        except ChatkeepError as error:
            if isinstance(error, LLMError) and question is not None:
                error.user_message_id = question.id
            events.fail(error)
        except Exception:
            log.exception("streamed turn on chat %s failed", chat.id)
            events.fail(ChatkeepError("the turn failed unexpectedly"))
        finally:
            if question is not None:
                self._turn_logs.finished(question.id)

    async def _chat_to_post_to(self, owner: str, chat_id: str) -> Chat:
        """The chat, once the owner may post: raises ChatNotFoundError, or RateLimitedError."""
        chat = await self.store.get_chat(owner, chat_id)
        if self._rate_limit is not None:
            await self._rate_limit.check(owner)
        return chat

    async def _ask(self, owner: str, chat: Chat, content: str) -> tuple[Message, list[PromptMessage]]:
        """Store the user's message, then build the context that includes it."""
        question = await self.store.append_message(owner, chat.id, NewMessage(Role.USER, content))
        system_prompt = self.settings.system_prompt if chat.system_prompt is None else chat.system_prompt
        prompt = await build_context(
            self.store, owner, chat.id, system_prompt=system_prompt, budget=self.settings.context_tokens
        )
        return question, prompt

    async def _answer(self, owner: str, chat_id: str, reply: Reply) -> Message:
        message = NewMessage(Role.ASSISTANT, reply.content, model=reply.model, usage=reply.usage)
        return await self.store.append_message(owner, chat_id, message)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task the service owns: shutdown waits for it instead of cutting it off."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def summarize(self, owner: str, chat_id: str, *, refresh: bool = False) -> Summary:
        """Exact counts, and the cached summary brought up to date when stale or asked to.

        When the LLM fails, the last good summary is served marked stale (or none at all):
        counts never fail because of the LLM. Raises ChatNotFoundError.
        """
        stats = await self.store.message_stats(owner, chat_id)
        cached = await self.store.get_summary(owner, chat_id)
        if stats.last_seq and (refresh or cached is None or cached.up_to_seq < stats.last_seq):
            cached = await self._refreshed_summary(owner, chat_id, cached, from_scratch=refresh) or cached
            stats = await self.store.message_stats(owner, chat_id)
        stale = (cached.up_to_seq if cached else 0) < stats.last_seq
        return Summary(chat_id=chat_id, stats=stats, text=cached, stale=stale)

    async def _refreshed_summary(
        self, owner: str, chat_id: str, cached: SummaryText | None, *, from_scratch: bool
    ) -> SummaryText | None:
        """Refresh once per chat at a time: concurrent callers share one running refresh.

        The refresh runs in its own task so a client that goes away does not waste it.
        """
        task = self._summaries.get(chat_id)
        if task is None:
            start = None if from_scratch else cached
            task = asyncio.create_task(self._fold_summary(owner, chat_id, start))
            self._summaries[chat_id] = task
            task.add_done_callback(lambda _: self._summaries.pop(chat_id, None))
        return await asyncio.shield(task)

    async def _fold_summary(self, owner: str, chat_id: str, start: SummaryText | None) -> SummaryText | None:
        """Fold the messages after `start` into it, batch by batch; None when the LLM failed at once."""
        summary = start
        budget = self.settings.context_tokens // 2
        while True:
            batch = await self._messages_after(owner, chat_id, summary.up_to_seq if summary else 0, budget)
            if not batch:
                return summary
            previous = (summary.summary, summary.highlights) if summary else None
            try:
                text, highlights = await self.llm.summarize(previous, batch)
            except LLMError as error:
                log.warning("summary of chat %s failed: %s", chat_id, error.detail)
                return summary
            summary = SummaryText(text, highlights, up_to_seq=batch[-1].seq, created_at=utcnow())
            await self.store.save_summary(owner, chat_id, summary)

    async def _messages_after(self, owner: str, chat_id: str, after_seq: int, budget: int) -> Sequence[Message]:
        """The oldest messages after `after_seq` that fit `budget` tokens (at least one)."""
        window = await self.store.recent_messages(
            owner, chat_id, limit=SUMMARY_BATCH, before_seq=after_seq + SUMMARY_BATCH + 1, after_seq=after_seq
        )
        batch: list[Message] = []
        for message in reversed(window):
            budget -= message_tokens(message.content)
            if batch and budget < 0:
                break
            batch.append(message)
        return batch
