"""A fake OpenAI-compatible server on a real socket, speaking the real wire format.

Tests start it, point chatkeep at it and script it: canned replies, error statuses with
Retry-After, latency, hangs and garbage bodies. It records every request body it was sent, so
tests assert on the prompt chatkeep really built. By default it answers `echo: <last user
message>`, which lets concurrency tests check that each reply follows its own question.
"""

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import ClientConnectionResetError, web

MODEL = "fake-model"
MAX_REQUEST_BYTES = 256 * 2**20  # prompts with images are megabytes: aiohttp's default would refuse them past 1 MiB


@dataclass
class Scripted:
    """One scripted answer: a status with a JSON body, raw bytes, or a reply text."""

    status: int = 200
    content: str | None = None
    json_body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    chunk_delay: float = 0.0  # between the chunks of a streamed answer
    cut_after: int | None = None  # a streamed answer ends abruptly after this many chunks
    stall_after: int | None = None  # a streamed answer goes silent after this many chunks, until the fake stops
    garbage_after: int | None = None  # a streamed answer sends a broken chunk after this many
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, JSON arguments) the model calls
    usage: dict[str, Any] | None = None  # a streamed answer's usage chunk, when not 11 prompt tokens and one a word


def completion(
    content: str | None,
    *,
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
    tool_calls: list[tuple[str, str]] | None = None,
    model: str | None = MODEL,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for n, (name, arguments) in enumerate(tool_calls)
        ]
    finish = "tool_calls" if tool_calls else "stop"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 18},
    }


def tool_call_chunks(tool_calls: list[tuple[str, str]]) -> list[bytes]:
    """Each call as Chat Completions streams it: id and name first, then its arguments in two halves."""
    chunks = []
    for n, (name, arguments) in enumerate(tool_calls):
        half = len(arguments) // 2
        opening = {"index": n, "id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(chunk({"tool_calls": [opening]}))
        for part in (arguments[:half], arguments[half:]):
            chunks.append(chunk({"tool_calls": [{"index": n, "function": {"arguments": part}}]}))
    chunks.append(chunk({}, finish_reason="tool_calls"))
    return chunks


def chunk(
    delta: dict[str, Any] | None,
    *,
    usage: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    model: str | None = MODEL,
) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}
    return b"data: " + orjson.dumps(body | {"choices": choices, "usage": usage}) + b"\n\n"


def error_body(message: str, kind: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def roles_and_contents(prompt: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """A prompt the fake was sent, as (role, content) pairs."""
    return [(message["role"], message["content"]) for message in prompt]


def echo(body: dict[str, Any]) -> str:
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    return f"echo: {users[-1] if users else ''}"


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.abandoned = 0  # streamed answers whose client went away before the end
        self.headers: list[dict[str, str]] = []
        self.script: deque[Scripted] = deque()
        self.latency = 0.0
        self.reply: Callable[[dict[str, Any]], str] = echo
        # Consulted before the queue: a Scripted answer for the request, or None for the usual one.
        self.respond: Callable[[dict[str, Any]], Scripted | None] = lambda body: None
        # The model its answers say wrote them (None: they name none, as some servers' do).
        self.reported_model: Callable[[dict[str, Any]], str | None] = lambda body: MODEL
        self.in_flight = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    def queue(self, *answers: Scripted) -> None:
        self.script.extend(answers)

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [request["messages"] for request in self.requests]

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stopping.set()  # lets hung requests end, so shutdown does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        answer = self.respond(body) or (self.script.popleft() if self.script else Scripted())
        await asyncio.sleep(answer.delay or self.latency)
        if answer.hang:
            await self._stopping.wait()
        if answer.raw is not None:
            return web.Response(body=answer.raw, status=answer.status, headers=answer.headers)
        content = answer.content if answer.content is not None or answer.tool_calls else self.reply(body)
        if body.get("stream") and answer.status == 200 and answer.json_body is None:
            return await self._stream(request, answer, content, self.reported_model(body))
        payload = answer.json_body
        if payload is None:
            payload = completion(content, tool_calls=answer.tool_calls, model=self.reported_model(body))
        return web.Response(
            body=orjson.dumps(payload), status=answer.status, headers=answer.headers, content_type="application/json"
        )

    async def _stream(
        self, request: web.Request, answer: Scripted, content: str | None, model: str | None
    ) -> web.StreamResponse:
        """The answer as Chat Completions chunks: role, a delta per word, tool calls, usage, [DONE]."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = [word + " " for word in content.split(" ")] if content else [" "]
        words[-1] = words[-1][:-1]
        opening = chunk({"role": "assistant", "content": ""}, model=model)
        chunks = [opening, *(chunk({"content": w}, model=model) for w in words if w)]
        chunks += tool_call_chunks(answer.tool_calls) if answer.tool_calls else []
        usage = answer.usage if answer.usage is not None else {"prompt_tokens": 11, "completion_tokens": len(words)}
        chunks.append(chunk(None, usage=usage, model=model))
        chunks.append(b"data: [DONE]\n\n")
        for n, data in enumerate(chunks):
            if n == answer.cut_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if n == answer.stall_after:
                await self._stopping.wait()
                return response
            if n == answer.garbage_after:
                data = b"data: {this is not json\n\n"
            if request.transport is None or request.transport.is_closing():
                self.abandoned += 1
                return response
            await response.write(data)
            await asyncio.sleep(answer.chunk_delay)
        try:
            await response.write_eof()
        except ClientConnectionResetError:  # the client left after the last chunk
            self.abandoned += 1
        return response
