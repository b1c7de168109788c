"""chatkeep served by a real uvicorn on 127.0.0.1, port 0, in the test process; and test settings."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from chatkeep.config import Settings
from chatkeep.server.app import create_app
from chatkeep.server.http_limits import HttpLimitsProtocol, limited_to
from tests.support.fake_openai import FakeOpenAI


def llm_settings(fake: FakeOpenAI, **overrides: Any) -> Settings:
    """Settings that point chatkeep at `fake`, with quick retries for tests."""
    values: dict[str, Any] = {
        "openai_api_key": "sk-test",
        "openai_base_url": fake.url,
        "llm_timeout": 5,
        "llm_max_retries": 2,
    }
    values.update(overrides)
    return Settings(**values)


def serve(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """chatkeep on a real socket for the block, with an HTTP client pointed at it."""
    return serve_app(create_app(settings), settings=settings)


@asynccontextmanager
async def serve_app(app: FastAPI, *, settings: Settings | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """`app` on a real socket for the block, with an HTTP client pointed at it; served with the
    HTTP limits of `serve` (those of `settings`, else the defaults)."""
    http = limited_to(settings) if settings is not None else HttpLimitsProtocol
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on", http=http
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as client:
            yield client
    finally:
        server.should_exit = True
        await task
