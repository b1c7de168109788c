"""OpenAI's Responses API over chatkeep's turns, with OpenAI's two ways of keeping state.

A response is a turn, admitted and run like a native one: with `conversation`, on that chat (it
queues behind the chat's other turns, its input items and its output are appended, and the
chat's stored items are its context); with `previous_response_id` (or neither), on no chat, its
context the chain of earlier responses, each kept with its input. Either way a kept response
(`store`, the default) can be read back, and a retry with the same Idempotency-Key is answered
the response first made. This module only translates: OpenAI's request into a `NewTurn`, the
outcome into OpenAI's response object, and the turn's events into OpenAI's stream
(`response.created` ... `response.completed`), which a client that leaves loses nothing of.
Objects and events are shaped as OpenAI's (`openai/types/responses`).

A background response (`background: true`) is answered at once, queued, and kept from the
start: its record is updated as it runs (in_progress, its text so far) and when it ends, and
the process making it keeps it alive in the store, so that any process can read it, follow its
events (those of its turn, found by the response's id wherever it runs: `TurnLocator`) or
cancel it, and a response whose process died is answered `failed` rather than in_progress for
good. Its record keeps what its events are replayed from once it ended, numbered as they were live.
"""

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from chatkeep.context import message_tokens, prompt_from_messages, prompt_tokens
from chatkeep.domain import (
    IncompleteReason,
    MessageStatus,
    NewMessage,
    PageRequest,
    PromptMessage,
    StoredResponse,
    Usage,
    new_id,
    utcnow,
)
from chatkeep.errors import (
    Failure,
    InvalidInputError,
    PreviousResponseNotFoundError,
    ResponseLostError,
    ResponseNotFoundError,
    StoreUnavailableError,
)
from chatkeep.idempotency import IdempotencyKey
from chatkeep.llm import Reply
from chatkeep.llm.base import CallOptions, ToolCallDelta
from chatkeep.openai_compat.conversations import conversation_items, items_page
from chatkeep.openai_compat.items import item_from_message, referenced, stored_from_item, with_references
from chatkeep.service import ChatService
from chatkeep.turns.admission import Admitted
from chatkeep.turns.engine import Chain, NewTurn, unstored
from chatkeep.turns.events import END_ID, TurnEvent, TurnEvents, TurnOutcome
from chatkeep.turns.relay import decoded, encoded
from chatkeep.turns.running import RunningTurn

log = logging.getLogger(__name__)

Item = dict[str, Any]

MAX_REFERENCED_RESPONSES = 100  # how far back a chain is searched for the items its input references
BEATS_PER_LEASE = 3  # a background response's record is refreshed this often per lease
SETTLE_POLL_SECONDS = 1.0  # how often a follower that hears nothing asks the store how a response went
NO_OUTCOME = TurnOutcome([], [], None)  # the final event of a turn run elsewhere: its record has the outcome


@dataclass(slots=True, frozen=True)
class ResponseRequest:
    """A request of the Responses API, read and checked (the API reads it from HTTP)."""

    inputs: list[NewMessage]
    conversation: str | None
    previous_response_id: str | None
    instructions: str | None
    options: CallOptions
    store: bool
    echo: dict[str, Any]  # the settings the response object repeats as asked (tools, metadata, top_p...)
    key: IdempotencyKey | None = None
    background: bool = False


class PendingResponse:
    """One response being made: its fixed parts, and its object at each step."""

    def __init__(self, request: ResponseRequest, model: str, *, streamed: bool) -> None:
        self.request = request
        self.id = new_id("resp")
        # the id its text streams under, and is stored under (a response not streamed leaves it to the store)
        self.reply_id = new_id("msg") if streamed else None
        self.created_at = int(time.time())
        self.model = model  # the model asked; the object of a finished response names the one that answered
        self.body: dict[str, Any] | None = None  # the finished object
        self.events: TurnEvents | None = None  # a background response's turn's, once it started

    def in_progress(self) -> dict[str, Any]:
        """The object while the response is being made."""
        return self._object("in_progress", [], None)

    def finish(self, outcome: TurnOutcome) -> dict[str, Any]:
        """The finished object (made once: a retry with the same key replays these very bytes)."""
        if self.body is None:
            reply = outcome.reply
            status, incomplete = _ending(reply, background=self.request.background)
            self.body = self._object(
                status, [item_from_message(message) for message in outcome.outputs], reply, incomplete=incomplete
            )
        return self.body

    def queued(self) -> dict[str, Any]:
        """A background response's object while it waits for its turn."""
        return {**self.in_progress(), "status": "queued"}

    def failed(self, error: Failure) -> dict[str, Any]:
        """The object of a response that failed, as its stream's `response.failed` says."""
        return {**self.in_progress(), "status": "failed", "error": failure_object(error)}

    def record(self, body: dict[str, Any], events: list[list[Any]], inputs: list[Item] | None = None) -> StoredResponse:
        """A background response's record, `body` its object now; `events` its turn's, once it ended
        (`Record` reads them back)."""
        request = self.request
        stream = {"reply_id": self.reply_id, "opening": self.in_progress(), "events": events}
        return StoredResponse(
            self.id, request.conversation, request.previous_response_id, utcnow(), body, inputs or [], stream
        )

    def _object(
        self,
        status: str,
        output: list[Item],
        reply: Reply | None,
        *,
        incomplete: dict[str, str | None] | None = None,
    ) -> dict[str, Any]:
        ask = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": ask.background,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": ask.instructions,
            "model": (reply.model if reply is not None else None) or self.model,
            "output": output,
            "usage": usage_object(reply.usage) if reply is not None else None,
            "conversation": {"id": ask.conversation} if ask.conversation is not None else None,
            "previous_response_id": ask.previous_response_id,
            "store": ask.store,
            **ask.echo,
        }


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def failure_object(error: Failure) -> dict[str, str]:
    """A failed response's `error`, with the codes OpenAI's clients know."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": f"{error.title}: {error.detail}"}


class Record:
    """A background response as its record tells it, wherever it runs: its object at each step and
    what a stream that follows it from another request needs (the opening object and reply id its
    events were translated with, its final object), so that its events translate as they did live."""

    def __init__(self, stored: StoredResponse) -> None:
        assert stored.stream is not None, "a background response keeps its stream"
        self.stored = stored
        self.id = stored.id
        self.reply_id: str | None = stored.stream["reply_id"]
        self._opening: dict[str, Any] = stored.stream["opening"]
        self._events: list[list[Any]] = stored.stream["events"]
        self.body = stored.body  # the final object, once the response ended

    def in_progress(self) -> dict[str, Any]:
        return self._opening

    def finish(self, outcome: TurnOutcome) -> dict[str, Any]:
        return self.body

    def now(self, turn: RunningTurn) -> dict[str, Any]:
        """Its object as this process makes it: queued, or in progress with its text so far."""
        if turn.question_id is None:
            return {**self.in_progress(), "status": "queued"}
        return _progress(self.in_progress(), self.reply_id, turn.events)

    def ended(self, status: str, error: Failure | None = None) -> StoredResponse:
        """Its record, ended by another than the turn that makes it: cancelled (with what it had
        written), or failed with `error` (as its stream says a failed turn ends)."""
        if error is not None:
            body = {**self.in_progress(), "status": "failed", "error": failure_object(error)}
            final = TurnEvent(END_ID, "error", error=error)
        else:
            body = {**self.stored.body, "status": status}
            final = TurnEvent(END_ID, "assistant_message")
        stream = {"reply_id": self.reply_id, "opening": self._opening, "events": [encoded(final)]}
        return dataclasses.replace(self.stored, body=body, stream=stream)

    def events(self, seen: int) -> list[TurnEvent]:
        """Its turn's events as recorded when it ended, after the first `seen`, and always the final one."""
        recorded = [decoded(event) for event in self._events]
        return [*recorded[seen:-1], _final(recorded[-1])] if recorded else []


# The last event of a response that did not complete (OpenAI's stream has no event of its own for a cancelled one).
ENDING_EVENTS = {"incomplete": "response.incomplete", "cancelled": "response.incomplete", "failed": "response.failed"}


class ResponseStream:
    """A streamed response's events in OpenAI's order, each numbered (`sequence_number`),
    translated from the events of the turn that makes it.

    An output item opens when its first piece streams: the message on its first text delta, a
    function call on the first piece of it (its arguments then stream as
    `response.function_call_arguments.delta`). The stored outputs close them, and open and close
    any that did not stream; the last event, `response.completed` (or `response.incomplete`),
    comes once the response is kept, as the turn's final event does, so a client that reads it
    can fetch the response at once. A failure ends the stream with `response.failed`.
    """

    def __init__(self, pending: PendingResponse | Record) -> None:
        self._pending = pending
        self._opened: dict[str, int] = {}  # the output index of each item opened, by its id
        self._number = 0

    async def follow(self, turn_events: AsyncIterator[list[TurnEvent]]) -> AsyncIterator[list[Item]]:
        """The response's events, in batches as the turn's come (an empty batch: time for a keep-alive)."""
        in_progress = self._pending.in_progress()
        yield self._opening(in_progress)
        async for batch in turn_events:
            translated: list[Item] = []
            for event in batch:
                translated += self._translated(event, in_progress)
            if translated or not batch:
                yield translated

    def replayed(self, body: dict[str, Any]) -> list[Item]:
        """The events of a response made before (a retry with the same Idempotency-Key)."""
        in_progress = {**body, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        return [*self._opening(in_progress), *self._outputs_done(body["output"]), self._completed(body)]

    def _opening(self, in_progress: Item) -> list[Item]:
        return [
            self._event("response.created", response=in_progress),
            self._event("response.in_progress", response=in_progress),
        ]

    def _translated(self, event: TurnEvent, in_progress: Item) -> list[Item]:
        if event.kind == "delta":
            reply_id = self._reply_id
            opened = [] if reply_id in self._opened else self._open_text(reply_id)
            return [*opened, self._text_delta(reply_id, event.text)]
        if event.kind == "call_delta":
            assert event.call is not None
            return self._call_delta(event.item_id, event.call)
        if event.kind == "error":
            assert event.error is not None
            failed = {**in_progress, "status": "failed", "error": failure_object(event.error)}
            return [self._event("response.failed", response=failed)]
        if event.kind == "assistant_message":
            assert event.outcome is not None
            body = self._pending.finish(event.outcome)
            return [*self._outputs_done(body["output"]), self._completed(body)]
        return []  # the user message: OpenAI's stream does not repeat the input

    @property
    def _reply_id(self) -> str:
        assert self._pending.reply_id is not None, "a streamed response announces its reply's id"
        return self._pending.reply_id

    def _call_delta(self, item_id: str, piece: ToolCallDelta) -> list[Item]:
        events: list[Item] = []
        if item_id not in self._opened:
            call = {"type": "function_call", "id": item_id, "call_id": piece.id, "name": piece.name, "arguments": ""}
            events.append(self._added({**call, "status": "in_progress"}))
        if piece.arguments:
            where = {"item_id": item_id, "output_index": self._opened[item_id]}
            events.append(self._event("response.function_call_arguments.delta", **where, delta=piece.arguments))
        return events

    def _outputs_done(self, items: list[Item]) -> list[Item]:
        """Each output item, finished (and first opened, when it did not stream)."""
        events: list[Item] = []
        for item in items:
            if item["type"] == "message":
                events += self._message_done(item)
                continue
            if item["id"] not in self._opened:
                events.append(self._added({**item, "status": "in_progress"}))
            index = self._opened[item["id"]]
            if item["type"] == "function_call":
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        output_index=index,
                        item_id=item["id"],
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def _completed(self, body: dict[str, Any]) -> Item:
        kind = ENDING_EVENTS.get(body["status"], "response.completed")
        return self._event(kind, response=body)

    def _message_done(self, item: Item) -> list[Item]:
        text = item["content"][0]["text"] if item["content"] else ""
        events: list[Item] = []
        if item["id"] not in self._opened:  # nothing streamed (a replay, or no text): the text comes in one delta
            events += self._open_text(item["id"])
            if text:
                events.append(self._text_delta(item["id"], text))
        index = self._opened[item["id"]]
        part = item["content"][0] if item["content"] else {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        events.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        events.append(self._event("response.content_part.done", **where, part=part))
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def _open_text(self, item_id: str) -> list[Item]:
        item = {"type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        added = self._added(item)
        where = {"item_id": item_id, "output_index": self._opened[item_id], "content_index": 0}
        return [added, self._event("response.content_part.added", **where, part=part)]

    def _added(self, item: Item) -> Item:
        """An output item opened, at the next output index."""
        index = self._opened[item["id"]] = len(self._opened)
        return self._event("response.output_item.added", output_index=index, item=item)

    def _text_delta(self, item_id: str, text: str) -> Item:
        where = {"item_id": item_id, "output_index": self._opened[item_id], "content_index": 0}
        return self._event("response.output_text.delta", **where, delta=text, logprobs=[])

    def _event(self, kind: str, **fields: Any) -> Item:
        event = {"type": kind, "sequence_number": self._number, **fields}
        self._number += 1
        return event


class Responses:
    def __init__(self, service: ChatService) -> None:
        self._service = service
        self._store = service.store
        self._settings = service.settings
        self._lease = service.settings.turn_lease  # how long a background response's record stays alive unrefreshed

    async def create(self, owner: str, request: ResponseRequest) -> dict[str, Any]:
        """Make a response and answer its object. Raises like a native turn (ChatNotFoundError,
        ResponseNotFoundError, ChatBusyError, RateLimitedError, an LLMError...)."""
        pending = await self._pending(owner, request, streamed=False)
        admitted, turn = await self._admit(owner, pending)
        if admitted.replay is not None:
            body: dict[str, Any] = orjson.loads(admitted.replay)
            return body
        return pending.finish(await self._service.engine.run(admitted, turn))

    async def stream(self, owner: str, request: ResponseRequest) -> AsyncIterator[list[Item]]:
        """Start a response whose events are streamed: errors before it starts are raised here,
        later ones end the events with `response.failed`. It is made whether anyone reads or not."""
        pending = await self._pending(owner, request, streamed=True)
        admitted, turn = await self._admit(owner, pending)
        if admitted.replay is not None:
            return _once(ResponseStream(pending).replayed(orjson.loads(admitted.replay)))
        events = self._service.engine.start(admitted, turn).events
        assert events is not None
        return ResponseStream(pending).follow(events.follow())

    async def input_tokens(self, owner: str, request: ResponseRequest) -> dict[str, Any]:
        """How many tokens the response's input would take upstream, counted as its context would be
        built now (the conversation's items or the chain's responses that fit, then the input)."""
        request = await self._referenced(owner, request)
        if request.conversation is None:
            counted = prompt_tokens((await self._chain(owner, request)).prompt)
        else:
            chat = await self._store.get_chat(owner, request.conversation)
            asked = NewTurn(
                request.inputs, str, options=request.options, instructions=request.instructions, default_prompt=False
            )
            counted = await self._service.engine.prompt_tokens(owner, chat, asked)
        return {"object": "response.input_tokens", "input_tokens": counted}

    async def background(
        self, owner: str, request: ResponseRequest
    ) -> tuple[dict[str, Any], AsyncIterator[list[Item]]]:
        """Start a background response: its object, queued, and its events (read or not: it is made
        either way, and kept from the start). Refusals are raised as `create` raises them, and
        leave no response behind."""
        pending = await self._pending(owner, request, streamed=True)
        await self._store.save_response(owner, pending.record(pending.queued(), []), live_for=self._lease)
        try:
            admitted, turn = await self._admit(owner, pending)
        except Exception:
            await self._forget(owner, pending.id)
            raise
        if admitted.replay is not None:  # the same Idempotency-Key: the response it made, and no new one
            await self._forget(owner, pending.id)
            body = orjson.loads(admitted.replay)
            return body, _once(ResponseStream(pending).replayed(body))
        running = self._service.engine.start(admitted, turn)
        self._service.running.known_as(running, pending.id)
        pending.events = running.events
        self._service.running.start(self._watch(owner, pending, running))
        assert running.events is not None
        return pending.queued(), ResponseStream(pending).follow(running.events.follow())

    async def get(self, owner: str, response_id: str) -> dict[str, Any]:
        """The response's object: as it is now, for a background response that is still being made
        (here or elsewhere), and `failed` for one whose process is gone."""
        stored = await self._store.get_response(owner, response_id)
        if not stored.unfinished:
            return stored.body
        turn = self._service.running.find(response_id)
        if turn is not None and not turn.over:
            return Record(stored).now(turn)
        if stored.lapsed:
            return (await self._fail_lapsed(owner, stored)).body
        return stored.body

    async def events(self, owner: str, response_id: str, starting_after: int | None) -> AsyncIterator[list[Item]]:
        """A background response's events after the one numbered `starting_after` (all without),
        live until it ends, wherever it runs; replayed from its record once it ended. Raises
        ResponseNotFoundError, or InvalidInputError for a response not made in the background."""
        stored = await self._store.get_response(owner, response_id)
        if stored.stream is None:
            raise InvalidInputError(
                f"response {response_id!r} was not created with `background: true`, so it cannot be streamed",
                param="stream",
            )
        record = Record(stored)
        return _after(ResponseStream(record).follow(self._turn_events(owner, record)), starting_after)

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        """Cancel a background response wherever it is made, and answer its object: cancelled, with
        what it had written; one that had ended is answered as it ended. Raises
        ResponseNotFoundError, or InvalidInputError for a response not made in the background."""
        stored = await self._store.get_response(owner, response_id)
        if stored.stream is None:
            raise InvalidInputError(
                f"response {response_id!r} was not created with `background: true`; only those can be cancelled"
            )
        if not stored.unfinished:
            return stored.body
        if stored.lapsed:
            return (await self._fail_lapsed(owner, stored)).body
        record = Record(stored)
        cancelled = record.ended("cancelled")
        if stored.status == "queued" and await self._store.update_response(owner, cancelled, expected=("queued",)):
            await self._service.locator.cancel(owner, response_id)  # before it began: it stores nothing more
            return cancelled.body
        if await self._service.locator.cancel(owner, response_id):  # its reply stopped, what it wrote stored
            stored = await self._store.get_response(owner, response_id)
            if not stored.unfinished:
                return stored.body
            record = Record(stored)
        # No process answers for it (it runs where nothing can reach it): the record says it is
        # cancelled, and the process making it, if any, stops it when it next refreshes the record.
        cancelled = record.ended("cancelled")
        if await self._store.update_response(owner, cancelled):
            return cancelled.body
        return (await self._store.get_response(owner, response_id)).body

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        await self._store.delete_response(owner, response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def input_items(self, owner: str, response_id: str, page: PageRequest) -> dict[str, Any]:
        """A page of the response's input items. Raises InvalidInputError for a cursor that names none."""
        items = (await self._store.get_response(owner, response_id)).input_items
        ordered = items if page.order == "asc" else items[::-1]
        start = 0
        if page.after is not None:
            ids = [item["id"] for item in ordered]
            if page.after not in ids:
                raise InvalidInputError(f"no input item {page.after!r} in response {response_id!r}", param="after")
            start = ids.index(page.after) + 1
        chosen = ordered[start : start + page.limit]
        return items_page(chosen, start + page.limit < len(ordered))

    async def _pending(self, owner: str, request: ResponseRequest, *, streamed: bool) -> PendingResponse:
        """The response to make, its `item_reference` inputs replaced by the items they name."""
        request = await self._referenced(owner, request)
        return PendingResponse(request, request.options.model or self._settings.llm_model, streamed=streamed)

    async def _admit(self, owner: str, pending: PendingResponse) -> tuple[Admitted, NewTurn]:
        """The response admitted as a turn (see turns/admission.py): on its conversation, or, chained
        to earlier responses, on no chat, once its chain is found (a 404 for one that is not)."""
        request = pending.request
        chain = await self._chain(owner, request) if request.conversation is None else None
        admitted = await self._service.admission.admit(
            owner, request.conversation, request.key, inputs=len(request.inputs)
        )
        pending.model = self._service.engine.model_for(request.options, admitted.chat) or pending.model
        turn = NewTurn(
            request.inputs,
            lambda outcome: orjson.dumps(pending.finish(outcome)).decode(),
            options=request.options,
            instructions=request.instructions,
            default_prompt=False,
            reply_id=pending.reply_id,
            chain=chain,
            kept=functools.partial(self._keep, owner, pending),
        )
        return admitted, turn

    async def _keep(self, owner: str, pending: PendingResponse, outcome: TurnOutcome) -> None:
        """Keep the finished response, when asked to, before the turn ends (so that whoever reads
        its last event can read it back). A background response's record ends here, with its
        turn's events, unless another ended it first (cancelled, or failed for want of news)."""
        request = pending.request
        if not request.store:
            return
        inputs = [item_from_message(message) for message in outcome.inputs]
        if request.background:
            assert pending.events is not None
            final = TurnEvent(END_ID, "assistant_message", message=outcome.outputs[0])
            events = [encoded(event) for event in [*pending.events.events, final]]
            if not await self._store.update_response(owner, pending.record(pending.finish(outcome), events, inputs)):
                log.info("background response %s had been ended by another before its turn ended", pending.id)
            return
        kept = StoredResponse(
            pending.id,
            request.conversation,
            request.previous_response_id,
            utcnow(),
            pending.finish(outcome),
            inputs,
        )
        await self._store.save_response(owner, kept)

    async def _watch(self, owner: str, pending: PendingResponse, running: RunningTurn) -> None:
        """Keep a background response's record alive while its turn runs, refreshed a few times a
        lease: queued, then in progress (at once when it begins) with its text so far. A turn that
        fails ends it failed (cancelled, when a cancel ended it before it began). One that another
        process ended meanwhile (cancelled it, or found it silent) has its turn cancelled here."""
        events, task = running.events, running.task
        assert events is not None
        assert task is not None
        period = self._lease / BEATS_PER_LEASE
        began, refreshed = False, time.monotonic()
        try:
            async for batch in events.follow(keepalive=period):
                if events.done:
                    break
                news = not began and bool(events.events)
                if news or not batch or time.monotonic() - refreshed >= period:  # no batch: a quiet period
                    began, refreshed = began or news, time.monotonic()
                    body = _progress(pending.in_progress(), pending.reply_id, events) if began else pending.queued()
                    if await self._refresh(owner, pending.record(body, [])) is False:
                        running.cancel()
                        break
        finally:
            await asyncio.wait([task])  # shutdown cancels this watch too: the turn still ends and stores first
            final = events.events[-1] if events.done else None
            if final is not None and final.error is not None:
                await self._refresh(owner, self._failed(pending, running, final))

    def _failed(self, pending: PendingResponse, running: RunningTurn, final: TurnEvent) -> StoredResponse:
        """The record of a background response whose turn failed with `final`, or was cancelled before it began."""
        if running.stop_requested and running.question_id is None:
            body = {**pending.in_progress(), "status": "cancelled"}
            return pending.record(body, [encoded(TurnEvent(END_ID, "assistant_message"))])
        assert final.error is not None
        assert running.events is not None
        return pending.record(pending.failed(final.error), [encoded(event) for event in running.events.events])

    async def _refresh(self, owner: str, record: StoredResponse) -> bool | None:
        """Update a background response's record, alive for another lease while unfinished: whether
        it was still unfinished; None when the store cannot answer now (a later refresh tries again)."""
        try:
            return await self._store.update_response(owner, record, live_for=self._lease if record.unfinished else None)
        except StoreUnavailableError as error:
            log.warning("background response %s could not be refreshed: %s", record.id, error.detail)
            return None

    async def _fail_lapsed(self, owner: str, stored: StoredResponse) -> StoredResponse:
        """End, failed, a background response that nobody keeps alive (its process died, or was
        restarted), unless another ended it meanwhile; its record as it now is."""
        lost = ResponseLostError(
            "the server making this response stopped (it was restarted, or killed) before the response ended"
        )
        failed = Record(stored).ended("failed", lost)
        if await self._store.update_response(owner, failed, if_lapsed=True):
            log.warning("background response %s was lost with its server; it is now failed", stored.id)
            return failed
        return await self._store.get_response(owner, stored.id)

    async def _turn_events(self, owner: str, record: Record) -> AsyncIterator[list[TurnEvent]]:
        """The events of the turn that makes a background response, from its first: live from
        wherever it runs, then (when that ends without a last event, or it had ended) from its
        record, which the store is asked for until the response ended (or is found lost)."""
        seen = 0
        live = self._service.locator.events_of(owner, record.id) if record.stored.unfinished else None
        async for batch in live or _nothing():
            if batch and batch[-1].final:
                record.body = (await self._settled(owner, record.id)).body
                yield [*batch[:-1], _final(batch[-1])]
                return
            seen += len(batch)
            yield batch
        while (stored := await self._store.get_response(owner, record.id)).unfinished:
            if stored.lapsed:
                await self._fail_lapsed(owner, stored)
                continue
            yield []  # still being made, somewhere no follower reaches: keep the stream alive
            await asyncio.sleep(SETTLE_POLL_SECONDS)
        ended = Record(stored)
        record.body = stored.body
        yield ended.events(seen)

    async def _settled(self, owner: str, response_id: str) -> StoredResponse:
        """The record of a response whose turn ended: ended with it (a failure's, an instant later)."""
        while (stored := await self._store.get_response(owner, response_id)).unfinished:
            if stored.lapsed:
                return await self._fail_lapsed(owner, stored)
            await asyncio.sleep(SETTLE_POLL_SECONDS / 10)
        return stored

    async def _forget(self, owner: str, response_id: str) -> None:
        """Drop the record of a background response that was refused (one left behind ends failed)."""
        try:
            await self._store.delete_response(owner, response_id)
        except (ResponseNotFoundError, StoreUnavailableError):
            log.warning("the record of refused background response %s is left to lapse", response_id)

    async def _chain(self, owner: str, request: ResponseRequest) -> Chain:
        """The input, and the prompt: the instructions (if any: OpenAI's API adds no system prompt), the newest
        earlier responses of the chain that fit the token budget, whole and oldest first, then
        the input, always whole.

        Raises PreviousResponseNotFoundError when `previous_response_id` names no kept response; an older
        one that is gone ends the chain there.
        """
        inputs = [unstored(message) for message in request.inputs]
        system_prompt = request.instructions
        remaining = self._settings.context_tokens - sum(message_tokens(message.content) for message in inputs)
        remaining -= message_tokens(system_prompt) if system_prompt else 0
        earlier: list[NewMessage] = []
        async for previous in self._earlier(owner, request.previous_response_id):
            said = [stored_from_item(item, "") for item in [*previous.input_items, *previous.body["output"]]]
            cost = sum(message_tokens(message.content) for message in said)
            if cost > remaining:
                break
            earlier[:0] = said
            remaining -= cost
        prompt: list[PromptMessage] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return Chain(inputs, prompt + prompt_from_messages([*earlier, *inputs]))

    async def _earlier(self, owner: str, previous_id: str | None) -> AsyncIterator[StoredResponse]:
        """The kept responses of a chain, newest first, from `previous_id` to the first or to one
        that is gone. Raises PreviousResponseNotFoundError when `previous_id` itself is not kept."""
        first = True
        while previous_id is not None:
            try:
                previous = await self._store.get_response(owner, previous_id)
            except ResponseNotFoundError:
                if first:
                    raise PreviousResponseNotFoundError(
                        f"no response {previous_id!r} is kept", param="previous_response_id"
                    ) from None
                return
            yield previous
            first, previous_id = False, previous.previous_response_id

    async def _referenced(self, owner: str, request: ResponseRequest) -> ResponseRequest:
        """The request with each `item_reference` input replaced by a copy of the item it names: an
        item of its conversation, or of a response of its chain (at most MAX_REFERENCED_RESPONSES
        back). Raises InvalidInputError naming a reference that names none of them."""
        wanted = referenced(request.inputs)
        if not wanted:
            return request
        if request.conversation is not None:
            found = await conversation_items(self._store, owner, request.conversation, wanted)
            where = "its conversation"
        else:
            found = await self._chain_items(owner, request.previous_response_id, wanted)
            where = "the previous_response_id chain"
        return dataclasses.replace(request, inputs=with_references(request.inputs, found, "input", where))

    async def _chain_items(self, owner: str, previous_id: str | None, wanted: set[str]) -> dict[str, Item]:
        found: dict[str, Item] = {}
        looked = 0
        async for previous in self._earlier(owner, previous_id):
            looked += 1
            found |= {
                item["id"]: item for item in [*previous.input_items, *previous.body["output"]] if item["id"] in wanted
            }
            if found.keys() == wanted or looked == MAX_REFERENCED_RESPONSES:
                break
        return found


async def _once(events: list[Item]) -> AsyncIterator[list[Item]]:
    yield events


async def _nothing() -> AsyncIterator[list[TurnEvent]]:
    return
    yield


async def _after(batches: AsyncIterator[list[Item]], starting_after: int | None) -> AsyncIterator[list[Item]]:
    """The events numbered after `starting_after`; an empty batch (a keep-alive) goes through."""
    async for batch in batches:
        later = [event for event in batch if starting_after is None or event["sequence_number"] > starting_after]
        if later or not batch:
            yield later


def _final(event: TurnEvent) -> TurnEvent:
    """A turn's last event as a stream translates it from a response's record (`Record.finish`)."""
    return TurnEvent(END_ID, "assistant_message", outcome=NO_OUTCOME) if event.kind == "assistant_message" else event


def _progress(opening: dict[str, Any], reply_id: str | None, events: TurnEvents | None) -> dict[str, Any]:
    """A response in progress, with the text its turn wrote so far as its message, in progress too."""
    text = "".join(event.text for event in events.events if event.kind == "delta") if events is not None else ""
    if not text:
        return {**opening, "status": "in_progress"}
    content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {"type": "message", "id": reply_id, "role": "assistant", "status": "in_progress", "content": [content]}
    return {**opening, "status": "in_progress", "output": [message]}


def _ending(reply: Reply | None, *, background: bool) -> tuple[str, dict[str, str | None] | None]:
    """A finished response's status and `incomplete_details`: a background response that a client
    stopped is `cancelled` (only those can be), any other reply cut short `incomplete`."""
    if reply is None or reply.status is not MessageStatus.INCOMPLETE:
        return "completed", None
    if background and reply.incomplete_reason is IncompleteReason.STOPPED:
        return "cancelled", None
    return "incomplete", _incomplete_details(reply)


def _incomplete_details(reply: Reply) -> dict[str, str | None]:
    """Why a response is incomplete: `reason` in OpenAI's words where it has them
    (`max_output_tokens`, `content_filter`; null otherwise, as the SDK takes no others), and
    `chatkeep_reason` in chatkeep's, always (`max_tokens`, `stopped`, `timeout`...)."""
    reason = reply.incomplete_reason or IncompleteReason.MAX_TOKENS
    openai_words = {IncompleteReason.MAX_TOKENS: "max_output_tokens", IncompleteReason.CONTENT_FILTER: "content_filter"}
    return {"reason": openai_words.get(reason), "chatkeep_reason": reason.value}
