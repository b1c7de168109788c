"""What the browser tests share, on each test module's event loop (the browser's): Debian's
Chromium, one per module, the fake LLM and chatkeep without API keys in front of it."""

import os
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.browser.test_web_page import Tab, browsing
from tests.support.app import llm_settings, serve
from tests.support.browser import BIG_MODEL, CHROMIUM, DEFAULT_MODEL, open_chromium
from tests.support.fake_openai import FakeOpenAI


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    async with open_chromium() as chromium:
        yield chromium


@pytest_asyncio.fixture(loop_scope="module")
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="module")
async def api(fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep without API keys, as `chatkeep serve` runs by default."""
    async with serve(llm_settings(fake_llm)) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    async with browsing(browser) as tab:
        yield tab


@pytest_asyncio.fixture(loop_scope="module")
async def models_api(fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep serving two models, its upstream answering as the model it was asked for."""
    fake_llm.reported_model = lambda body: body["model"]
    async with serve(llm_settings(fake_llm, llm_model=DEFAULT_MODEL, llm_models=BIG_MODEL)) as client:
        yield client
