"""Fixtures every folder shares; each folder holds the tests that need the same things.

Helpers live in tests/support/; a fixture is here when tests of more than one module use it.
"""

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI
from tests.support.stores import SQL_STORES, STORES, fresh_database


@pytest.fixture(autouse=True)
def _no_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say every setting they rely on; a developer's own CHATKEEP_* or OPENAI_* is not one."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "CHATKEEP_")) and not name.startswith("CHATKEEP_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


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


@pytest.fixture(params=STORES)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database of each store in turn (tests.support.stores.STORES)."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=SQL_STORES)
async def sql_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new, empty database of each SQL store in turn (tests.support.stores.SQL_STORES)."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url
