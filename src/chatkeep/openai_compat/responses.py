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
"""

import dataclasses
import functools
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
    ResponseNotFoundError,
)
from chatkeep.idempotency import IdempotencyKey
from chatkeep.llm import Reply
from chatkeep.llm.base import CallOptions, ToolCallDelta
from chatkeep.openai_compat.conversations import conversation_items, items_page
from chatkeep.openai_compat.items import item_from_message, referenced, stored_from_item, with_references
from chatkeep.service import ChatService
from chatkeep.turns.admission import Admitted
from chatkeep.turns.engine import Chain, NewTurn, unstored
from chatkeep.turns.events import TurnEvent, TurnOutcome

Item = dict[str, Any]

MAX_REFERENCED_RESPONSES = 100  # how far back a chain is searched for the items its input references


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

    def in_progress(self) -> dict[str, Any]:
        """The object while the response is being made."""
        return self._object("in_progress", [], None)

    def finish(self, outcome: TurnOutcome) -> dict[str, Any]:
        """The finished object (made once: a retry with the same key replays these very bytes)."""
        if self.body is None:
            reply = outcome.reply
            incomplete = reply is not None and reply.status is MessageStatus.INCOMPLETE
            self.body = self._object(
                "incomplete" if incomplete else "completed",
                [item_from_message(message) for message in outcome.outputs],
                reply,
                incomplete=_incomplete_details(reply) if incomplete and reply is not None else None,
            )
        return self.body

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
            "background": False,
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

    def __init__(self, pending: PendingResponse) -> None:
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
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
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

    async def create(self, owner: str, request: ResponseRequest) -> dict[str, Any]:
        """Make a response and answer its object. Raises like a native turn (ChatNotFoundError,
        ResponseNotFoundError, ChatBusyError, RateLimitedError, an LLMError...)."""
        admitted, pending, turn = await self._admit(owner, request, streamed=False)
        if admitted.replay is not None:
            body: dict[str, Any] = orjson.loads(admitted.replay)
            return body
        return pending.finish(await self._service.engine.run(admitted, turn))

    async def stream(self, owner: str, request: ResponseRequest) -> AsyncIterator[list[Item]]:
        """Start a response whose events are streamed: errors before it starts are raised here,
        later ones end the events with `response.failed`. It is made whether anyone reads or not."""
        admitted, pending, turn = await self._admit(owner, request, streamed=True)
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

    async def get(self, owner: str, response_id: str) -> dict[str, Any]:
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

    async def _admit(
        self, owner: str, request: ResponseRequest, *, streamed: bool
    ) -> tuple[Admitted, PendingResponse, NewTurn]:
        """The response admitted as a turn (see turns/admission.py): on its conversation, or, chained
        to earlier responses, on no chat, once its chain is found (a 404 for one that is not)."""
        request = await self._referenced(owner, request)
        chain = await self._chain(owner, request) if request.conversation is None else None
        admitted = await self._service.admission.admit(
            owner, request.conversation, request.key, inputs=len(request.inputs)
        )
        pending = PendingResponse(request, request.options.model or self._settings.llm_model, streamed=streamed)
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
        return admitted, pending, turn

    async def _keep(self, owner: str, pending: PendingResponse, outcome: TurnOutcome) -> None:
        """Keep the finished response, when asked to, before the turn ends."""
        request = pending.request
        if request.store:
            inputs = [item_from_message(message) for message in outcome.inputs]
            kept = StoredResponse(
                pending.id,
                request.conversation,
                request.previous_response_id,
                utcnow(),
                pending.finish(outcome),
                inputs,
            )
            await self._store.save_response(owner, kept)

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


def _incomplete_details(reply: Reply) -> dict[str, str | None]:
    """Why a response is incomplete: `reason` in OpenAI's words where it has them
    (`max_output_tokens`, `content_filter`; null otherwise, as the SDK takes no others), and
    `chatkeep_reason` in chatkeep's, always (`max_tokens`, `stopped`, `timeout`...)."""
    reason = reply.incomplete_reason or IncompleteReason.MAX_TOKENS
    openai_words = {IncompleteReason.MAX_TOKENS: "max_output_tokens", IncompleteReason.CONTENT_FILTER: "content_filter"}
    return {"reason": openai_words.get(reason), "chatkeep_reason": reason.value}
