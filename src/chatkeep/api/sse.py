"""Server-sent events for streamed turns: the wire encoding of `TurnEvent`s and the response.

A plain `StreamingResponse` over the turn's log, not `BaseHTTPMiddleware`-wrapped (that would
buffer) and not FastAPI's generator SSE (its per-event task hops cost more than the turn).
Events that arrive together are written in one chunk; a comment line keeps idle streams alive.
"""

from collections.abc import AsyncIterator

import orjson
from starlette.responses import StreamingResponse

from chatkeep.api import bodies
from chatkeep.api.problems import problem_body
from chatkeep.turn_events import TurnEvent

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"


def event_stream(batches: AsyncIterator[list[TurnEvent]]) -> StreamingResponse:
    return StreamingResponse(_encoded(batches), media_type=MEDIA_TYPE, headers=HEADERS)


async def _encoded(batches: AsyncIterator[list[TurnEvent]]) -> AsyncIterator[bytes]:
    async for batch in batches:
        yield b"".join(map(encode, batch)) if batch else KEEPALIVE


def encode(event: TurnEvent) -> bytes:
    if event.kind == "delta":
        data = orjson.dumps({"content": event.text})
    elif event.message is not None:
        data = orjson.dumps(event.message, option=bodies.OPTIONS)  # a MessageOut, as in bodies.py
    else:
        assert event.error is not None
        data = orjson.dumps(problem_body(event.error))
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(), data)
