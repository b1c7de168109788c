"""The bare relay: the least a chat service over an OpenAI-compatible LLM can do per turn.

`POST /chats/{id}/messages` with `{"content": str}` makes one call to the LLM on a pooled
aiohttp session and answers JSON; with `"stream": true` it relays the LLM's chunks as SSE
(`user_message`, `delta`..., `assistant_message`, like chatkeep). It stores nothing and checks
nothing beyond what it must, so it is the ceiling every benchmark ratio is taken against: orjson,
bytes throughout, an unlimited connection pool, and the stream sent straight to the ASGI server
(one write per upstream read, no task per response as Starlette's `StreamingResponse` has).

Run it as `python -m bench.relay --port P --llm-url http://127.0.0.1:Q/v1` (uvloop, httptools).
"""

import argparse
import gc
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODEL = "bench-model"
# chatkeep's collector settings (chatkeep.server.app): requests in flight survive young collections and get
# promoted, so with CPython's default (700, 10, 10) a busy server runs full collections every second
# or so; far rarer ones, each in small steps, cost it nothing and keep its pauses short.
GC_THRESHOLDS = (5_000, 10, 100)
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
DATA_PREFIX = b"data: "
DONE = b"[DONE]"


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _event(name: bytes, data: object) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (name, orjson.dumps(data))


class EventStream(Response):
    """`text/event-stream` written as the iterator yields, without the per-response task."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for data in self._events:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Relay:
    def __init__(self, llm_url: str) -> None:
        self._url = llm_url.rstrip("/") + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            self._session = session
            gc.freeze()  # what startup built is never garbage: keep it out of every collection
            gc.set_threshold(*GC_THRESHOLDS)
            yield

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.get_health, methods=["GET"]),
            Route("/chats", self.create_chat, methods=["POST"]),
            Route("/chats/{chat_id}/messages", self.post_message, methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan)

    async def get_health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def create_chat(self, request: Request) -> Response:
        return _json({"id": "chat_" + secrets.token_urlsafe(16)}, 201)

    async def post_message(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            content = body["content"]
            stream = body.get("stream") is True
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _json({"detail": "expected {'content': str}"}, 422)
        if not isinstance(content, str) or not content:
            return _json({"detail": "expected {'content': str}"}, 422)
        question = {"role": "user", "content": content}
        if stream:
            return EventStream(self._stream(question))
        payload = orjson.dumps({"model": MODEL, "messages": [question]})
        assert self._session is not None
        async with self._session.post(self._url, data=payload, headers=JSON_HEADERS) as response:
            reply = orjson.loads(await response.read())
        answer = {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}
        answer |= {"model": reply.get("model"), "usage": reply.get("usage")}
        return _json({"user_message": question, "assistant_message": answer}, 201)

    async def _stream(self, question: dict[str, str]) -> AsyncIterator[bytes]:
        payload = {"model": MODEL, "messages": [question], "stream": True, "stream_options": {"include_usage": True}}
        assert self._session is not None
        yield _event(b"user_message", question)
        pieces: list[str] = []
        usage: Any = None
        async with self._session.post(self._url, data=orjson.dumps(payload), headers=JSON_HEADERS) as response:
            pending = b""
            async for data in response.content.iter_any():
                events, pending = _split_events(pending + data)
                out: list[bytes] = []
                for chunk in events:
                    text, usage = _delta(chunk, usage)
                    if text:
                        pieces.append(text)
                        out.append(_event(b"delta", {"content": text}))
                if out:
                    yield b"".join(out)
        yield _event(b"assistant_message", {"role": "assistant", "content": "".join(pieces), "usage": usage})


def _split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete `data:` payloads in `data` (SSE events end with a blank line), and the rest."""
    *complete, rest = data.split(b"\n\n")
    payloads = [event[len(DATA_PREFIX) :] for event in complete if event.startswith(DATA_PREFIX)]
    return [payload for payload in payloads if payload != DONE], rest


def _delta(chunk: bytes, usage: Any) -> tuple[str, Any]:
    data = orjson.loads(chunk)
    choices = data.get("choices")
    text = ((choices[0].get("delta") or {}).get("content") or "") if choices else ""
    return text, data.get("usage") or usage


def main() -> None:
    parser = argparse.ArgumentParser(description="The bare relay the benchmarks compare chatkeep with.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--llm-url", required=True, help="base URL of the OpenAI-compatible API, ending in /v1")
    args = parser.parse_args()
    app = Relay(args.llm_url).app()
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
