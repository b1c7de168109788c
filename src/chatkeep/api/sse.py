"""Server-sent events for streamed turns: the wire encoding of `TurnEvent`s and the response.

The response writes the turn's log straight to the ASGI server: not `BaseHTTPMiddleware`-
wrapped (that would buffer), not FastAPI's generator SSE nor Starlette's `StreamingResponse`
(their per-response tasks and per-event hops cost more than the turn). It needs no disconnect
watcher: the turn runs in its own task whatever the client does, the ASGI server drops writes
to a client that left, and the log ends when the turn does. Events that arrive together are
written in one chunk; a comment line keeps idle streams alive.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatkeep.api import bodies
from chatkeep.api.problems import problem_body
from chatkeep.domain import Siblings
from chatkeep.turns.events import END_ID, TurnEvent

MEDIA_TYPE = "text/event-stream"

E = TypeVar("E")


def _event(kind: str, event_id: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """One kind of event as OpenAPI 3.2's `itemSchema` describes it: its name, its id, its JSON data."""
    return {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"const": kind},
            "id": {"type": "string", **event_id},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


# Each event of a streamed turn (the same for a resumed one), documented for clients and checked
# against every stream by the schemathesis run in `make test`.
EVENT_SCHEMA = {
    "oneOf": [
        _event("user_message", {"const": "0"}, {"$ref": "#/components/schemas/MessageOut"}),
        _event(
            "delta",
            {"pattern": "^[1-9][0-9]*$"},
            {"type": "object", "required": ["content"], "properties": {"content": {"type": "string"}}},
        ),
        _event("assistant_message", {"const": END_ID}, {"$ref": "#/components/schemas/MessageOut"}),
        _event("error", {"const": END_ID}, {"$ref": "#/components/schemas/Problem"}),
    ]
}
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"


class EventStream(Response, Generic[E]):
    """Batches of events, each batch written in one chunk; `encode` writes one event."""

    media_type = MEDIA_TYPE

    def __init__(self, batches: AsyncIterator[list[E]], encode: Callable[[E], bytes]) -> None:
        super().__init__(headers=HEADERS)
        # A stream has no length: drop the content-length of the empty body Response set.
        self.raw_headers = [(name, value) for name, value in self.raw_headers if name != b"content-length"]
        self._batches = batches
        self._encode = encode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        encode = self._encode
        async for batch in self._batches:
            body = b"".join(map(encode, batch)) if batch else KEEPALIVE
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass(slots=True, frozen=True)
class WithSiblings:
    """A turn's message event with the message's `siblings` on the chat's other branches, as a JSON
    answer shows them. The turn's log keeps its events bare: most turns end their branch and have none."""

    event: TurnEvent
    siblings: Siblings


def turn_event(event: TurnEvent | WithSiblings) -> bytes:
    """A streamed turn's event on the wire (nothing for a piece of a tool call: the final message has the calls)."""
    siblings = None
    if isinstance(event, WithSiblings):
        siblings = event.siblings
        event = event.event
    if event.kind == "call_delta":
        return b""
    if event.kind == "delta":
        data = orjson.dumps({"content": event.text})
    elif event.message is not None:
        message = event.message
        body = message if siblings is None else bodies.with_siblings(message, {message.id: siblings})
        data = orjson.dumps(body, option=bodies.OPTIONS)  # a MessageOut, as in bodies.py
    else:
        assert event.error is not None
        data = orjson.dumps(problem_body(event.error))
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(), data)
