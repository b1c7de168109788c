"""The server-sent events of a streamed turn, parsed as a browser's EventSource reads them."""

from collections.abc import AsyncGenerator, AsyncIterable
from contextlib import aclosing
from typing import Any

import orjson

Event = dict[str, Any]


async def sse_events(lines: AsyncIterable[str]) -> AsyncGenerator[Event, None]:
    """Each event of an SSE body as it arrives: {"id", "event", "data"} with the data decoded,
    or {"comment"} for a comment line (a keep-alive)."""
    current: Event = {}
    async for line in lines:
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line == "":
            if current:
                current["data"] = orjson.loads(current["data"])
                yield current
                current = {}
        else:
            field, _, value = line.partition(": ")
            current[field] = value


async def events_of(lines: AsyncIterable[str], *, stop_after: int | None = None) -> list[Event]:
    """The events of an SSE body (comments included), until its end or `stop_after` of them."""
    events: list[Event] = []
    async with aclosing(sse_events(lines)) as parsed:
        async for event in parsed:
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
    return events
