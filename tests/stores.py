"""The stores the contract suite runs against, each opened fresh for one test.

A new backend adds one entry to STORES and an `open_*` branch here; every contract test then
runs against it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatkeep.store import ChatStore, open_store

STORES = ["memory"]


@asynccontextmanager
async def open_test_store(kind: str) -> AsyncIterator[ChatStore]:
    if kind == "memory":
        async with open_store("memory://") as store:
            yield store
        return
    raise ValueError(f"unknown test store {kind!r}")
