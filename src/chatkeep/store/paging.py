"""Cursor pages as key ranges: the list contract (docs/architecture.md, "Lists"), in one place for every store.

A listed object has a monotonic integer key (a chat's `rank`, a message's `seq`, both from 1).
A page request becomes an exclusive key range plus the end to read from; reading one row more
than the limit tells `has_more` without counting. `after` and `before` refer to the order
asked for; paging with only `before` walks backwards, so the page holds the items closest to
the cursor. Every store reads its rows through this, so none can drift from the others.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from chatkeep.domain import PageRequest
from chatkeep.errors import InvalidCursorError

T = TypeVar("T")

NO_LOWER_KEY = 0  # keys start at 1
NO_UPPER_KEY = 2**62  # beyond any key, still a 64-bit integer for both databases


@dataclass(slots=True, frozen=True)
class KeyRange:
    """Rows with `above < key < below`, read from the low end (`descending` False) or the high end."""

    above: int
    below: int
    descending: bool
    fetch: int  # rows to read: the limit plus one that tells has_more


def key_range(page: PageRequest, keys: Mapping[str, int], what: str) -> KeyRange:
    """The range `page` asks for; `keys` maps the cursor ids that exist to their keys.

    Raises InvalidCursorError, naming `what` was listed, for a cursor missing from `keys`.
    """

    def key(cursor: str) -> int:
        if cursor not in keys:
            raise InvalidCursorError(f"no {what} {cursor!r} to page from")
        return keys[cursor]

    ascending = page.order == "asc"
    after = key(page.after) if page.after is not None else None
    before = key(page.before) if page.before is not None else None
    lower, upper = (after, before) if ascending else (before, after)
    from_low_end = ascending == (page.before is None or page.after is not None)
    return KeyRange(
        above=NO_LOWER_KEY if lower is None else lower,
        below=NO_UPPER_KEY if upper is None else upper,
        descending=not from_low_end,
        fetch=page.limit + 1,
    )


def newest_first(limit: int, before_seq: int | None, after_seq: int) -> KeyRange:
    """The range `recent_messages` reads: after_seq < seq < before_seq, newest first."""
    return KeyRange(after_seq, NO_UPPER_KEY if before_seq is None else before_seq, descending=True, fetch=limit)


def page_rows(rows: Sequence[T], page: PageRequest, keys: KeyRange) -> tuple[list[T], bool]:
    """The page from rows read in `keys`' direction: trimmed to the limit, in the order asked for."""
    window = list(rows[: page.limit])
    if keys.descending == (page.order == "asc"):
        window.reverse()
    return window, len(rows) > page.limit
