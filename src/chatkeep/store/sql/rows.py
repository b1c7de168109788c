"""The row shapes both SQL stores select, and how a row becomes a domain object.

SQLite and PostgreSQL keep the same tables and run the same selects (`sql.Statements`), so one
set of converters serves both; only timestamps differ on the way in (PostgreSQL hands back a
`datetime`, SQLite an integer of microseconds), which the caller passes as `when`.
JSON-valued columns (metadata, highlights) are text in both, so they read back byte for byte.
A read that must also tell a missing chat apart left-joins the chat to what it reads: no row
means no chat, a row of NULLs that the chat has nothing to show.
"""

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from chatkeep.domain import (
    Chat,
    ChatChanges,
    ChatCopy,
    IdempotencyRecord,
    IncompleteReason,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    MessageStatus,
    NewMessage,
    OffBranchMessage,
    Role,
    StoredResponse,
    SummaryText,
    Usage,
)
from chatkeep.errors import ChatNotFoundError, MessageNotFoundError, ResponseNotFoundError


class Row(Protocol):
    """A selected row: a tuple from sqlite3, an asyncpg Record."""

    def __iter__(self) -> Iterator[Any]: ...

    def __getitem__(self, index: int) -> Any: ...


When = Callable[[Any], datetime]

CHAT_COLUMNS = "id, title, metadata, system_prompt, created_at, updated_at, message_count, model"
MESSAGE_COLUMNS = (
    "id, chat_id, seq, role, content, created_at, model, prompt_tokens, completion_tokens, status, item,"
    " incomplete_reason"
)
STATS_COLUMNS = "message_count, user_message_count, first_message_at, last_message_at"
SUMMARY_COLUMNS = "summary, highlights, up_to_seq, created_at"
KEY_COLUMNS = "fingerprint, state, result, user_message_id, created_at, updated_at"
JOINED_MESSAGE_COLUMNS = ", ".join(f"m.{column}" for column in MESSAGE_COLUMNS.split(", "))
JOINED_SUMMARY_COLUMNS = ", ".join(f"s.{column}" for column in SUMMARY_COLUMNS.split(", "))
ROLES = {role.value: role for role in Role}
STATUSES = {status.value: status for status in MessageStatus}
REASONS = {reason.value: reason for reason in IncompleteReason}
KEY_STATES = {state.value: state for state in KeyState}


NewRow = tuple[str, NewMessage]  # a message to append, with the id it is stored under

# Every id chatkeep hands out is `new_id`'s: a prefix, `_`, URL-safe base64 (the memory store's
# message ids end in `.seq` too). A value looked up with any other character names nothing, and
# is found nowhere without asking the database, which may refuse it: PostgreSQL does a NUL.
ID_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]+")
NOWHERE = ""  # what a lookup asks for in place of a value that cannot be an id: no id is empty


def could_be_id(value: str) -> bool:
    return ID_CHARACTERS.fullmatch(value) is not None


def findable(value: str) -> str:
    """`value` when it could be an id, else NOWHERE: what a lookup of `value` asks the database."""
    return value if could_be_id(value) else NOWHERE


@dataclass(slots=True, frozen=True)
class Appended:
    """What an append answers: the seq of the last message it stored, the chat's system prompt and
    revision then, and the moment the messages were stored."""

    last_seq: int
    system_prompt: str | None
    revision: int
    created_at: datetime
    gave_back: bool = False  # the turn's ticket went back in the same transaction (`ends_turn`)


def to_json(value: object) -> str:
    return orjson.dumps(value).decode()


def item_json(message: NewMessage | Message) -> str | None:
    """A message's conversation item as the `item` column keeps it (None for a plain message)."""
    return None if message.item is None else to_json(message.item)


def message_values(message: NewMessage | Message) -> tuple[object, ...]:
    """A new message's role, content, model, prompt and completion tokens, status, item and
    incomplete reason, as stored."""
    usage = message.usage
    return (
        message.role.value,
        message.content,
        message.model,
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
        message.status.value,
        item_json(message),
        message.incomplete_reason.value if message.incomplete_reason is not None else None,
    )


def message_row(new: NewRow, chat_id: str, seq: int, created_at: object) -> tuple[object, ...]:
    """The parameters of the shared `insert_message` statement (MESSAGE_COLUMNS), in its order."""
    message_id, message = new
    role, content, *rest = message_values(message)
    return (message_id, chat_id, seq, role, content, created_at, *rest)


def copied_message_row(message: Message, created_at: object) -> tuple[object, ...]:
    """The `insert_message` parameters of a message stored as an export gave it (its id, seq, time)."""
    role, content, *rest = message_values(message)
    return (message.id, message.chat_id, message.seq, role, content, created_at, *rest)


def copied_branch_row(kept: OffBranchMessage, created_at: object) -> tuple[object, ...]:
    """The `insert_branch_message` parameters of a message off its chat's current branch, as an export gave it."""
    return (*copied_message_row(kept.message, created_at), kept.parent_id, kept.left_at)


def copied_chat_row(owner: str, copy: ChatCopy, stamp: Callable[[datetime], object]) -> tuple[object, ...]:
    """The `import_chat` parameters of a chat stored as an export gave it, its counts from its messages
    (its count of branch changes: the latest its other branches' messages left at)."""
    chat, messages = copy.chat, copy.messages
    users = sum(message.role is Role.USER for message in messages)
    first_at = stamp(messages[0].created_at) if messages else None
    last_at = stamp(messages[-1].created_at) if messages else None
    return (
        chat.id,
        owner,
        chat.title,
        to_json(chat.metadata),
        chat.system_prompt,
        stamp(chat.created_at),
        stamp(chat.updated_at),
        len(messages),
        users,
        first_at,
        last_at,
        chat.model,
        max((kept.left_at for kept in copy.off_branch), default=0),
    )


def stored_messages(new: Sequence[NewRow], chat_id: str, appended: Appended) -> list[Message]:
    """The messages `new` as one append stored them, the last with seq `appended.last_seq`."""
    first, now = appended.last_seq - len(new) + 1, appended.created_at
    return [
        Message(
            message_id,
            chat_id,
            first + n,
            m.role,
            m.content,
            now,
            m.model,
            m.usage,
            m.status,
            m.item,
            m.incomplete_reason,
        )
        for n, (message_id, m) in enumerate(new)
    ]


def response_values(
    owner: str, response: StoredResponse, created_at: object, live_for: float | None
) -> tuple[object, ...]:
    """The parameters of the shared `insert_response` statement, in its order ($1 to $10)."""
    return (
        response.id,
        owner,
        response.chat_id,
        response.previous_response_id,
        created_at,
        to_json(response.body),
        to_json(response.input_items),
        response.status,
        _stream_json(response),
        live_for,
    )


def response_update_values(
    owner: str, response: StoredResponse, expected: Collection[str], live_for: float | None, if_lapsed: bool
) -> tuple[object, ...]:
    """The parameters of the shared `update_response` statement, in its order ($1 to $9)."""
    return (
        response.id,
        owner,
        to_json(response.body),
        to_json(response.input_items),
        response.status,
        _stream_json(response),
        to_json(list(expected)),
        int(if_lapsed),
        live_for,
    )


def _stream_json(response: StoredResponse) -> str | None:
    return None if response.stream is None else to_json(response.stream)


def update_chat_values(chat_id: str, owner: str, changes: ChatChanges, now: object) -> tuple[object, ...]:
    """The parameters of the shared `update_chat` statement, in its order ($1 to $11)."""
    return (
        chat_id,
        owner,
        "title" in changes.fields,
        changes.title,
        "metadata" in changes.fields,
        to_json(changes.metadata),
        "system_prompt" in changes.fields,
        changes.system_prompt,
        now,
        "model" in changes.fields,
        changes.model,
    )


def chat_from_row(row: Row, when: When) -> Chat:
    chat_id, title, metadata, system_prompt, created_at, updated_at, message_count, model = row
    return Chat(
        id=chat_id,
        title=title,
        metadata=orjson.loads(metadata),
        system_prompt=system_prompt,
        created_at=when(created_at),
        updated_at=when(updated_at),
        message_count=message_count,
        model=model,
    )


def message_from_row(row: Row, when: When) -> Message:
    # Hot: a turn reads a window of messages, so positional arguments and a dict for the role.
    message_id, chat_id, seq, role, content, created_at, model, prompt_tokens, completion_tokens, status, item, why = (
        row
    )
    usage = None if prompt_tokens is None else Usage(prompt_tokens, completion_tokens)
    values = None if item is None else orjson.loads(item)
    reason = None if why is None else REASONS[why]
    return Message(
        message_id, chat_id, seq, ROLES[role], content, when(created_at), model, usage, STATUSES[status], values, reason
    )


def off_branch_from_rows(rows: Sequence[Row], when: When, chat_id: str) -> list[OffBranchMessage]:
    """The messages among rows of JOINED_MESSAGE_COLUMNS, parent_id and left_at joined to their
    chat. Raises ChatNotFoundError for no rows."""
    if not rows:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    found = (tuple(row) for row in rows if row[0] is not None)
    return [OffBranchMessage(message_from_row(row[:12], when), row[12], row[13]) for row in found]


def stats_from_row(row: Row, when: When) -> MessageStats:
    count, user_count, first_at, last_at = row
    return MessageStats(
        message_count=count,
        user_message_count=user_count,
        assistant_message_count=count - user_count,
        first_message_at=None if first_at is None else when(first_at),
        last_message_at=None if last_at is None else when(last_at),
        last_seq=count,  # seq is gap-free from 1
    )


def summary_from_row(row: Row, when: When) -> SummaryText:
    summary, highlights, up_to_seq, created_at = row
    return SummaryText(summary, orjson.loads(highlights), up_to_seq, when(created_at))


def joined_summary_from_row(row: Row | None, when: When, chat_id: str) -> SummaryText | None:
    """The summary of a row selected as the chat's id and JOINED_SUMMARY_COLUMNS. Raises ChatNotFoundError."""
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return None if row[1] is None else summary_from_row(tuple(row)[1:], when)


def joined_messages_from_rows(rows: Sequence[Row], when: When, chat_id: str) -> list[Message]:
    """The messages among rows of MESSAGE_COLUMNS joined to their chat. Raises ChatNotFoundError for no rows."""
    if not rows:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return [message_from_row(row, when) for row in rows if row[0] is not None]


def joined_keys_from_rows(rows: Sequence[Row], chat_id: str) -> dict[str, int]:
    """Message ids to seqs, from (id, seq) rows joined to their chat. Raises ChatNotFoundError for no rows."""
    if not rows:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    return {message_id: seq for message_id, seq in rows if message_id is not None}


def check_message(row: Row | None, chat_id: str, message_id: str) -> None:
    """Raise ChatNotFoundError for no row (no chat), MessageNotFoundError for a row of NULL (no message)."""
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    if next(iter(row)) is None:
        raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")


def joined_message_from_row(row: Row | None, when: When, chat_id: str, message_id: str) -> Message:
    """The message of a row selected with JOINED_MESSAGE_COLUMNS. Raises ChatNotFoundError or MessageNotFoundError."""
    if row is None:
        raise ChatNotFoundError(f"no chat {chat_id!r}")
    if row[0] is None:
        raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")
    return message_from_row(row, when)


def key_from_row(row: Row, when: When) -> IdempotencyRecord:
    fingerprint, state, result, user_message_id, created_at, updated_at = row
    created, updated = when(created_at), when(updated_at)
    return IdempotencyRecord(fingerprint, KEY_STATES[state], result, user_message_id, created, updated)


def claim_from_row(claimed: bool, row: Row | None, when: When, expired_before: datetime) -> KeyClaim:
    """The claim of a key whose record was `row` (KEY_COLUMNS) before: an expired one counts as none."""
    previous = None if row is None else key_from_row(row, when)
    if previous is not None and previous.created_at < expired_before:
        previous = None
    return KeyClaim(claimed, previous)


def response_from_row(row: Row | None, when: When, response_id: str) -> StoredResponse:
    """A response selected by `select_response`. Raises ResponseNotFoundError for no row."""
    if row is None:
        raise ResponseNotFoundError(f"no response {response_id!r}")
    found, chat_id, previous_response_id, created_at, body, input_items, stream, lapsed = row
    return StoredResponse(
        found,
        chat_id,
        previous_response_id,
        when(created_at),
        orjson.loads(body),
        orjson.loads(input_items),
        None if stream is None else orjson.loads(stream),
        lapsed=bool(lapsed),
    )
