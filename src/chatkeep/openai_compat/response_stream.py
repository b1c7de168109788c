"""A response's events as OpenAI streams them (`response.created` ... `response.completed`),
translated from the events of the turn that makes it, each numbered (`sequence_number`) the
same way however often they are translated: live, replayed for a retry, or followed again from
a background response's record.
"""

from collections.abc import AsyncIterator
from typing import Any

from chatkeep.llm.base import ToolCallDelta
from chatkeep.openai_compat.response_objects import PendingResponse, Record, failure_object
from chatkeep.turns.events import TurnEvent

Item = dict[str, Any]

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


async def after_number(batches: AsyncIterator[list[Item]], starting_after: int | None) -> AsyncIterator[list[Item]]:
    """The events numbered after `starting_after`; an empty batch (a keep-alive) goes through."""
    async for batch in batches:
        later = [event for event in batch if starting_after is None or event["sequence_number"] > starting_after]
        if later or not batch:
            yield later
