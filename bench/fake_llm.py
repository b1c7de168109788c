"""A fake OpenAI-compatible LLM that costs next to nothing, so it is never what a benchmark measures.

It is a bare `asyncio.Protocol` on uvloop with its own small HTTP/1.1 parser (keep-alive,
Content-Length bodies): a framework would spend more CPU per request than the servers it feeds.
`POST /v1/chat/completions` answers a `chat.completion` body, or with `"stream": true` SSE
`chat.completion.chunk`s in chunked transfer encoding, ending with a usage chunk and
`data: [DONE]`. Replies are built once per model name; only the usage varies per request.
The request body is not parsed: `model` and `stream` are found by pattern (in JSON, a quote
inside a string is escaped, so `"model":` cannot match inside a message's text). Parsing a
long chat's 30 KB prompt cost 45 µs a request, which the history measure counted as chatkeep's.

With `--stamp`, each streamed content delta is made as it is sent and reads `@<µs> `, the
wall-clock microsecond it left, so a client can tell how late it arrived (bench.streams).

Run it as `python -m bench.fake_llm --port P [--latency S] [--chunks N] [--chunk-delay S] [--stamp]`.
"""

import argparse
import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
import uvloop

COMPLETIONS_PATH = b"/v1/chat/completions"
HEALTH_PATH = b"/healthz"
REPLY_TEXT = "Sure, here is a short and helpful answer about benchmarks, relays and chat sessions"
HEAD_END = b"\r\n\r\n"
MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
STREAM_ON = re.compile(rb'"stream"\s*:\s*true')
BACKLOG = 4096


@dataclass(frozen=True)
class Behaviour:
    latency: float = 0.0
    chunks: int = 70
    chunk_delay: float = 0.0
    stamp: bool = False  # content deltas carry the microsecond they were sent


def reply_pieces(chunks: int) -> list[str]:
    """The reply as `chunks` stream deltas; the non-streamed reply is their concatenation."""
    words = REPLY_TEXT.split()
    return [(" " if i else "") + words[i % len(words)] for i in range(chunks)]


class Replies:
    """Prebuilt answer bodies for each model name asked for."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._pieces = reply_pieces(behaviour.chunks)
        self._content = "".join(self._pieces)
        self._completion_tokens = len(self._pieces)
        self._created = int(time.time())
        self._events: dict[str, list[bytes]] = {}

    def completion(self, model: str, prompt_tokens: int) -> bytes:
        return orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": self._created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": self._content}, "finish_reason": "stop"}
                ],
                "usage": self._usage(prompt_tokens),
            }
        )

    def stream_events(self, model: str, prompt_tokens: int) -> list[bytes]:
        """One HTTP chunk per SSE event: the deltas, the finish chunk, usage, then [DONE]."""
        events = self._events.get(model)
        if events is None:
            events = self._events[model] = self._content_events(model)
        usage = self._chunk(model, [], usage=self._usage(prompt_tokens))
        return [*events, _http_chunk(b"data: " + usage + b"\n\n"), _http_chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]

    def _content_events(self, model: str) -> list[bytes]:
        first = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        chunks = [self._chunk(model, first)]
        for piece in self._pieces:
            chunks.append(self._chunk(model, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        chunks.append(self._chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        return [_http_chunk(b"data: " + chunk + b"\n\n") for chunk in chunks]

    def stamped_event(self, model: str) -> bytes:
        """A content delta reading `@<µs> `: the wall-clock microsecond it is made, just before it is sent."""
        delta = {"content": f"@{time.time_ns() // 1000} "}
        return _http_chunk(
            b"data: " + self._chunk(model, [{"index": 0, "delta": delta, "finish_reason": None}]) + b"\n\n"
        )

    def _chunk(self, model: str, choices: Sequence[object], *, usage: object = None) -> bytes:
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": self._created, "model": model}
        return orjson.dumps({**chunk, "choices": choices, "usage": usage})

    def _usage(self, prompt_tokens: int) -> dict[str, int]:
        total = prompt_tokens + self._completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": self._completion_tokens, "total_tokens": total}


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _response(status: bytes, content_type: bytes, body: bytes, *, close: bool) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return b"HTTP/1.1 %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: %b\r\n\r\n%b" % (
        status,
        content_type,
        len(body),
        connection,
        body,
    )


def _error(status: bytes, message: str, *, close: bool) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return _response(status, b"application/json", body, close=close)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: %b\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class _Request:
    method: bytes
    path: bytes
    body: bytes
    close: bool


class CompletionsProtocol(asyncio.Protocol):
    """One client connection: requests are answered one at a time, in order."""

    def __init__(self, replies: Replies, behaviour: Behaviour) -> None:
        self._replies = replies
        self._behaviour = behaviour
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while not self._busy and self._transport is not None:
            request = self._next_request()
            if request is None:
                return
            self._answer(request)

    def _next_request(self) -> _Request | None:
        end = self._buffer.find(HEAD_END)
        if end < 0:
            return None
        head = bytes(self._buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        start = end + len(HEAD_END)
        if len(self._buffer) < start + length:
            return None
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        method, path, version = head[: head.find(b"\r\n") if b"\r\n" in head else len(head)].split(b" ", 2)
        close = b"\r\nconnection: close" in head or version == b"http/1.0"
        return _Request(method, path, body, close)

    def _answer(self, request: _Request) -> None:
        if request.path == HEALTH_PATH:
            self._send(_response(b"200 OK", b"application/json", b'{"status":"ok"}', close=request.close), request)
            return
        if request.method != b"post" or request.path != COMPLETIONS_PATH:
            self._send(_error(b"404 Not Found", "unknown path", close=request.close), request)
            return
        named = MODEL_FIELD.search(request.body)
        if named is None:
            self._send(_error(b"400 Bad Request", "the body is not a chat completion request", close=True), request)
            return
        model = named[1].decode()
        stream = STREAM_ON.search(request.body) is not None
        prompt_tokens = len(request.body) // 4
        if stream:
            self._later(self._stream, request, model, self._replies.stream_events(model, prompt_tokens))
        else:
            body = self._replies.completion(model, prompt_tokens)
            self._later(self._send, _response(b"200 OK", b"application/json", body, close=request.close), request)

    def _later(self, answer: Callable[..., None], *args: object) -> None:
        if self._behaviour.latency <= 0:
            answer(*args)
            return
        self._busy = True
        self._loop.call_later(self._behaviour.latency, self._resume, answer, args)

    def _resume(self, answer: Callable[..., None], args: tuple[object, ...]) -> None:
        """Answer a delayed request, then go on with the requests that queued behind it."""
        self._busy = False
        answer(*args)
        self._serve_buffered()

    def _stream(self, request: _Request, model: str, events: list[bytes]) -> None:
        head = STREAM_HEAD % (b"close" if request.close else b"keep-alive")
        if self._behaviour.chunk_delay <= 0:
            self._send(head + b"".join(events), request)
            return
        self._busy = True
        self._write(head)
        self._drip(request, model, events, 0)

    def _drip(self, request: _Request, model: str, events: list[bytes], index: int) -> None:
        if index < len(events) - 1:
            stamped = self._behaviour.stamp and 1 <= index <= self._behaviour.chunks  # a content delta
            self._write(self._replies.stamped_event(model) if stamped else events[index])
            self._loop.call_later(self._behaviour.chunk_delay, self._drip, request, model, events, index + 1)
            return
        self._busy = False
        self._send(events[index], request)
        self._serve_buffered()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _send(self, data: bytes, request: _Request) -> None:
        self._write(data)
        if request.close and self._transport is not None:
            self._transport.close()
            self._transport = None


async def serve(host: str, port: int, behaviour: Behaviour) -> None:
    replies = Replies(behaviour)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CompletionsProtocol(replies, behaviour), host, port, backlog=BACKLOG, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer starts")
    parser.add_argument("--chunks", type=int, default=70, help="content deltas in a streamed reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--stamp", action="store_true", help="content deltas read @<µs sent> (needs --chunk-delay)")
    args = parser.parse_args()
    behaviour = Behaviour(latency=args.latency, chunks=args.chunks, chunk_delay=args.chunk_delay, stamp=args.stamp)
    uvloop.run(serve(args.host, args.port, behaviour))


if __name__ == "__main__":
    main()
