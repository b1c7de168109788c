"""State behind one protocol: `ChatStore`, and `open_store(url)` that picks the backend."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatkeep.store.base import ChatStore
from chatkeep.store.memory import MemoryStore
from chatkeep.store.postgres import PostgresStore, open_postgres_store
from chatkeep.store.sqlite import SqliteStore, open_sqlite_store

__all__ = ["ChatStore", "MemoryStore", "PostgresStore", "SqliteStore", "open_store"]


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[ChatStore]:
    """Open the store named by `url` for the lifetime of the block.

    `memory://`; `sqlite:///relative.db` or `sqlite:////absolute.db` (`?synchronous=full` to
    survive power loss too); `postgresql://user@host/db` or `postgres://...` (`?pool_size=20`).
    """
    scheme = url.partition("://")[0]
    if scheme == "memory":
        yield MemoryStore()
    elif scheme == "sqlite":
        async with open_sqlite_store(url) as sqlite:
            yield sqlite
    elif scheme in ("postgresql", "postgres"):
        async with open_postgres_store(url) as postgres:
            yield postgres
    else:
        raise ValueError(
            f"unsupported store URL {url!r}: expected memory://, sqlite:///path.db or postgresql://user@host/db"
        )
