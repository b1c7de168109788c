"""Live streams: many streamed turns held open at once, and how late their chunks arrive.

The fake LLM (`--stamp --chunk-delay`) paces each reply's content deltas and writes into each the
wall-clock microsecond it left (`@<µs>`). This client starts one streamed turn on each chat of
the file, the starts spread over RAMP_SECONDS, and notes for every stamp in a `delta` event how
long after leaving the LLM it reached the client: what the server in between added, plus two
loopback hops. Halfway through it reads the server's resident memory, to price an open stream.

It is a bare asyncio protocol on uvloop that only splits events and finds stamps, so that on the
load core beside the fake LLM it keeps up with far more streams than either server.

`python -m bench.streams URL CHATS_FILE SERVER_PID` prints one JSON line.
"""

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from statistics import quantiles
from typing import cast
from urllib.parse import urlsplit

import orjson
import psutil
import uvloop

RAMP_SECONDS = 1.0
TIMEOUT_SECONDS = 60.0
QUESTION = "Tell me a long story, please."
STAMP = re.compile(rb"@(\d{16})")
EVENT_END = b"\n\n"


class StreamedTurn(asyncio.Protocol):
    """One streamed turn on its own connection: sends the request, notes each stamp's delay."""

    def __init__(self, request: bytes, delays: list[int]) -> None:
        self._request = request
        self._delays = delays
        self._pending = b""
        self._transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns() // 1000
        *events, self._pending = (self._pending + data).split(EVENT_END)
        for event in events:
            if b"event: delta" in event:
                self._delays += [now - int(sent) for sent in STAMP.findall(event)]
            elif b"event: assistant_message" in event or b"event: error" in event:
                self._end("ok" if b"event: assistant_message" in event else "error")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("cut")

    def _end(self, outcome: str) -> None:
        if not self.ended.done():
            self.ended.set_result(outcome)
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def turn_request(host: str, chat_id: str) -> bytes:
    body = orjson.dumps({"content": QUESTION, "stream": True})
    head = (
        f"POST /chats/{chat_id}/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def hold(url: str, chat_ids: list[str], server_pid: int) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    server = psutil.Process(server_pid)
    idle_rss = server.memory_info().rss
    delays: list[int] = []
    turns: list[StreamedTurn] = []
    gap = RAMP_SECONDS / len(chat_ids)
    started = time.perf_counter()
    for n, chat_id in enumerate(chat_ids):
        await asyncio.sleep(max(0.0, started + n * gap - time.perf_counter()))
        turn = StreamedTurn(turn_request(parts.netloc, chat_id), delays)
        await loop.create_connection(lambda: turn, host, port)  # noqa: B023 (called at once)
        turns.append(turn)
    await asyncio.sleep(1.0)  # every stream open and flowing
    open_rss = server.memory_info().rss
    outcomes = await asyncio.wait_for(asyncio.gather(*(turn.ended for turn in turns)), TIMEOUT_SECONDS)
    cuts = quantiles(delays, n=100) if len(delays) > 1 else [0.0] * 99
    return {
        "streams": len(chat_ids),
        "completed": outcomes.count("ok"),
        "failed": len(outcomes) - outcomes.count("ok"),
        "chunks": len(delays),
        "p50_ms": cuts[49] / 1000,
        "p99_ms": cuts[98] / 1000,
        "bytes_per_stream": (open_rss - idle_rss) / len(chat_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Hold a streamed turn open on every chat of a file.")
    parser.add_argument("url")
    parser.add_argument("chats_file", type=Path)
    parser.add_argument("server_pid", type=int)
    args = parser.parse_args()
    chat_ids = args.chats_file.read_text().split()
    print(json.dumps(uvloop.run(hold(args.url, chat_ids, args.server_pid))))


if __name__ == "__main__":
    main()
