"""State behind one protocol: `ChatStore`, and `open_store(url)` that picks the backend."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatkeep.store.base import ChatStore
from chatkeep.store.memory import MemoryStore

__all__ = ["ChatStore", "MemoryStore", "open_store"]


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[ChatStore]:
    """Open the store named by `url` (`memory://`, ...) for the lifetime of the block."""
    scheme = url.partition("://")[0]
    if scheme == "memory":
        yield MemoryStore()
        return
    raise ValueError(f"unsupported store URL {url!r}: expected memory://")
