"""A scratch PostgreSQL database for the store measure, created before and dropped after.

It lives on the server the machine provides (127.0.0.1:5432, user postgres, trust auth), the
same one the tests use; the benchmark never touches any database but its own.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "chatkeep_bench"
CONNECT_SECONDS = 5


@contextmanager
def scratch_database(admin_url: str = ADMIN_URL, name: str = DATABASE) -> Iterator[str]:
    """The URL of a fresh, empty database `name`, dropped when the block ends.

    Raises OSError or asyncpg.PostgresError when the server cannot be reached or refuses.
    """
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_execute(admin_url, drop, f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rpartition("/")[0] + "/" + name
    finally:
        asyncio.run(_execute(admin_url, drop))


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()
