"""The objects chatkeep is about: chats, messages, summaries. Plain typed values, no I/O.

They are frozen slotted dataclasses because the memory store keeps millions of messages and a
slotted instance costs a fraction of a regular one. The API edge converts them to pydantic.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Literal, NotRequired, Protocol, TypedDict, TypeVar


class Identified(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Identified)

Order = Literal["asc", "desc"]
OrderBy = Literal["created_at", "updated_at"]  # chats: by creation, or by last activity (a message, an update)


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"  # a reply cut short: what was written by then (IncompleteReason says why)


class IncompleteReason(StrEnum):
    """Why a reply was cut short."""

    STOPPED = "stopped"  # a client asked to stop it
    MAX_TOKENS = "max_tokens"  # the token limit of the request or the model
    CONTENT_FILTER = "content_filter"  # the upstream's content filter
    TIMEOUT = "timeout"  # the LLM went silent mid-reply, or the reply outlasted the cap on a call
    UPSTREAM_ERROR = "upstream_error"  # the LLM's stream broke off or reported an error
    SHUTDOWN = "shutdown"  # the server shut down while it was written


def new_id(prefix: str) -> str:
    """A random, unguessable id: 128 bits of randomness behind a readable prefix."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True, frozen=True)
class Chat:
    id: str
    title: str | None
    metadata: dict[str, str]
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    model: str | None = None  # the model its turns ask for (one the server serves); None: the server's default


@dataclass(slots=True, frozen=True)
class ChatChanges:
    """A partial update: only the fields named in `fields` are changed."""

    fields: frozenset[str]
    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    system_prompt: str | None = None
    model: str | None = None


@dataclass(slots=True, frozen=True)
class Message:
    id: str
    chat_id: str
    seq: int
    role: Role
    content: str
    created_at: datetime
    model: str | None = None
    usage: Usage | None = None
    status: MessageStatus = MessageStatus.COMPLETED
    # A conversation item other than a plain text message (a function call, its output, a
    # reasoning item, a message with a role or content beyond text), kept verbatim; `role` and
    # `content` then say what it is in plain words. None for a plain user or assistant message.
    item: dict[str, Any] | None = None
    incomplete_reason: IncompleteReason | None = None  # why an incomplete reply was cut short


@dataclass(slots=True, frozen=True)
class AttachedMessage(Message):
    """A user message with images, as read back: their URLs as sent (`data:` or `https:`), in order,
    which the native API lists as `images`. A class of its own so that no other message pays for the slot."""

    images: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class NewMessage:
    """What a turn appends; the store assigns id, seq and created_at."""

    role: Role
    content: str
    model: str | None = None
    usage: Usage | None = None
    status: MessageStatus = MessageStatus.COMPLETED
    item: dict[str, Any] | None = None
    incomplete_reason: IncompleteReason | None = None
    id: str | None = None  # the id to store it under (one the caller announced already); None: a new one


@dataclass(slots=True, frozen=True)
class ChatCopy:
    """A whole chat as an export holds it, to store as it is (`Chats.insert_chats`): the chat with
    its id, times and `message_count`, and its messages with their ids, seqs 1 to n and times."""

    chat: Chat
    messages: Sequence[Message]
    off_branch: Sequence[OffBranchMessage] = ()  # the chat's other branches


@dataclass(slots=True, frozen=True)
class Siblings:
    """The messages at one place of a chat on all its branches: the same seq after the same
    message (a regenerated reply's earlier versions; an edited question's), `ids` in creation
    order, `index` that of the one on the current branch."""

    ids: tuple[str, ...]
    index: int


@dataclass(slots=True, frozen=True)
class OffBranchMessage:
    """A message kept off a chat's current branch: `parent_id` is the message before it on its own
    branch (None at seq 1); of the messages after one parent, the one with the highest `left_at`
    (the chat's count of branch changes when it left the current branch) was current last."""

    message: Message
    parent_id: str | None
    left_at: int


DELETED_ITEM: dict[str, Any] = {"type": "deleted"}  # what a deleted conversation item leaves in its place


@dataclass(slots=True, frozen=True)
class PageRequest:
    """A cursor page: `after`/`before` are ids of the listed objects, in the order asked for.

    Chats may be listed by last activity (`order_by="updated_at"`); a cursor there may also be an
    `ActivityCursor` spelled out (`<chat id>.<microseconds>`), the place a chat was listed at.
    """

    limit: int = 20
    after: str | None = None
    before: str | None = None
    order: Order = "asc"
    order_by: OrderBy = "created_at"


@dataclass(slots=True, frozen=True)
class Page(Generic[T]):
    data: list[T]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        return self.data[0].id if self.data else None

    @property
    def last_id(self) -> str | None:
        return self.data[-1].id if self.data else None


@dataclass(slots=True, frozen=True)
class MessageStats:
    """Exact counts over a chat's messages; `last_seq` is 0 for an empty chat."""

    message_count: int
    user_message_count: int
    assistant_message_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    last_seq: int


@dataclass(slots=True, frozen=True)
class SummaryText:
    """What the LLM wrote about messages 1..up_to_seq of a chat; cached by the store."""

    summary: str
    highlights: list[str]
    up_to_seq: int
    created_at: datetime
    through_id: str | None = field(default=None, compare=False)  # the message at up_to_seq it was written from


@dataclass(slots=True, frozen=True)
class RollingSummary:
    """A chat's rolling summary: what its messages up to `up_to_seq` said, sent upstream in their stead."""

    text: str
    up_to_seq: int
    through_id: str | None = field(default=None, compare=False)  # the message at up_to_seq it was written from


@dataclass(slots=True, frozen=True)
class Summary:
    chat_id: str
    stats: MessageStats
    text: SummaryText | None
    stale: bool

    @property
    def up_to_seq(self) -> int:
        return self.text.up_to_seq if self.text else 0


class PromptMessage(TypedDict):
    """One message of the context sent upstream, in the Chat Completions shape.

    A plain dict, not a dataclass: a turn builds one per message of its window, and a dict is
    several times cheaper to build and to encode (orjson writes the Role enum as its value).
    """

    role: Literal["system", "developer", "user", "assistant", "tool"] | Role
    # None: an assistant message that only calls tools; a list of parts: a user message with images or files
    content: str | list[dict[str, Any]] | None
    tool_calls: NotRequired[list[dict[str, Any]]]  # an assistant message's calls, Chat Completions' shape
    tool_call_id: NotRequired[str]  # a tool message: the call it answers


class KeyState(StrEnum):
    RUNNING = "running"  # a request holds the key now
    DONE = "done"  # answered: `result` replays it
    FAILED = "failed"  # the LLM failed after the question was stored: a retry re-runs the reply


@dataclass(slots=True, frozen=True)
class IdempotencyRecord:
    """What an Idempotency-Key stands for: which request, how far it got, what it answered."""

    fingerprint: str
    state: KeyState
    result: str | None  # JSON the service wrote once DONE
    user_message_id: str | None  # the question a message post stored, once stored
    created_at: datetime  # the key expires a fixed time after this
    updated_at: datetime  # a RUNNING key not updated for long was abandoned by a dead process


@dataclass(slots=True, frozen=True)
class KeyClaim:
    """The outcome of claiming a key: whether this request now holds it, and what was there before."""

    claimed: bool
    previous: IdempotencyRecord | None


@dataclass(slots=True)  # not frozen: one is made for every response kept or read, and frozen init is slow
class StoredResponse:
    """A response of OpenAI's Responses API as chatkeep keeps it: the object it answered, and its input."""

    id: str
    chat_id: str | None  # the conversation it took part in, if any
    previous_response_id: str | None
    created_at: datetime
    body: dict[str, Any]  # the Response object, as clients read it back
    input_items: list[dict[str, Any]]
    stream: dict[str, Any] | None = None  # a background response's events, to replay them (openai_compat/responses.py)
    lapsed: bool = False  # unfinished (queued, in_progress), and nobody kept it alive: its process is gone

    @property
    def status(self) -> str | None:
        status = self.body.get("status")
        return status if isinstance(status, str) else None

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED_RESPONSES


# The statuses of a response still being made; a response stored in one of them is kept alive by
# the process that makes it (`ResponseStore.save_response`), and answered `failed` once it is not.
UNFINISHED_RESPONSES = ("queued", "in_progress")
