"""The `store` fixture of the store contract tests: a new, empty store of each kind in turn."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatkeep.store import ChatStore
from tests.support.stores import STORES, open_test_store


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatStore]:
    async with open_test_store(request.param, tmp_path) as store:
        yield store
