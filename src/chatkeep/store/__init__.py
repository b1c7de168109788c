"""State behind one contract: `ChatStore` (protocols.py), and `open_store(url)` that picks the backend.

The memory store (memory/) is the specification and the default; the SQL stores (sql/) are one
`SqlStore` over a driver for SQLite or PostgreSQL. Callers import from here, so where a backend
lives can change without them.
"""

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import asyncpg

from chatkeep.errors import StoreUnavailableError
from chatkeep.store.blobs import BlobStore, DirectoryBlobs
from chatkeep.store.memory import MemoryStore
from chatkeep.store.protocols import (
    MAX_BROADCAST_BYTES,
    Broadcast,
    Chats,
    ChatStore,
    IdempotencyKeyStore,
    MessageLog,
    RateLease,
    RateSlots,
    ResponseStore,
    Summaries,
    TurnTicket,
    TurnTickets,
)
from chatkeep.store.sql.base import SqlStore
from chatkeep.store.sql.postgres import open_postgres_store
from chatkeep.store.sql.sqlite import open_sqlite_store
from chatkeep.store.sql.tickets import LEASE_SECONDS
from chatkeep.store.urls import POSTGRES_SCHEMES, check_store_url, redacted

__all__ = [
    "MAX_BROADCAST_BYTES",
    "Broadcast",
    "ChatStore",
    "Chats",
    "IdempotencyKeyStore",
    "MemoryStore",
    "MessageLog",
    "RateLease",
    "RateSlots",
    "ResponseStore",
    "SqlStore",
    "Summaries",
    "TurnTicket",
    "TurnTickets",
    "open_store",
]


# How opening a store fails when the database is not there to open: unreachable, refused,
# missing, or a file that cannot be created or written.
OPEN_ERRORS = (OSError, TimeoutError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)


@asynccontextmanager
async def open_store(
    url: str, *, lease_seconds: float = LEASE_SECONDS, blob_dir: str | None = None
) -> AsyncIterator[ChatStore]:
    """Open the store named by `url` for the lifetime of the block.

    `memory://`; `sqlite:///relative.db` or `sqlite:////absolute.db` (`?synchronous=full` to
    survive power loss too); `postgresql://user@host/db` or `postgres://...` (`?pool_size=20`).
    `lease_seconds` is how long a turn's hold on its chat (and a claimed key) lasts without a
    heartbeat, on the SQL stores. Attachments' bytes live in the store (memory, or the database's
    `blobs` table) unless `blob_dir` names a directory for them. Raises ValueError for a URL that names no store, and
    StoreUnavailableError, saying why, when the store cannot be opened.
    """
    check_store_url(url)
    async with AsyncExitStack() as stack:
        try:
            blobs = DirectoryBlobs(blob_dir) if blob_dir else None
            store = await stack.enter_async_context(_store_at(url, lease_seconds, blobs))
        except OPEN_ERRORS as error:
            reason = str(error).strip() or type(error).__name__
            raise StoreUnavailableError(f"cannot open {redacted(url)}: {reason}") from error
        yield store


def _store_at(url: str, lease_seconds: float, blobs: BlobStore | None) -> AbstractAsyncContextManager[ChatStore]:
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        return open_sqlite_store(url, lease_seconds=lease_seconds, blobs=blobs)
    if scheme in POSTGRES_SCHEMES:
        return open_postgres_store(url, lease_seconds=lease_seconds, blobs=blobs)
    return _memory(blobs)


@asynccontextmanager
async def _memory(blobs: BlobStore | None) -> AsyncIterator[ChatStore]:
    yield MemoryStore(blobs)
