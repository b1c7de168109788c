"""Versioned schema changes: ordered, named steps (`m001_initial`, ...) recorded in a table.

The steps themselves are written once for both SQL stores in `schema`, which also applies the
pending ones when a store opens, each in a transaction together with the row that records it,
under a lock that keeps two processes starting at once from applying one twice. A migration is
never edited once released: a change to the schema is a new, later step, so an old database
upgrades by running exactly the steps it lacks.
"""

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from chatkeep.errors import StoreUnavailableError

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "chatkeep_migrations"


@dataclass(slots=True, frozen=True)
class Migration:
    name: str  # `m<NNN>_<what>`; the number orders the steps
    steps: tuple[str, ...]  # SQL statements, run in order


def pending(migrations: Sequence[Migration], applied: Collection[str]) -> list[Migration]:
    """The migrations not yet in `applied`, in order.

    A database may have steps this code does not know (a newer chatkeep migrated it during a
    rolling upgrade); that is logged, not refused, since released steps only ever add.
    """
    names = [migration.name for migration in migrations]
    if names != sorted(set(names)):
        raise ValueError(f"migrations must have unique names in order: {names}")
    unknown = sorted(set(applied) - set(names))
    if unknown:
        log.warning("the database has migrations this version does not know: %s", ", ".join(unknown))
    return [migration for migration in migrations if migration.name not in applied]


def check_schema(applied: Collection[str], migrations: Sequence[Migration]) -> None:
    """Raise StoreUnavailableError when the database lacks a migration this version needs."""
    missing = [migration.name for migration in migrations if migration.name not in applied]
    if missing:
        raise StoreUnavailableError(f"the database lacks the migrations {', '.join(missing)} that this version needs")
