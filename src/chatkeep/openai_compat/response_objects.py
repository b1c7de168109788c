"""A response of OpenAI's Responses API as chatkeep shapes it: the request read and checked, the
response being made (`PendingResponse`: its object at each step, and its record when it is made
in the background), and a background response as its record tells it wherever it runs
(`Record`). Objects are shaped as OpenAI's (`openai/types/responses`); every one is checked
against the SDK's own types by tests/openai/test_sdk_shapes.py.
"""

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from chatkeep.domain import IncompleteReason, MessageStatus, NewMessage, StoredResponse, Usage, new_id, utcnow
from chatkeep.errors import Failure
from chatkeep.idempotency import IdempotencyKey
from chatkeep.llm import Reply
from chatkeep.llm.base import CallOptions
from chatkeep.openai_compat.items import item_from_message
from chatkeep.turns.events import END_ID, TurnEvent, TurnEvents, TurnOutcome
from chatkeep.turns.relay import decoded, encoded
from chatkeep.turns.running import RunningTurn

Item = dict[str, Any]

NO_OUTCOME = TurnOutcome([], [], None)  # the final event of a turn run elsewhere: its record has the outcome


@dataclass(slots=True)  # not frozen: made once a request, and frozen init is slow
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
        return progress_object(self.in_progress(), self.reply_id, turn.events)

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
        return [*recorded[seen:-1], final_event(recorded[-1])] if recorded else []


def final_event(event: TurnEvent) -> TurnEvent:
    """A turn's last event as a stream translates it from a response's record (`Record.finish`)."""
    return TurnEvent(END_ID, "assistant_message", outcome=NO_OUTCOME) if event.kind == "assistant_message" else event


def progress_object(opening: dict[str, Any], reply_id: str | None, events: TurnEvents | None) -> dict[str, Any]:
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
