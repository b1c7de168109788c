"""The official `openai` SDK pointed at chatkeep on a real socket, for the /v1 tests."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from openai import AsyncOpenAI

from tests.support.fake_openai import FakeOpenAI


@dataclass
class Served:
    sdk: Any  # an AsyncOpenAI; typed loosely, as its request types are unions the tests' dicts need not spell out
    http: httpx.AsyncClient
    fake: FakeOpenAI


def sdk_for(http: httpx.AsyncClient, *, api_key: str = "sk-anything", max_retries: int = 0) -> Any:
    """The `openai` SDK pointed at chatkeep (typed loosely, as `Served.sdk` says why)."""
    return AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key=api_key, max_retries=max_retries)


async def all_items(sdk: Any, conversation_id: str, **params: Any) -> list[Any]:
    return [item async for item in sdk.conversations.items.list(conversation_id, **params)]


async def until_response(sdk: Any, response_id: str, done: Callable[[Any], bool], *, seconds: float = 30) -> Any:
    """The response once `done` says so, read back every 20 ms for up to `seconds`. The wait is
    what a loaded machine may need, not what a response takes; and it outlasts the turn lease
    (15 s), after which a response that nobody keeps alive is answered `failed`, so a lost
    record ends the wait saying so, not `in_progress`."""
    started = time.monotonic()
    while True:
        response = await sdk.responses.retrieve(response_id)
        if done(response):
            return response
        waited = time.monotonic() - started
        if waited > seconds:
            raise AssertionError(
                f"response {response_id} never got there in {waited:.1f}s: {response.status},"
                f" {response.output_text!r}, error {response.error}"
            )
        await asyncio.sleep(0.02)
