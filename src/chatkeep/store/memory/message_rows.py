"""Messages as the memory store keeps them: their ids and creation times in one buffer of their chat.

A message's id string and `created_at` datetime are objects of their own, a large share of what
the store spends on a message beside its text, so each chat keeps them instead as fixed-size
rows of one `MessageRows` buffer (the creation's microsecond and the id's random bytes). A
`StoredMessage` is a `Message` whose `id` and `created_at` slots point at those rows, and whose
properties of the same names turn them back into the string and the datetime when read. Turns
read few of them (the context is built from the role, content, seq and item of each message,
which stay plain slots), so building a message this way saves more than those reads cost.
"""

import os
import struct
import time
from binascii import Error as Base64Error
from binascii import a2b_base64, b2a_base64
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from chatkeep.domain import IncompleteReason, Message, MessageStatus, Role, Usage

ID_BYTES = 16  # as random as `new_id`'s
_ROW = struct.Struct(f"<q{ID_BYTES}s")  # microseconds since the epoch, the id's random bytes
SEQ_BYTES = 6  # a chat's seq, written after the random bytes of its message's id
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_ID_CHARS = -(-(ID_BYTES + SEQ_BYTES) * 4 // 3)  # base64 without its padding
_NAMES = tuple(f.name for f in fields(Message))
_ID = Message.__dict__["id"]  # the slots beneath StoredMessage's properties of the same names
_CREATED_AT = Message.__dict__["created_at"]


def now_us() -> int:
    """Microseconds since the epoch: the instant `utcnow()` would give, without building a datetime."""
    return time.time_ns() // 1000


def moment(stamp: int) -> datetime:
    """The aware datetime `stamp` microseconds after the epoch; exact, as a double holds those to
    well under half a microsecond until the year 2242."""
    return datetime.fromtimestamp(stamp / 1e6, UTC)


class MessageRows:
    """The creation time and id bytes of each of one chat's messages, the row of `seq` at
    `seq - 1`: one growing buffer, which fragments the heap less than one per column."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows = bytearray()

    def add(self) -> int:
        """The next message's row: created now, with a new random id. Its creation time is returned."""
        stamp = now_us()
        self._rows += _ROW.pack(stamp, os.urandom(ID_BYTES))
        return stamp

    def add_at(self, stamp: int) -> None:
        """The next message's row, created at `stamp` (microseconds since the epoch): a message
        stored as an export gave it, whose id its caller chose (no random bytes are drawn)."""
        self._rows += _ROW.pack(stamp, bytes(ID_BYTES))

    def before(self, seq: int) -> "MessageRows":
        """A new buffer of this one's rows of the seqs before `seq`: the chat's rows once its
        messages from `seq` on left its current branch (each keeping its id and creation time in
        its own slots). This buffer is never written again, so a message object read from it
        earlier, which a caller may still hold, keeps reading its own id, never that of a message
        stored later at its seq."""
        rows = MessageRows()
        rows._rows = self._rows[: _ROW.size * (seq - 1)]
        return rows

    def message_id(self, seq: int) -> str:
        """`msg_` then the base64 of the message's random bytes and its seq: an id as opaque as
        `new_id`'s whose message is found without an index (`seq_in`)."""
        _, random = _ROW.unpack_from(self._rows, _ROW.size * (seq - 1))
        token = b2a_base64(random + seq.to_bytes(SEQ_BYTES), newline=False).translate(_URLSAFE)
        return f"msg_{token.rstrip(b'=').decode()}"

    def created_at(self, seq: int) -> datetime:
        stamp, _ = _ROW.unpack_from(self._rows, _ROW.size * (seq - 1))
        return moment(stamp)


def seq_in(message_id: str) -> int | None:
    """The seq a memory-store message id carries (see `MessageRows.message_id`), or None for an
    id of another shape; the caller checks that the message with that seq has this very id."""
    prefix, _, token = message_id.partition("_")
    if prefix != "msg" or len(token) != _ID_CHARS or not token.isascii():
        return None
    try:
        raw = a2b_base64(token.encode().translate(_FROM_URLSAFE) + b"==")
    except Base64Error:
        return None
    return int.from_bytes(raw[ID_BYTES:]) if len(raw) == ID_BYTES + SEQ_BYTES else None


class StoredMessage(Message):
    """A message whose `id` and `created_at` are read from its chat's `MessageRows`, unless its slots
    hold the values themselves (an id the caller chose; a copy made by `dataclasses.replace`)."""

    __slots__ = ()
    __dataclass_fields__ = Message.__dataclass_fields__  # orjson writes only the dataclasses whose own class says so

    @property
    def id(self) -> str:
        kept: str | MessageRows = _ID.__get__(self)
        return kept.message_id(self.seq) if isinstance(kept, MessageRows) else kept

    @id.setter
    def id(self, value: str) -> None:
        _ID.__set__(self, value)

    @property
    def created_at(self) -> datetime:
        kept: datetime | MessageRows = _CREATED_AT.__get__(self)
        return kept.created_at(self.seq) if isinstance(kept, MessageRows) else kept

    @created_at.setter
    def created_at(self, value: datetime) -> None:
        _CREATED_AT.__set__(self, value)

    def __eq__(self, other: object) -> bool:
        """Equal to any message of equal fields, as a `Message` is."""
        if not isinstance(other, Message):
            return NotImplemented
        return _values(self) == _values(other)

    __hash__ = Message.__hash__  # which defining __eq__ would drop


def moved_rows(messages: list[Message], old: MessageRows, new: MessageRows) -> None:
    """Point those of `messages` whose id and creation time are rows of `old` at the same rows of
    `new` (`MessageRows.before`), which holds the same bytes, so that `old` is freed once no
    caller holds a message of it."""
    for message in messages:
        if _ID.__get__(message) is old:
            _put_id(message, new)
        if _CREATED_AT.__get__(message) is old:
            _put_created_at(message, new)


def _values(message: Message) -> tuple[Any, ...]:
    return tuple(getattr(message, name) for name in _NAMES)


(
    _put_id,
    _put_chat_id,
    _put_seq,
    _put_role,
    _put_content,
    _put_created_at,
    _put_model,
    _put_usage,
    _put_status,
    _put_item,
    _put_incomplete_reason,
) = (Message.__dict__[name].__set__ for name in _NAMES)


def stored_message(
    rows: MessageRows,
    chat_id: str,
    seq: int,
    role: Role,
    content: str,
    *,
    model: str | None,
    usage: Usage | None,
    status: MessageStatus,
    item: dict[str, Any] | None,
    message_id: str | None,
    incomplete_reason: IncompleteReason | None = None,
) -> StoredMessage:
    """The chat's message `seq`, its id and creation time in `rows` (its id in its slot when
    the caller chose it). The slots are filled directly, bypassing the frozen dataclass's slower
    __init__, since this runs for every message stored."""
    message = object.__new__(StoredMessage)
    _put_id(message, message_id or rows)
    _put_chat_id(message, chat_id)
    _put_seq(message, seq)
    _put_role(message, role)
    _put_content(message, content)
    _put_created_at(message, rows)
    _put_model(message, model)
    _put_usage(message, usage)
    _put_status(message, status)
    _put_item(message, item)
    _put_incomplete_reason(message, incomplete_reason)
    return message
