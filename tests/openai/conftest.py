from collections.abc import AsyncIterator

import pytest

from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI
from tests.support.openai_sdk import Served, sdk_for


@pytest.fixture
async def served(store_url: str, fake_llm: FakeOpenAI) -> AsyncIterator[Served]:
    """chatkeep on every store in front of the fake upstream, with the SDK pointed at it."""
    async with serve(llm_settings(fake_llm, store=store_url)) as http, sdk_for(http) as sdk:
        yield Served(sdk, http, fake_llm)
