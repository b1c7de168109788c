"""`SqlBlobs`: attachments' bytes in the `blobs` table of the SQL store's own database (m014),
PostgreSQL's `bytea` or SQLite's BLOB, so that a backup of the database holds them too."""

from collections.abc import Awaitable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from chatkeep.domain import utcnow
from chatkeep.store.blobs import Blob
from chatkeep.store.sql.statements import Plan, Statements, execute_each, fetchrow

T = TypeVar("T")


class BlobDriver(Protocol):
    """What of a SQL store's driver the blobs need."""

    sql: Statements

    def run(self, plan: Plan[T], *, write: bool = False) -> Awaitable[T]: ...

    def stamp(self, moment: datetime) -> Any: ...


class SqlBlobs:
    def __init__(self, driver: BlobDriver) -> None:
        self._driver = driver

    async def put(self, blobs: Sequence[Blob]) -> None:
        now = self._driver.stamp(utcnow())
        rows: list[tuple[object, ...]] = [(blob.sha256, len(blob.data), blob.data, now) for blob in blobs]
        await self._driver.run(self._insert(rows), write=True)

    async def get(self, hashes: Collection[str]) -> dict[str, bytes]:
        return await self._driver.run(self._select(sorted(hashes)))

    def _insert(self, rows: list[tuple[object, ...]]) -> Plan[None]:
        yield execute_each(self._driver.sql.insert_blob, rows)

    def _select(self, hashes: list[str]) -> Plan[dict[str, bytes]]:
        found = {}
        for digest in hashes:  # an attachment or two per message: a lookup each
            row = yield fetchrow(self._driver.sql.select_blob, digest)
            if row is not None:
                found[digest] = bytes(row[0])
        return found
