"""OpenAI's Responses API over chatkeep's turns, with OpenAI's two ways of keeping state.

With `conversation`, a response is a turn on that chat, run by the turn engine like any other:
it queues behind the chat's other turns, its input items and its output are appended to the
chat, and the chat's stored items are its context. With `previous_response_id` (or neither),
the context is the chain of earlier responses, each kept with its input; such a response
belongs to no chat, so nothing queues it. Either way a kept response (`store`, the default) can
be read back, and a retry with the same Idempotency-Key is answered the response first made.

A streamed response writes OpenAI's events (`response.created` ... `response.completed`) to a
feed that the HTTP stream only reads, so a client that leaves loses nothing: the response is
still made and kept. Objects and events are shaped as OpenAI's (`openai/types/responses`).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from chatkeep.context import message_tokens
from chatkeep.domain import (
    Chat,
    Message,
    MessageStatus,
    NewMessage,
    PageRequest,
    PromptMessage,
    StoredResponse,
    Usage,
    new_id,
    utcnow,
)
from chatkeep.errors import InvalidInputError, Problem, ResponseNotFoundError
from chatkeep.idempotency import HeldKey, IdempotencyKey
from chatkeep.llm import Reply
from chatkeep.llm.base import CallOptions
from chatkeep.openai_compat.conversations import items_page
from chatkeep.openai_compat.items import item_from_message, prompt_from_messages, stored_from_item
from chatkeep.service import ChatService
from chatkeep.turns.engine import TurnOutcome, TurnRequest, TurnWatcher, reply_messages, stream_reply, watched
from chatkeep.turns.feed import Feed
from chatkeep.turns.queue import TurnSlot

Item = dict[str, Any]


@dataclass(slots=True, frozen=True)
class ResponseAsk:
    """A request of the Responses API, read and checked (the API reads it from HTTP)."""

    inputs: list[NewMessage]
    conversation: str | None
    previous_response_id: str | None
    instructions: str | None
    options: CallOptions
    store: bool
    echo: dict[str, Any]  # the settings the response object repeats as asked (tools, metadata, top_p...)
    key: IdempotencyKey | None = None


class Responding:
    """One response being made: its fixed parts, and its object at each step."""

    def __init__(self, ask: ResponseAsk, model: str, *, streamed: bool) -> None:
        self.ask = ask
        self.id = new_id("resp")
        # the id its text streams under, and is stored under (a response not streamed leaves it to the store)
        self.reply_id = new_id("msg") if streamed else None
        self.created_at = int(time.time())
        self.model = model  # the model asked; the object of a finished response names the one that answered
        self.body: dict[str, Any] | None = None  # the finished object

    def in_progress(self) -> dict[str, Any]:
        """The object while the response is being made."""
        return self._object("in_progress", [], None)

    def finish(self, outputs: Sequence[Message], reply: Reply) -> dict[str, Any]:
        """The finished object (made once: a retry with the same key replays these very bytes)."""
        if self.body is None:
            incomplete = reply.status is MessageStatus.INCOMPLETE
            self.body = self._object(
                "incomplete" if incomplete else "completed",
                [item_from_message(message) for message in outputs],
                reply,
                incomplete={"reason": "max_output_tokens"} if incomplete else None,
            )
        return self.body

    def _object(
        self,
        status: str,
        output: list[Item],
        reply: Reply | None,
        *,
        incomplete: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        ask = self.ask
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
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def failure_object(error: Problem) -> dict[str, str]:
    """A failed response's `error`, with the codes OpenAI's clients know."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error"
    return {"code": code, "message": f"{error.title}: {error.detail}"}


class ResponseEvents(Feed[dict[str, Any]]):
    """A streamed response's events, in OpenAI's order, each numbered (`sequence_number`).

    As the turn's watcher it hears the reply's text as it is written (the message item opens on
    the first delta) and its stored outputs at the end; the last event, `response.completed`
    (or `response.incomplete`), is written once the response is kept, so a client that reads it
    can fetch the response at once. A failure ends the feed with `response.failed`.
    """

    def __init__(self, in_progress: dict[str, Any], reply_id: str) -> None:
        super().__init__()
        self._in_progress = in_progress  # the response's object until it is finished
        self._reply_id = reply_id  # the id the reply's text streams under
        self._text_open = False
        self._emit("response.created", response=in_progress)
        self._emit("response.in_progress", response=in_progress)

    @classmethod
    def replayed(cls, body: dict[str, Any]) -> "ResponseEvents":
        """The events of a response made before (a retry with the same Idempotency-Key)."""
        events = cls({**body, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}, "")
        events.outputs_done(body["output"])
        events.completed(body)
        return events

    # As the turn's watcher (turn.py)

    def started(self, inputs: list[Message]) -> None:
        pass

    def delta(self, text: str) -> None:
        if not self._text_open:
            self._open_text(self._reply_id)
        self._text_delta(self._reply_id, text)

    def ended(self, outcome: TurnOutcome) -> None:
        self.outputs_done([item_from_message(message) for message in outcome.outputs])

    def failed(self, error: Problem) -> None:
        failed = {**self._in_progress, "status": "failed", "error": failure_object(error)}
        self._emit("response.failed", response=failed, last=True)

    # The rest of the stream

    def outputs_done(self, items: list[Item]) -> None:
        """Each output item, finished: the message whose text streamed, then function calls (whole)."""
        for index, item in enumerate(items):
            if item["type"] == "message":
                self._message_done(index, item)
            else:
                self._emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
                if item["type"] == "function_call":
                    self._emit(
                        "response.function_call_arguments.done",
                        output_index=index,
                        item_id=item["id"],
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                self._emit("response.output_item.done", output_index=index, item=item)

    def completed(self, body: dict[str, Any]) -> None:
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        self._emit(kind, response=body, last=True)

    def _message_done(self, index: int, item: Item) -> None:
        text = item["content"][0]["text"] if item["content"] else ""
        if not self._text_open:  # nothing streamed (a replay, or no text): the text comes in one delta
            self._open_text(item["id"], index)
            if text:
                self._text_delta(item["id"], text, index)
        part = item["content"][0] if item["content"] else {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        self._emit("response.output_text.done", **where, text=text, logprobs=[])
        self._emit("response.content_part.done", **where, part=part)
        self._emit("response.output_item.done", output_index=index, item=item)

    def _open_text(self, item_id: str, index: int = 0) -> None:
        self._text_open = True
        item = {"type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}
        self._emit("response.output_item.added", output_index=index, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._emit("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part)

    def _text_delta(self, item_id: str, text: str, index: int = 0) -> None:
        self._emit(
            "response.output_text.delta",
            item_id=item_id,
            output_index=index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _emit(self, kind: str, *, last: bool = False, **fields: Any) -> None:
        self.push({"type": kind, "sequence_number": len(self.events), **fields}, last=last)


class Responses:
    def __init__(self, service: ChatService) -> None:
        self._service = service
        self._store = service.store
        self._settings = service.settings

    async def create(self, owner: str, ask: ResponseAsk) -> dict[str, Any]:
        """Make a response and answer its object. Raises like a native turn (ChatNotFoundError,
        ResponseNotFoundError, ChatBusyError, RateLimitedError, an LLMError...)."""
        chat = await self._admit(owner, ask)
        async with await self._service.hold_key(owner, ask.key) as hold:
            if hold.replay is not None:
                body: dict[str, Any] = orjson.loads(hold.replay)
                return body
            responding = self._responding(ask, streamed=False)
            if chat is None:
                chain = await self._chain(owner, ask)
                async with self._service.reserve_turn(responding.id):  # counted in flight
                    return await self._chained(owner, responding, hold, chain)
            request = self._turn(owner, chat, responding, hold)
            async with self._service.engine.holding(self._service.reserve_turn(chat.id), request):
                outcome = await self._service.engine.run(request)
            return await self._kept(owner, responding, outcome)

    async def stream(self, owner: str, ask: ResponseAsk) -> ResponseEvents:
        """Start a response whose events are streamed: errors before it starts are raised here,
        later ones end the events with `response.failed`. It is made whether anyone reads or not."""
        chat = await self._admit(owner, ask)
        hold = await self._service.hold_key(owner, ask.key)
        if hold.replay is not None:
            return ResponseEvents.replayed(orjson.loads(hold.replay))
        responding = self._responding(ask, streamed=True)
        assert responding.reply_id is not None
        events = ResponseEvents(responding.in_progress(), responding.reply_id)
        try:
            chain = await self._chain(owner, ask) if chat is None else None
            slot = self._service.reserve_turn(responding.id if chat is None else chat.id)
        except BaseException:
            await hold.settle()
            raise
        if chain is not None:
            work = self._chained_later(slot, owner, responding, hold, chain, events)
            self._service.background(watched(work, events, "a streamed response"))
            return events
        assert chat is not None

        async def then(outcome: TurnOutcome) -> None:
            events.completed(await self._kept(owner, responding, outcome))

        request = self._turn(owner, chat, responding, hold, events)
        self._service.background(self._service.engine.run_watched(slot, request, then=then))
        return events

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

    async def _admit(self, owner: str, ask: ResponseAsk) -> Chat | None:
        """The conversation, if any, once the owner may post: raises like a native turn."""
        if ask.conversation is None:
            await self._service.admit(owner)
            return None
        return await self._service.chat_to_post_to(owner, ask.conversation)

    def _responding(self, ask: ResponseAsk, *, streamed: bool) -> Responding:
        return Responding(ask, ask.options.model or self._settings.llm_model, streamed=streamed)

    def _turn(
        self, owner: str, chat: Chat, responding: Responding, hold: HeldKey, watcher: TurnWatcher | None = None
    ) -> TurnRequest:
        """The response as a turn on its conversation; a retry with its key is answered its object."""
        ask = responding.ask
        return TurnRequest(
            owner,
            chat,
            ask.inputs,
            hold,
            lambda outcome: orjson.dumps(responding.finish(outcome.outputs, outcome.reply)).decode(),
            options=ask.options,
            instructions=ask.instructions,
            watcher=watcher,
            reply_id=responding.reply_id,
        )

    async def _kept(self, owner: str, responding: Responding, outcome: TurnOutcome) -> dict[str, Any]:
        """The finished object of a response, kept when asked to."""
        body = responding.finish(outcome.outputs, outcome.reply)
        ask = responding.ask
        if ask.store:
            inputs = [item_from_message(message) for message in outcome.inputs]
            kept = StoredResponse(responding.id, ask.conversation, ask.previous_response_id, utcnow(), body, inputs)
            await self._store.save_response(owner, kept)
        return body

    async def _chained_later(
        self,
        slot: TurnSlot,
        owner: str,
        responding: Responding,
        hold: HeldKey,
        chain: "Chain",
        events: ResponseEvents,
    ) -> None:
        async with hold, slot:
            events.completed(await self._chained(owner, responding, hold, chain, events))

    async def _chained(
        self, owner: str, responding: Responding, hold: HeldKey, chain: "Chain", watcher: ResponseEvents | None = None
    ) -> dict[str, Any]:
        """A response that belongs to no chat: ask the LLM with its chain, keep the response."""
        options = responding.ask.options
        if watcher is None:
            reply = await self._service.llm.complete(chain.prompt, options)
        else:
            reply = await stream_reply(self._service.llm, chain.prompt, options, watcher, [])
        outputs = [_unstored(message) for message in reply_messages(reply, responding.reply_id)]
        outcome = TurnOutcome(chain.inputs, outputs, reply)
        if watcher is not None:
            watcher.ended(outcome)
        body = await self._kept(owner, responding, outcome)
        hold.succeeded(lambda: orjson.dumps(body).decode())
        return body

    async def _chain(self, owner: str, ask: ResponseAsk) -> "Chain":
        """The input, and the prompt: the instructions (or the default system prompt), the newest
        earlier responses of the chain that fit the token budget, whole and oldest first, then
        the input, always whole.

        Raises ResponseNotFoundError when `previous_response_id` names no kept response; an older
        one that is gone ends the chain there.
        """
        inputs = [_unstored(message) for message in ask.inputs]
        system_prompt = ask.instructions if ask.instructions is not None else self._settings.system_prompt
        remaining = self._settings.context_tokens - sum(message_tokens(message.content) for message in inputs)
        remaining -= message_tokens(system_prompt) if system_prompt else 0
        earlier: list[NewMessage] = []
        previous_id = ask.previous_response_id
        while previous_id is not None and remaining > 0:
            try:
                previous = await self._store.get_response(owner, previous_id)
            except ResponseNotFoundError:
                if previous_id == ask.previous_response_id:
                    raise
                break
            said = [stored_from_item(item, "") for item in [*previous.input_items, *previous.body["output"]]]
            cost = sum(message_tokens(message.content) for message in said)
            if cost > remaining:
                break
            earlier[:0] = said
            remaining -= cost
            previous_id = previous.previous_response_id
        prompt: list[PromptMessage] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return Chain(inputs, prompt + prompt_from_messages([*earlier, *inputs]))


@dataclass(slots=True, frozen=True)
class Chain:
    """A response that belongs to no chat: its input, with ids, and the prompt it is answered with."""

    inputs: list[Message]
    prompt: list[PromptMessage]


def _unstored(message: NewMessage) -> Message:
    """A message of a response that belongs to no chat, with an id of its own (items need one)."""
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
    )
