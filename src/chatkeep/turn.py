"""The turn: the only place that combines the store and the LLM.

A turn holds its slot in its chat's line (`TurnQueue`, and the store's cross-process lease) for
its whole length, so turns on one chat run one at a time in arrival order and each reply is
stored right after what it answers. Nothing else is held across the LLM call: other chats go on,
and the store is only touched in short calls before and after it.

One turn, whatever door it came in by: the native API's (one user message in, one reply out) and
OpenAI's Responses API (input items in, a message and function calls out) are both a
`TurnRequest`. A `TurnWatcher` follows a turn as it runs (the native stream's `TurnLog`, the
Responses API's event stream). A reply can be stopped while it is written (`TurnEngine.stop`):
what was written by then is stored, marked incomplete.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from chatkeep.context import build_context
from chatkeep.domain import Chat, Message, MessageStatus, NewMessage, PromptMessage, Role
from chatkeep.errors import ChatkeepError, ChatMovedOnError, LLMError, Problem, TurnNotRunningError, TurnStoppedError
from chatkeep.folds import Folds
from chatkeep.idempotency import HeldKey
from chatkeep.llm import LLM, Reply
from chatkeep.llm.base import NO_OPTIONS, CallOptions
from chatkeep.metrics import Metrics
from chatkeep.store import ChatStore, TurnTicket
from chatkeep.turns import TurnSlot

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class TurnOutcome:
    inputs: list[Message]  # stored before the reply (or, for a retried key, the stored question)
    outputs: list[Message]  # the reply: a message, function calls, or both
    reply: Reply


class TurnWatcher(Protocol):
    """Follows one turn: what it stored first, its text as it is written, how it ended."""

    def started(self, inputs: list[Message]) -> None: ...

    def delta(self, text: str) -> None: ...

    def ended(self, outcome: TurnOutcome) -> None: ...

    def failed(self, error: Problem) -> None: ...


@dataclass(slots=True)
class TurnRequest:
    """A turn to run: who asks what of which chat, and how the model should answer."""

    owner: str
    chat: Chat
    inputs: list[NewMessage]  # appended, in order, before the reply
    key: HeldKey
    replay: Callable[[TurnOutcome], str]  # what a retry with the same Idempotency-Key is answered
    options: CallOptions = NO_OPTIONS
    instructions: str | None = None  # replaces the chat's system prompt for this turn
    watcher: TurnWatcher | None = None
    reply_id: str | None = None  # the id the reply's text is stored under, when announced beforehand
    ticket: TurnTicket | None = None  # the store's hold on the chat's turn, which fences its appends


@dataclass(slots=True, eq=False)
class _Running:
    """A turn past its inputs: where to stop it, and its outcome once stored."""

    task: "asyncio.Task[Any] | None"
    answered: "asyncio.Future[TurnOutcome]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    replying: bool = False  # in the part a stop request may cut short
    stop_requested: bool = False
    fold_wanted: bool = False  # its context found the chat's older messages worth folding


class TurnEngine:
    def __init__(
        self,
        store: ChatStore,
        llm: LLM,
        metrics: Metrics,
        *,
        system_prompt: str,
        budget: int,
        folds: Folds | None = None,
    ) -> None:
        self._store = store
        self._llm = llm
        self._metrics = metrics
        self._system_prompt = system_prompt  # for chats that set none
        self._budget = budget  # tokens of context sent upstream
        self._folds = folds  # None: long chats are truncated, never summarized
        self._running: dict[str, _Running] = {}  # by the id of the last input (the "user message")

    def holding(self, slot: TurnSlot, request: TurnRequest) -> "HeldTurn":
        """The chat's turn for an `async with` block (see HeldTurn)."""
        lease = self._store.turn_lease(request.owner, request.chat.id, question=_question_of(request))
        return HeldTurn(slot, lease, self._metrics, request)

    async def run(self, request: TurnRequest) -> TurnOutcome:
        """The turn itself, its slot in line held: inputs, context, reply, stored reply."""
        inputs, chat_prompt = await self._inputs(request)
        if request.watcher is not None:
            request.watcher.started(inputs)
        running = _Running(asyncio.current_task())
        self._running[inputs[-1].id] = running
        try:
            reply = await self._reply(request, inputs[-1], chat_prompt, running)
            outcome = await self._answer(request, inputs, reply)
        except BaseException as error:
            running.answered.set_exception(TurnNotRunningError(f"the turn answering {inputs[-1].id!r} failed"))
            running.answered.exception()  # retrieved: nobody need wait for it
            raise error
        finally:
            del self._running[inputs[-1].id]
        running.answered.set_result(outcome)
        if running.fold_wanted and self._folds is not None:
            self._folds.want(request.owner, request.chat.id)
        return outcome

    async def run_watched(
        self, slot: TurnSlot, request: TurnRequest, *, then: Callable[[TurnOutcome], Awaitable[None]] | None = None
    ) -> None:
        """Run the turn in the background: its watcher hears how it went, however it ends.

        `then` runs once the turn is stored, still under its Idempotency-Key (to store more, or to
        tell the key what to replay); its failures are the turn's.
        """
        assert request.watcher is not None

        async def turn() -> None:
            async with request.key:
                async with self.holding(slot, request):
                    outcome = await self.run(request)
                if then is not None:
                    await then(outcome)

        await watched(turn(), request.watcher, f"a streamed turn on chat {request.chat.id}")

    def stop(self, user_message_id: str) -> "asyncio.Future[TurnOutcome] | None":
        """Stop the reply to `user_message_id` if this process writes it; the future of its outcome."""
        running = self._running.get(user_message_id)
        if running is None:
            return None
        if running.replying and not running.stop_requested:
            running.stop_requested = True
            if running.task is not None:
                running.task.cancel()
        return running.answered

    async def _inputs(self, request: TurnRequest) -> tuple[list[Message], str | None]:
        """The stored inputs (new ones, or the question whose reply a retried key re-runs) and the
        chat's system prompt as it is now, when the turn runs: it may have changed while it waited."""
        owner, chat_id, key = request.owner, request.chat.id, request.key
        if key.retry_of is not None:
            return await self._retried(request, key.retry_of)
        content, ticket = _question_of(request), request.ticket
        if ticket is not None and ticket.question is not None:  # stored as the turn was granted
            inputs, chat_prompt = [ticket.question], ticket.system_prompt
        elif content is not None:
            # The native turn's path when the chat's line was not empty: one user message, one round trip.
            question, chat_prompt = await self._store.append_question(owner, chat_id, content, ticket=ticket)
            inputs = [question]
        else:
            inputs, chat_prompt = await self._store.append_messages(
                owner, chat_id, request.inputs, ticket=request.ticket
            )
        await key.question_stored(inputs[-1].id)
        return inputs, chat_prompt

    async def _retried(self, request: TurnRequest, question_id: str) -> tuple[list[Message], str | None]:
        owner, chat_id = request.owner, request.chat.id
        question = await self._store.get_message(owner, chat_id, question_id)
        if (await self._store.message_stats(owner, chat_id)).last_seq != question.seq:
            raise ChatMovedOnError(
                f"messages came after {question.id!r} since its reply failed; post it again with a new key"
            )
        return [question], (await self._store.get_chat(owner, chat_id)).system_prompt

    async def _reply(
        self, request: TurnRequest, question: Message, chat_prompt: str | None, running: _Running
    ) -> Reply:
        """The LLM's reply to the chat so far; a reply stopped on request (or a streamed one cut by
        shutdown) is what was written by then, marked incomplete."""
        system_prompt = request.instructions
        if system_prompt is None:
            system_prompt = self._system_prompt if chat_prompt is None else chat_prompt
        parts: list[str] = []
        running.replying = True
        try:
            context = await build_context(
                self._store,
                request.owner,
                request.chat.id,
                system_prompt=system_prompt,
                budget=self._budget,
                reply_tokens=request.options.max_tokens or 0,
                fold_at=self._folds.fold_at if self._folds is not None else None,
                ticket=request.ticket,
            )
            running.fold_wanted = context.fold_wanted
            prompt = context.prompt
            if request.watcher is None:
                return await self._llm.complete(prompt, request.options)
            return await self._streamed_reply(prompt, request, parts)
        except LLMError as error:
            error.user_message_id = question.id
            raise
        except asyncio.CancelledError:
            if not running.stop_requested and request.watcher is None:
                raise  # a plain turn cut off by shutdown: its question stays, a retry runs the reply
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return Reply("".join(parts), model=None, usage=None, status=MessageStatus.INCOMPLETE)
        finally:
            running.replying = False

    async def _streamed_reply(self, prompt: list[PromptMessage], request: TurnRequest, parts: list[str]) -> Reply:
        """The reply as it streams to the turn's watcher, its text so far kept in `parts`."""
        assert request.watcher is not None
        return await stream_reply(self._llm, prompt, request.options, request.watcher, parts)

    async def _answer(self, request: TurnRequest, inputs: list[Message], reply: Reply) -> TurnOutcome:
        """Store the reply: the turn's outcome, for the key to replay and the watcher to end with."""
        owner, chat_id, ticket = request.owner, request.chat.id, request.ticket
        replies = reply_messages(reply, request.reply_id)
        if len(replies) == 1:
            outputs = [await self._store.append_message(owner, chat_id, replies[0], ticket=ticket, ends_turn=True)]
        else:
            outputs, _ = await self._store.append_messages(owner, chat_id, replies, ticket=ticket, ends_turn=True)
        outcome = TurnOutcome(inputs, outputs, reply)
        request.key.succeeded(lambda: request.replay(outcome))
        if request.watcher is not None:
            request.watcher.ended(outcome)
        return outcome


def _question_of(request: TurnRequest) -> str | None:
    """The text of the one plain user message a new turn stores first, if that is what it stores."""
    inputs = request.inputs
    if request.key.retry_of is None and len(inputs) == 1 and inputs[0].item is None and inputs[0].role is Role.USER:
        return inputs[0].content
    return None


async def stream_reply(
    llm: LLM, prompt: list[PromptMessage], options: CallOptions, watcher: TurnWatcher, parts: list[str]
) -> Reply:
    """The LLM's reply as it streams to `watcher`, its text so far kept in `parts`."""
    async with aclosing(llm.stream(prompt, options)) as items:
        async for item in items:
            if isinstance(item, Reply):
                return item
            parts.append(item)
            watcher.delta(item)
    raise AssertionError("an LLM stream ends with its Reply")


async def watched(work: Awaitable[None], watcher: TurnWatcher, what: str) -> None:
    """Await `work`, a turn running in the background, so that its watcher hears how it ended:
    the work itself tells it of success; any failure, or being cut off, is told here."""
    ended = False
    try:
        await work
        ended = True
    except ChatkeepError as error:
        watcher.failed(error)
        ended = True
    except Exception:
        log.exception("%s failed", what)
        watcher.failed(ChatkeepError("the turn failed unexpectedly"))
        ended = True
    finally:
        if not ended:  # cut off before its reply began (the server is shutting down)
            watcher.failed(TurnStoppedError("the turn was stopped before its reply began; post it again"))


def reply_messages(reply: Reply, reply_id: str | None = None) -> list[NewMessage]:
    """What a reply stores: its text as an assistant message (unless it only calls tools; under
    `reply_id` when given), then each function call as a conversation item."""
    usage, model, status = reply.usage, reply.model, reply.status
    messages: list[NewMessage] = []
    if reply.content or not reply.tool_calls:
        messages.append(NewMessage(Role.ASSISTANT, reply.content, model=model, usage=usage, status=status, id=reply_id))
        usage = None  # counted once, on the first of the reply's messages
    for call in reply.tool_calls:
        item = {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}
        text = f"{call.name}({call.arguments})"
        messages.append(NewMessage(Role.ASSISTANT, text, model=model, usage=usage, status=status, item=item))
        usage = None
    return messages


class HeldTurn:
    """The chat's turn, for an `async with` block: this process's line first, then other
    processes' (the store's lease, whose ticket the turn's appends carry); the wait is counted.

    A class rather than a generator-based context manager: every turn enters one.
    """

    __slots__ = ("_lease", "_metrics", "_request", "_slot")

    def __init__(
        self,
        slot: TurnSlot,
        lease: AbstractAsyncContextManager[TurnTicket],
        metrics: Metrics,
        request: TurnRequest,
    ) -> None:
        self._slot, self._lease, self._metrics, self._request = slot, lease, metrics, request

    async def __aenter__(self) -> None:
        started = time.perf_counter()
        self._metrics.turns_waiting(1)
        try:
            await self._slot.__aenter__()
            try:
                self._request.ticket = await self._lease.__aenter__()
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
