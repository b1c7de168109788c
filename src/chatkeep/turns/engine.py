"""The turn: the only place that combines the store and the LLM.

A turn holds its chat for its whole length (this process's queue, then the store's ticket across
processes), so turns on one chat run one at a time in arrival order and each reply is stored
right after what it answers. Nothing else is held across the LLM call: other chats go on, and
the store is only touched in short calls before and after it.

One engine, whichever API asked: a native message post (one user message in, one reply out), a
response of OpenAI's Responses API (input items in, a message and function calls out; in a
conversation, or chained to earlier responses and kept in no chat) and conversation items
appended (inputs only, no reply) are all a `NewTurn`. Each runs in a `RunningTurn` record: its
events, when someone streams it, are written there, and a stop request cuts its reply short
there, keeping what was written (marked incomplete). The turn's Idempotency-Key is settled here
and nowhere else, once the turn has ended.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from dataclasses import dataclass, replace
from types import TracebackType

from chatkeep.context import build_context, prompt_from_messages, prompt_tokens
from chatkeep.domain import (
    Chat,
    IncompleteReason,
    Message,
    MessageStatus,
    NewMessage,
    PromptMessage,
    Role,
    new_id,
    utcnow,
)
from chatkeep.errors import (
    ChatkeepError,
    ChatMovedOnError,
    InvalidInputError,
    LLMError,
    LLMTimeoutError,
    TurnStoppedError,
)
from chatkeep.llm import LLM, Reply
from chatkeep.llm.base import NO_OPTIONS, CallOptions, ToolCallDelta
from chatkeep.metrics import Metrics
from chatkeep.store import ChatStore, TurnTicket
from chatkeep.summaries.rolling import RollingSummaries
from chatkeep.turns.admission import Admitted
from chatkeep.turns.events import TurnEvents, TurnOutcome
from chatkeep.turns.queue import QueuedTurn
from chatkeep.turns.running import RunningTurn, RunningTurns

log = logging.getLogger(__name__)

QUESTION_LOOKBACK = 16  # messages read at a time walking back from a reply to its question


@dataclass(slots=True, frozen=True)
class Chain:
    """The context of a response chained to earlier ones, which belongs to no chat: its inputs,
    with ids of their own, and the prompt they are answered with."""

    inputs: list[Message]
    prompt: list[PromptMessage]


@dataclass(slots=True, frozen=True)
class NewTurn:
    """A turn to run: what it adds, how the model should answer, and what a retry is answered."""

    inputs: list[NewMessage]  # appended, in order, before the reply
    replay: Callable[[TurnOutcome], str]  # what a retry with the same Idempotency-Key is answered
    options: CallOptions = NO_OPTIONS
    instructions: str | None = None  # replaces the chat's system prompt for this turn
    default_prompt: bool = True  # False: a chat that sets no system prompt is sent none (OpenAI's API adds none)
    reply_id: str | None = None  # the id the reply's text is stored under, when announced beforehand
    answered: bool = True  # False: the inputs are stored and that is all (conversation items)
    chain: Chain | None = None  # set for a response chained to earlier ones: no chat, its own prompt
    kept: Callable[[TurnOutcome], Awaitable[None]] | None = None  # once the reply is stored, before the turn ends
    answers: str | None = None  # a stored question whose reply was lost, answered (no inputs then)
    regenerate: bool = False  # with `answers` (a question, or a reply to one): answered anew on a new branch
    replaces: str | None = None  # a user question the inputs take the place of, on a new branch (an edit)


class TurnEngine:
    def __init__(
        self,
        store: ChatStore,
        llm: LLM,
        metrics: Metrics,
        running: RunningTurns,
        *,
        system_prompt: str,
        budget: int,
        rolling: RollingSummaries | None = None,
        models: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._models = tuple(models)  # the models served, the default first
        self._llm = llm
        self._metrics = metrics
        self._running = running
        self._system_prompt = system_prompt  # for chats that set none
        self._budget = budget  # tokens of context sent upstream
        self._rolling = rolling  # None: long chats are truncated, never summarized

    async def run(self, admitted: Admitted, turn: NewTurn) -> TurnOutcome:
        """Run an admitted turn now. Raises what its parts raise: an LLMError names the stored
        question, which stays stored (a retry with the same key re-runs only the reply)."""
        running = RunningTurn(_chat_id(admitted), None)
        running.task = asyncio.current_task()
        return await self._run(admitted, turn, running)

    def start(self, admitted: Admitted, turn: NewTurn) -> RunningTurn:
        """Run an admitted turn in the background, streaming its events to the record returned: it
        completes and is stored whether or not anyone reads them, and any failure is its last event."""
        running = RunningTurn(_chat_id(admitted), TurnEvents())
        self._running.start(self._run_streamed(admitted, turn, running), running)
        return running

    async def _run_streamed(self, admitted: Admitted, turn: NewTurn, running: RunningTurn) -> None:
        events = running.events
        assert events is not None
        try:
            await self._run(admitted, turn, running)
        except ChatkeepError as error:
            events.failed(error)
        except Exception:
            log.exception("a streamed turn on chat %s failed", running.chat_id)
            events.failed(ChatkeepError("the turn failed unexpectedly"))
        finally:
            if not events.done:  # cut off before its reply began: the server is shutting down
                events.failed(TurnStoppedError("the turn was stopped before its reply began; post it again"))

    async def _run(self, admitted: Admitted, turn: NewTurn, running: RunningTurn) -> TurnOutcome:
        try:
            async with admitted.key:  # settled when the turn ends, however it ends
                async with self._hold(admitted, turn, running):
                    outcome = await self._in_turn(admitted, turn, running)
                if turn.kept is not None:
                    await turn.kept(outcome)
                admitted.key.succeeded(lambda: turn.replay(outcome))
        except BaseException:
            running.failed()
            raise
        finally:
            self._running.ended(running)
        running.answered(outcome)
        return outcome

    def model_for(self, options: CallOptions, chat: Chat | None) -> str | None:
        """The model a turn asks for: the request's own, else its chat's (while the server still
        serves it: a chat outlives a change of CHATKEEP_LLM_MODELS), else the default."""
        if options.model is not None:
            return options.model
        if chat is not None and chat.model in self._models:
            return chat.model
        return self._models[0] if self._models else None

    def _options(self, admitted: Admitted, turn: NewTurn) -> tuple[CallOptions, str | None]:
        """The turn's call options, naming its chat's model when that is not the default (a call
        that names none asks the default), and the model they ask for."""
        model = self.model_for(turn.options, admitted.chat)
        if model == turn.options.model or (self._models and model == self._models[0]):
            return turn.options, model
        return replace(turn.options, model=model), model

    def _hold(self, admitted: Admitted, turn: NewTurn, running: RunningTurn) -> "TurnHold":
        assert admitted.queued is not None, "a replay runs nothing"
        if admitted.chat is None:
            lease: AbstractAsyncContextManager[TurnTicket | None] = nullcontext()
        else:
            lease = self._store.turn_lease(admitted.owner, admitted.chat.id, question=_question_of(turn, admitted))
        return TurnHold(admitted.queued, lease, self._metrics, running)

    async def _in_turn(self, admitted: Admitted, turn: NewTurn, running: RunningTurn) -> TurnOutcome:
        """The turn itself, its chat held: inputs, context, reply, stored reply."""
        inputs, chat_prompt = await self._inputs(admitted, turn, running.ticket)
        self._running.answering(running, inputs[-1])
        if not turn.answered:
            return TurnOutcome(inputs, [], None)
        if admitted.chat is not None:  # from here on a failure is retried by re-running only the reply
            await admitted.key.question_stored(inputs[-1].id)
        reply, summary_due = await self._reply(admitted, turn, running, inputs[-1], chat_prompt)
        outcome = TurnOutcome(inputs, await self._outputs(admitted, turn, running, reply), reply)
        if summary_due and self._rolling is not None and admitted.chat is not None:
            self._rolling.want(admitted.owner, admitted.chat.id)
        return outcome

    async def _inputs(
        self, admitted: Admitted, turn: NewTurn, ticket: TurnTicket | None
    ) -> tuple[list[Message], str | None]:
        """The stored inputs (new ones, or the question whose reply a retried key re-runs) and the
        chat's system prompt as it is now, when the turn runs: it may have changed while it waited."""
        owner, chat, key = admitted.owner, admitted.chat, admitted.key
        if chat is None:
            assert turn.chain is not None
            return turn.chain.inputs, None
        retry_of = key.retry_of or turn.answers
        if retry_of is not None:
            return await self._retried(owner, chat.id, retry_of, ticket, regenerate=turn.regenerate)
        if ticket is not None and ticket.question is not None:  # stored as the turn was granted
            return [ticket.question], ticket.system_prompt
        if turn.replaces is not None:
            replaced = await self._store.get_message(owner, chat.id, turn.replaces)
            if not _asked_by_user(replaced):
                raise InvalidInputError(f"{replaced.id!r} is not a question of the user's", param="message_id")
            await self._store.fork_at(owner, chat.id, replaced.seq, ticket=ticket)
        content = _question_of(turn, admitted)
        if content is not None:  # a native turn on a chat whose queue was not empty: one round trip
            question, chat_prompt = await self._store.append_question(owner, chat.id, content, ticket=ticket)
            return [question], chat_prompt
        return await self._store.append_messages(
            owner, chat.id, turn.inputs, ticket=ticket, ends_turn=not turn.answered
        )

    async def _retried(
        self, owner: str, chat_id: str, message_id: str, ticket: TurnTicket | None, *, regenerate: bool
    ) -> tuple[list[Message], str | None]:
        """The stored question whose reply is run again. A retry needs it to be the chat's last
        message still; a regenerate (of it, or of a reply to it) takes what came after it off the
        current branch, where it stays as the sibling branch of the new reply."""
        message = await self._store.get_message(owner, chat_id, message_id)
        question = await self._question_before(owner, chat_id, message) if regenerate else message
        if not _asked_by_user(question):
            param = "message_id" if regenerate else "user_message_id"
            raise InvalidInputError(f"{question.id!r} is not a question of the user's", param=param)
        chat = await self._store.get_chat(owner, chat_id)
        if chat.message_count != question.seq:
            if not regenerate:
                raise ChatMovedOnError(
                    f"{question.id!r} is no longer the chat's last message: it has a reply, or messages came after"
                    " it; regenerate it to answer it on a new branch, or post it again as a new message"
                )
            await self._store.fork_at(owner, chat_id, question.seq + 1, ticket=ticket)
        return [question], chat.system_prompt

    async def _question_before(self, owner: str, chat_id: str, message: Message) -> Message:
        """`message` when it is the user's question, else the last question of the user's before it
        (the one a reply answers); `message` itself when there is none."""
        seq = message.seq
        while not _asked_by_user(message) and seq > 1:
            earlier = await self._store.recent_messages(owner, chat_id, limit=QUESTION_LOOKBACK, before_seq=seq)
            for candidate in earlier:
                if _asked_by_user(candidate):
                    return candidate
            if not earlier:
                break
            seq = earlier[-1].seq
        return message

    async def switch_branch(self, admitted: Admitted, message_id: str) -> Chat:
        """Make the branch through `message_id` current, in the chat's turn order (after the turns
        ahead of it, in every process), so no turn's context changes under it."""
        assert admitted.chat is not None
        assert admitted.queued is not None
        owner, chat_id = admitted.owner, admitted.chat.id
        running = RunningTurn(chat_id, None)
        async with TurnHold(admitted.queued, self._store.turn_lease(owner, chat_id), self._metrics, running):
            return await self._store.switch_branch(owner, chat_id, message_id, ticket=running.ticket)

    async def _reply(
        self, admitted: Admitted, turn: NewTurn, running: RunningTurn, question: Message, chat_prompt: str | None
    ) -> tuple[Reply, bool]:
        """The LLM's reply to the chat so far, and whether the chat's rolling summary is due an
        update. A reply cut short once it had begun (stopped on request, a timeout or failure of the
        upstream mid-reply, shutdown) is what was written by then, marked incomplete with the reason."""
        parts: list[str] = []
        options, model = self._options(admitted, turn)
        running.replying = True
        try:
            prompt, summary_due = await self._prompt(admitted, turn, running.ticket, chat_prompt)
            if running.events is None:
                return _answered_by(await self._llm.complete(prompt, options), model), summary_due
            return _answered_by(await self._streamed(prompt, options, running.events, parts), model), summary_due
        except LLMError as error:
            if parts:
                reason = (
                    IncompleteReason.TIMEOUT if isinstance(error, LLMTimeoutError) else IncompleteReason.UPSTREAM_ERROR
                )
                log.warning("the reply to %s was cut short (%s): %s", question.id, reason, error.detail)
                return _cut_short(parts, reason, model), False
            error.user_message_id = question.id
            raise
        except asyncio.CancelledError:
            if not running.stop_requested and running.events is None:
                raise  # a plain turn cut off by shutdown: its question stays, a retry runs the reply
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            reason = IncompleteReason.STOPPED if running.stop_requested else IncompleteReason.SHUTDOWN
            return _cut_short(parts, reason, model), False
        finally:
            running.replying = False

    async def _prompt(
        self, admitted: Admitted, turn: NewTurn, ticket: TurnTicket | None, chat_prompt: str | None
    ) -> tuple[list[PromptMessage], bool]:
        if admitted.chat is None:
            assert turn.chain is not None
            return turn.chain.prompt, False
        context = await build_context(
            self._store,
            admitted.owner,
            admitted.chat.id,
            system_prompt=self._system_prompt_of(turn, chat_prompt),
            budget=self._budget,
            reply_tokens=turn.options.max_tokens or 0,
            summarize_at=self._rolling.summarize_at if self._rolling is not None else None,
            ticket=ticket,
        )
        return context.prompt, context.summary_due

    async def prompt_tokens(self, owner: str, chat: Chat, turn: NewTurn) -> int:
        """The tokens of the prompt `turn` would send if it ran on `chat` now, its inputs after the
        chat's messages, priced as the context builder prices them; nothing is stored."""
        inputs = prompt_from_messages([unstored(message) for message in turn.inputs])
        spent = prompt_tokens(inputs)
        context = await build_context(
            self._store,
            owner,
            chat.id,
            system_prompt=self._system_prompt_of(turn, chat.system_prompt),
            budget=self._budget - spent,
            reply_tokens=turn.options.max_tokens or 0,
            summarize_at=self._rolling.summarize_at if self._rolling is not None else None,
        )
        return prompt_tokens(context.prompt) + spent

    def _system_prompt_of(self, turn: NewTurn, chat_prompt: str | None) -> str:
        """The turn's instructions, else the chat's system prompt, else the default ("": none)."""
        if turn.instructions is not None:
            return turn.instructions
        if chat_prompt is not None:
            return chat_prompt
        return self._system_prompt if turn.default_prompt else ""

    async def _streamed(
        self, prompt: list[PromptMessage], options: CallOptions, events: TurnEvents, parts: list[str]
    ) -> Reply:
        """The reply as it streams to `events` (its text, and the pieces of its tool calls), its text
        so far kept in `parts`."""
        async with aclosing(self._llm.stream(prompt, options)) as items:
            async for item in items:
                if isinstance(item, Reply):
                    return item
                if isinstance(item, ToolCallDelta):
                    events.call_delta(item)
                    continue
                parts.append(item)
                events.delta(item)
        raise AssertionError("an LLM stream ends with its Reply")

    async def _outputs(self, admitted: Admitted, turn: NewTurn, running: RunningTurn, reply: Reply) -> list[Message]:
        """Store the reply; a chained response's is kept with the response, not in a chat."""
        streamed_calls = running.events.call_ids if running.events is not None else {}
        replies = reply_messages(reply, turn.reply_id, [streamed_calls[index] for index in sorted(streamed_calls)])
        owner, chat = admitted.owner, admitted.chat
        if chat is None:
            return [unstored(message) for message in replies]
        if len(replies) == 1:
            return [await self._store.append_message(owner, chat.id, replies[0], ticket=running.ticket, ends_turn=True)]
        outputs, _ = await self._store.append_messages(owner, chat.id, replies, ticket=running.ticket, ends_turn=True)
        return outputs


def _cut_short(parts: list[str], reason: IncompleteReason, model: str | None) -> Reply:
    """A reply cut short: what was written of it by then, by the model asked (the upstream never said)."""
    return Reply("".join(parts), model=model, usage=None, status=MessageStatus.INCOMPLETE, incomplete_reason=reason)


def _answered_by(reply: Reply, model: str | None) -> Reply:
    """`reply`, naming the model that wrote it: the one the upstream reported, else the one asked
    (not every OpenAI-compatible server says), so a stored reply always tells."""
    return reply if reply.model is not None or model is None else replace(reply, model=model)


def _asked_by_user(message: Message) -> bool:
    """A question of the user's: a user message, plain or an item of role user (not a tool's output)."""
    return message.role is Role.USER and (message.item is None or message.item.get("role") == "user")


def _chat_id(admitted: Admitted) -> str:
    return admitted.chat.id if admitted.chat is not None else ""


def _question_of(turn: NewTurn, admitted: Admitted) -> str | None:
    """The text of the one plain user message a new turn stores first, if that is what it stores."""
    inputs = turn.inputs
    if (
        turn.answered
        and turn.answers is None
        and admitted.key.retry_of is None
        and turn.replaces is None
        and len(inputs) == 1
        and inputs[0].item is None
        and inputs[0].role is Role.USER
    ):
        return inputs[0].content
    return None


def reply_messages(reply: Reply, reply_id: str | None = None, call_ids: Sequence[str] = ()) -> list[NewMessage]:
    """What a reply stores: its text as an assistant message (unless it only calls tools; under
    `reply_id` when given), then each function call as a conversation item (under the id its
    stream announced, in `call_ids`, or a new one with OpenAI's prefix, which it checks on items
    sent to it)."""
    usage, model, status = reply.usage, reply.model, reply.status
    messages: list[NewMessage] = []
    if reply.content or not reply.tool_calls:
        messages.append(
            NewMessage(
                Role.ASSISTANT,
                reply.content,
                model=model,
                usage=usage,
                status=status,
                id=reply_id,
                incomplete_reason=reply.incomplete_reason,
            )
        )
        usage = None  # counted once, on the first of the reply's messages
    for n, call in enumerate(reply.tool_calls):
        item = {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}
        text = f"{call.name}({call.arguments})"
        messages.append(
            NewMessage(
                Role.ASSISTANT,
                text,
                model=model,
                usage=usage,
                status=status,
                item=item,
                incomplete_reason=reply.incomplete_reason,
                id=call_ids[n] if n < len(call_ids) else new_id("fc"),
            )
        )
        usage = None
    return messages


def unstored(message: NewMessage) -> Message:
    """A message of a turn on no chat, with an id of its own (items need one)."""
    return Message(
        id=message.id or new_id("msg"),
        chat_id="",
        seq=0,
        role=message.role,
        content=message.content,
        created_at=utcnow(),
        model=message.model,
        usage=message.usage,
        status=message.status,
        item=message.item,
        incomplete_reason=message.incomplete_reason,
    )


class TurnHold:
    """The chat's turn, for an `async with` block: this process's queue first, then other
    processes' (the store's lease, whose ticket goes to the running turn's record, for its
    appends to carry); the wait is counted.

    A class rather than a generator-based context manager: every turn enters one.
    """

    __slots__ = ("_lease", "_metrics", "_queued", "_running")

    def __init__(
        self,
        queued: QueuedTurn,
        lease: AbstractAsyncContextManager[TurnTicket | None],
        metrics: Metrics,
        running: RunningTurn,
    ) -> None:
        self._queued, self._lease, self._metrics, self._running = queued, lease, metrics, running

    async def __aenter__(self) -> None:
        started = time.perf_counter()
        self._metrics.turns_waiting(1)
        try:
            await self._queued.__aenter__()
            try:
                self._running.ticket = await self._lease.__aenter__()
            except BaseException:
                await self._queued.__aexit__(None, None, None)
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
            self._running.ticket = None
            await self._queued.__aexit__(kind, error, trace)
