# Fast subset: `pytest -m "unit or store"`, the 283 of 627 tests that start no chatkeep server,
# measured at 40 s (the whole suite at 4.5 min) on a 2-CPU machine with PostgreSQL running locally.
"""Fixtures every folder shares, and each test marked by its folder (its marker is what it needs).

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

# One folder, and one marker of the same name (registered in pyproject.toml), for each thing a test needs.
GROUPS = ("unit", "store", "api", "openai", "processes", "browser")
TESTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = item.path.relative_to(TESTS).parts[0]
        if group not in GROUPS:
            raise pytest.UsageError(f"{item.nodeid}: every test module belongs in one of the folders {GROUPS}")
        item.add_marker(group)


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
