"""Shared fixtures: a fake OpenAI server, and chatkeep served by a real uvicorn on 127.0.0.1:0."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from chatkeep.app import create_app
from chatkeep.config import Settings
from tests.fake_openai import FakeOpenAI

ServeFn = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(autouse=True)
def _no_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say every setting they rely on; a developer's own CHATKEEP_* or OPENAI_* is not one."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "CHATKEEP_")) and not name.startswith("CHATKEEP_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


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
    return serve_app(create_app(settings))


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`app` on a real socket for the block, with an HTTP client pointed at it."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on")
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


@pytest.fixture
async def client(fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep in front of the fake LLM."""
    async with serve(llm_settings(fake_llm)) as client:
        yield client


@pytest.fixture
async def offline_client() -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep with the offline provider, as `make run` serves it without a key."""
    async with serve(Settings(llm_provider="offline")) as client:
        yield client


async def new_chat(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/chats", json=body)
    assert response.status_code == 201, response.text
    chat_id: str = response.json()["id"]
    return chat_id


async def post(client: httpx.AsyncClient, chat_id: str, content: str) -> httpx.Response:
    return await client.post(f"/chats/{chat_id}/messages", json={"content": content})


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until `condition()` holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
