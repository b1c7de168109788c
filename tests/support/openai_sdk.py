"""The official `openai` SDK pointed at chatkeep on a real socket, for the /v1 tests."""

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
