"""The context relay: the least code that keeps chatkeep's promise for a turn, the ceiling its rows are quoted against.

Like chatkeep it keeps each chat's messages, sends the LLM the same context window (the default
system prompt, then the newest messages that fit the same token budget, priced by chatkeep's own
estimate) and appends the question and its reply in order, a chat's turns one at a time so each
reply follows its question. Nothing else: no validation beyond the content, no owners, limits,
idempotency, metrics, summaries or models. `POST /chats/{id}/messages` takes `{"content": str}`
and answers 201 `{"user_message", "assistant_message"}` in chatkeep's message shape; with
`"stream": true`, SSE `user_message`, `delta`..., `assistant_message`, with ids like chatkeep's.

Where the messages live is its `Journal`: none (a dict in memory, the memory store's ceiling), or
SQLite or PostgreSQL (bench/durable.py), where each turn makes the two commits a durable turn
needs: the question before the LLM is called, the reply before the answer. Either way a chat's
messages are also kept in this process, as chatkeep keeps its chats' newest ones, so the window
is read from memory: one process is the only writer.

Run it as `python -m bench.context_relay --port P --llm-url URL [--store memory:// | sqlite:///F | postgresql://...]`,
on the same uvicorn (uvloop, httptools), orjson and aiohttp session settings as the bare relay.
"""

import argparse
import asyncio
import gc
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.durable import open_journal
from bench.relay import GC_THRESHOLDS, JSON_HEADERS, EventStream, _delta, _split_events
from chatkeep.config import Settings
from chatkeep.context import message_tokens

SYSTEM_PROMPT: str = Settings.model_fields["system_prompt"].default
BUDGET: int = Settings.model_fields["context_tokens"].default
MODEL: str = Settings.model_fields["llm_model"].default
OPTIONS = orjson.OPT_UTC_Z
INVALID = {"detail": "expected {'content': str}"}
NO_CHAT = {"detail": "no such chat"}


class Journal(Protocol):
    """Where a chat's messages are made durable; each call is one commit."""

    async def create_chat(self, chat_id: str) -> None: ...

    async def load(self, chat_id: str) -> list[tuple[str, str]] | None:
        """The chat's messages as (role, content), oldest first; None when there is no such chat."""
        ...

    async def append(self, chat_id: str, seq: int, role: str, content: str, created_at: datetime) -> None: ...


class Chat:
    """A chat's messages as the LLM reads them, the tokens of each, and the lock that runs its turns one at a time."""

    __slots__ = ("costs", "lock", "messages")

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.costs: list[int] = []
        self.lock = asyncio.Lock()

    def add(self, role: str, content: str) -> int:
        """Append a message; its seq."""
        self.messages.append({"role": role, "content": content})
        self.costs.append(message_tokens(content))
        return len(self.messages)

    def window(self, system_prompt: str = SYSTEM_PROMPT, budget: int = BUDGET) -> list[dict[str, str]]:
        """What chatkeep's `build_context` sends a chat without a rolling summary: the system
        prompt, then the newest messages while they fit the budget (the newest one always)."""
        remaining = budget - message_tokens(system_prompt)
        start = len(self.messages)
        while start > 0 and (self.costs[start - 1] <= remaining or start == len(self.messages)):
            start -= 1
            remaining -= self.costs[start]
        return [{"role": "system", "content": system_prompt}, *self.messages[start:]]


def _message(chat_id: str, seq: int, role: str, content: str, now: datetime, **reply: Any) -> dict[str, Any]:
    """A message in chatkeep's answer shape (MessageOut)."""
    return {
        "id": f"msg_{chat_id[5:]}{seq}",
        "chat_id": chat_id,
        "seq": seq,
        "role": role,
        "content": content,
        "created_at": now,
        "model": reply.get("model"),
        "usage": reply.get("usage"),
        "status": "completed",
        "incomplete_reason": None,
    }


def _sse(event_id: bytes, name: bytes, data: object) -> bytes:
    return b"id: %b\nevent: %b\ndata: %b\n\n" % (event_id, name, orjson.dumps(data, option=OPTIONS))


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=OPTIONS), status_code=status, media_type="application/json")


class ContextRelay:
    def __init__(self, llm_url: str, journal: Journal | None = None) -> None:
        self._url = llm_url.rstrip("/") + "/chat/completions"
        self._journal = journal
        self._chats: dict[str, Chat] = {}
        self._session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            self._session = session
            gc.freeze()
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
        chat_id = "chat_" + secrets.token_urlsafe(16)
        if self._journal is not None:
            await self._journal.create_chat(chat_id)
        self._chats[chat_id] = Chat()
        return _json({"id": chat_id}, 201)

    async def chat(self, chat_id: str) -> Chat | None:
        """The chat, read back from the journal the first time this process sees it."""
        chat = self._chats.get(chat_id)
        if chat is None and self._journal is not None:
            stored = await self._journal.load(chat_id)
            if stored is None:
                return None
            chat = self._chats.setdefault(chat_id, Chat())
            if not chat.messages:
                for role, content in stored:
                    chat.add(role, content)
        return chat

    async def post_message(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            content = body["content"]
            stream = body.get("stream") is True
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _json(INVALID, 422)
        if not isinstance(content, str) or not content:
            return _json(INVALID, 422)
        chat_id: str = request.path_params["chat_id"]
        chat = await self.chat(chat_id)
        if chat is None:
            return _json(NO_CHAT, 404)
        if stream:
            return EventStream(self._streamed(chat_id, chat, content))
        async with chat.lock:
            question = await self._add(chat_id, chat, "user", content)
            payload = orjson.dumps({"model": MODEL, "messages": chat.window()})
            assert self._session is not None
            async with self._session.post(self._url, data=payload, headers=JSON_HEADERS) as response:
                reply = orjson.loads(await response.read())
            text, usage = reply["choices"][0]["message"]["content"], reply.get("usage")
            answer = await self._add(chat_id, chat, "assistant", text, model=reply.get("model"), usage=usage)
        return _json({"user_message": question, "assistant_message": answer}, 201)

    async def _streamed(self, chat_id: str, chat: Chat, content: str) -> AsyncIterator[bytes]:
        async with chat.lock:
            yield _sse(b"0", b"user_message", await self._add(chat_id, chat, "user", content))
            payload = {"model": MODEL, "messages": chat.window(), "stream": True}
            payload["stream_options"] = {"include_usage": True}
            assert self._session is not None
            pieces: list[str] = []
            usage: Any = None
            async with self._session.post(self._url, data=orjson.dumps(payload), headers=JSON_HEADERS) as response:
                pending = b""
                async for data in response.content.iter_any():
                    events, pending = _split_events(pending + data)
                    texts: list[str] = []
                    for chunk in events:
                        text, usage = _delta(chunk, usage)
                        texts.append(text)
                    text = "".join(texts)
                    if text:  # what one read brought, as one delta: as chatkeep's LLM client reads it
                        pieces.append(text)
                        yield _sse(b"%d" % len(pieces), b"delta", {"content": text})
            answer = await self._add(chat_id, chat, "assistant", "".join(pieces), model=MODEL, usage=usage)
            yield _sse(b"end", b"assistant_message", answer)

    async def _add(self, chat_id: str, chat: Chat, role: str, content: str, **reply: Any) -> dict[str, Any]:
        """Keep a message (committed first, with a journal) and answer it in chatkeep's shape."""
        now = datetime.now(UTC)
        seq = len(chat.messages) + 1
        if self._journal is not None:
            await self._journal.append(chat_id, seq, role, content, now)
        chat.add(role, content)
        return _message(chat_id, seq, role, content, now, **reply)


@asynccontextmanager
async def serving(llm_url: str, store: str) -> AsyncIterator[Starlette]:
    """The relay's app over `store`, its journal open for the block."""
    async with AsyncExitStack() as stack:
        journal: Journal | None = None
        if store != "memory://":
            journal = await stack.enter_async_context(open_journal(store))
        yield ContextRelay(llm_url, journal).app()


async def _serve(args: argparse.Namespace) -> None:
    async with serving(args.llm_url, args.store) as app:
        config = uvicorn.Config(
            app, host=args.host, port=args.port, loop="none", http="httptools", access_log=False, log_level="warning"
        )
        await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description="The context relay the benchmarks compare chatkeep with.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--llm-url", required=True, help="base URL of the OpenAI-compatible API, ending in /v1")
    parser.add_argument("--store", default="memory://", help="memory://, sqlite:///path.db or postgresql://...")
    uvloop.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
