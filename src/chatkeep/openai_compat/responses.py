"""OpenAI's Responses API over chatkeep's turns, with OpenAI's two ways of keeping state.

A response is a turn, admitted and run like a native one: with `conversation`, on that chat (it
queues behind the chat's other turns, its input items and its output are appended, and the
chat's stored items are its context); with `previous_response_id` (or neither), on no chat, its
context the chain of earlier responses, each kept with its input. Either way a kept response
(`store`, the default) can be read back, and a retry with the same Idempotency-Key is answered
the response first made. This module only translates: OpenAI's request into a `NewTurn`, the
outcome into OpenAI's response object (response_objects.py), and the turn's events into
OpenAI's stream (response_stream.py), which a client that leaves loses nothing of.

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
from typing import Any

import orjson

from chatkeep.context import message_tokens, prompt_from_messages, prompt_tokens
from chatkeep.domain import (
    NewMessage,
    PageRequest,
    PromptMessage,
    StoredResponse,
    utcnow,
)
from chatkeep.errors import (
    InvalidInputError,
    PreviousResponseNotFoundError,
    ResponseLostError,
    ResponseNotFoundError,
    StoreUnavailableError,
)
from chatkeep.openai_compat.conversations import conversation_items, items_page
from chatkeep.openai_compat.items import item_from_message, referenced, stored_from_item, with_references
from chatkeep.openai_compat.response_objects import (
    PendingResponse,
    Record,
    ResponseRequest,
    final_event,
    progress_object,
)
from chatkeep.openai_compat.response_stream import ResponseStream, after_number
from chatkeep.service import ChatService
from chatkeep.turns.admission import Admitted
from chatkeep.turns.engine import Chain, NewTurn, unstored
from chatkeep.turns.events import END_ID, TurnEvent, TurnOutcome
from chatkeep.turns.relay import encoded
from chatkeep.turns.running import RunningTurn

log = logging.getLogger(__name__)

Item = dict[str, Any]

MAX_REFERENCED_RESPONSES = 100  # how far back a chain is searched for the items its input references
BEATS_PER_LEASE = 3  # a background response's record is refreshed this often per lease
SETTLE_POLL_SECONDS = 1.0  # how often a follower that hears nothing asks the store how a response went


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
        return after_number(ResponseStream(record).follow(self._turn_events(owner, record)), starting_after)

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
                    body = (
                        progress_object(pending.in_progress(), pending.reply_id, events) if began else pending.queued()
                    )
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
                yield [*batch[:-1], final_event(batch[-1])]
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
