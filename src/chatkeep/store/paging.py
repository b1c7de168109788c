"""Cursor pages as key ranges: the list contract (docs/architecture.md, "Lists"), in one place for every store.

A listed object has a monotonic integer key (a chat's `rank`, a message's `seq`, both from 1), or,
for chats listed by last activity, the pair (`updated_at`, id): an `ActivityKey`.
A page request becomes an exclusive key range plus the end to read from; reading one row more
than the limit tells `has_more` without counting. `after` and `before` refer to the order
asked for; paging with only `before` walks backwards, so the page holds the items closest to
the cursor. Every store reads its rows through this, so none can drift from the others.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from chatkeep.domain import Chat, PageRequest
from chatkeep.errors import InvalidCursorError

T = TypeVar("T")
K = TypeVar("K")

NO_LOWER_KEY = 0  # keys start at 1
NO_UPPER_KEY = 2**62  # beyond any key, still a 64-bit integer for both databases

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
ActivityKey = tuple[datetime, str]  # a chat's place in the list by last activity: its updated_at, then its id
# Before and after any chat's: every chat's updated_at lies between, and an equal time never occurs.
NO_LOWER_ACTIVITY: ActivityKey = (datetime(1, 1, 2, tzinfo=UTC), "")
NO_UPPER_ACTIVITY: ActivityKey = (datetime(9999, 12, 30, tzinfo=UTC), "")
CURSOR_MARK = "."  # between an activity cursor's chat id and its time: no chat id holds one


@dataclass(slots=True, frozen=True)
class KeyRange(Generic[K]):
    """Rows with `above < key < below`, read from the low end (`descending` False) or the high end."""

    above: K
    below: K
    descending: bool
    fetch: int  # rows to read: the limit plus one that tells has_more


def key_range(
    page: PageRequest, keys: Mapping[str, K], what: str, *, lowest: Any = NO_LOWER_KEY, highest: Any = NO_UPPER_KEY
) -> KeyRange[K]:
    """The range `page` asks for; `keys` maps the cursor ids that exist to their keys, which lie
    strictly between `lowest` and `highest` (by default, integer keys').

    Raises InvalidCursorError, naming `what` was listed, for a cursor missing from `keys`.
    """

    def key(cursor: str) -> K:
        if cursor not in keys:
            raise InvalidCursorError(f"no {what} {cursor!r} to page from")
        return keys[cursor]

    ascending = page.order == "asc"
    after = key(page.after) if page.after is not None else None
    before = key(page.before) if page.before is not None else None
    lower, upper = (after, before) if ascending else (before, after)
    from_low_end = ascending == (page.before is None or page.after is not None)
    return KeyRange(
        above=lowest if lower is None else lower,
        below=highest if upper is None else upper,
        descending=not from_low_end,
        fetch=page.limit + 1,
    )


def activity_range(page: PageRequest, keys: Mapping[str, ActivityKey]) -> KeyRange[ActivityKey]:
    """`key_range` for chats listed by last activity: `keys` holds the chats the cursors name, and
    `activity_keys` adds the cursors that spell out a place."""
    keys = {**keys, **activity_keys(page)}
    return key_range(page, keys, "chat", lowest=NO_LOWER_ACTIVITY, highest=NO_UPPER_ACTIVITY)


def activity_cursor(chat: Chat) -> str:
    """The cursor of the place `chat` is listed at by last activity: `<id>.<updated_at in µs>`.

    Paging from it stays put when that chat moves on (a new message lifts it to the top), where
    paging from its id would start again from the chat's new place."""
    return f"{chat.id}{CURSOR_MARK}{(chat.updated_at - EPOCH) // MICROSECOND}"


def activity_keys(page: PageRequest) -> dict[str, ActivityKey]:
    """The page's cursors that spell out a place (`activity_cursor`), with their keys."""
    keys: dict[str, ActivityKey] = {}
    for cursor in (page.after, page.before):
        chat_id, mark, micros = (cursor or "").rpartition(CURSOR_MARK)
        if mark and chat_id and micros.isascii() and micros.isdigit() and len(micros) <= 18:
            moment = EPOCH + int(micros) * MICROSECOND
            if NO_LOWER_ACTIVITY[0] < moment < NO_UPPER_ACTIVITY[0]:
                keys[cursor or ""] = (moment, chat_id)
    return keys


def is_activity_cursor(cursor: str) -> bool:
    return CURSOR_MARK in cursor


def newest_first(limit: int, before_seq: int | None, after_seq: int) -> KeyRange[int]:
    """The range `recent_messages` reads: after_seq < seq < before_seq, newest first."""
    return KeyRange(after_seq, NO_UPPER_KEY if before_seq is None else before_seq, descending=True, fetch=limit)


def page_rows(rows: Sequence[T], page: PageRequest, keys: KeyRange[Any]) -> tuple[list[T], bool]:
    """The page from rows read in `keys`' direction: trimmed to the limit, in the order asked for."""
    window = list(rows[: page.limit])
    if keys.descending == (page.order == "asc"):
        window.reverse()
    return window, len(rows) > page.limit
