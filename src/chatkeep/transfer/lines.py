"""The JSONL export format, version 2: what each line holds, written and read in one place.

A file is a header line, then per chat a `chat` line, its `message` lines (its current branch)
in seq order, then its `branch_message` lines: the messages of its other branches, each a
message line with the id of the message before it on its branch (`parent_id`, null at seq 1)
and `left_at` (the chat's count of branch changes when it left the current branch, which tells
which branch was current last), by seq then creation, so a message's parent always comes
before it. Every field a store keeps is written, so that an import gives back the same chats:
ids, seqs, times, items (attachments as the data: URLs they read back as). Version 1, read
still, is version 2 without `branch_message` lines; readers refuse a version they do not know.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, StringConstraints

from chatkeep.api.schemas import Metadata, ModelName, SystemPrompt, Title
from chatkeep.domain import Chat, IncompleteReason, Message, MessageStatus, OffBranchMessage, Role, Usage

FORMAT = "chatkeep.export"
VERSION = 2
VERSIONS = (1, 2)  # the versions a reader takes
MAX_ID_CHARS = 100

Line = dict[str, Any]


def stamp(moment: datetime) -> str:
    """A moment as the export writes it: UTC, to the microsecond, always with six digits."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def header(exported_at: datetime) -> Line:
    return {"type": FORMAT, "version": VERSION, "exported_at": stamp(exported_at)}


def chat_line(chat: Chat) -> Line:
    return {
        "type": "chat",
        "id": chat.id,
        "title": chat.title,
        "metadata": chat.metadata,
        "system_prompt": chat.system_prompt,
        "model": chat.model,
        "created_at": stamp(chat.created_at),
        "updated_at": stamp(chat.updated_at),
        "message_count": chat.message_count,
    }


def message_line(message: Message) -> Line:
    usage = message.usage
    return {
        "type": "message",
        "chat_id": message.chat_id,
        "id": message.id,
        "seq": message.seq,
        "role": message.role.value,
        "content": message.content,
        "created_at": stamp(message.created_at),
        "model": message.model,
        "usage": None
        if usage is None
        else {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
        "status": message.status.value,
        "incomplete_reason": None if message.incomplete_reason is None else message.incomplete_reason.value,
        "item": message.item,
    }


def branch_message_line(kept: OffBranchMessage) -> Line:
    return message_line(kept.message) | {"type": "branch_message", "parent_id": kept.parent_id, "left_at": kept.left_at}


def encoded(line: Line) -> bytes:
    return orjson.dumps(line) + b"\n"


# Reading: each line validated strictly (no coercion, no unknown field), as pydantic models.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HeaderLine(_Line):
    type: Literal["chatkeep.export"]
    version: int
    exported_at: AwareDatetime | None = None


class ChatLine(_Line):
    type: Literal["chat"]
    id: Id
    title: Title | None
    metadata: Metadata
    system_prompt: SystemPrompt | None
    model: ModelName | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    message_count: NonNegativeInt

    def chat(self) -> Chat:
        return Chat(
            self.id,
            self.title,
            dict(self.metadata),
            self.system_prompt,
            self.created_at.astimezone(UTC),
            self.updated_at.astimezone(UTC),
            self.message_count,
            self.model,
        )


class UsageLine(_Line):
    prompt_tokens: NonNegativeInt
    completion_tokens: NonNegativeInt


class MessageLine(_Line):
    type: Literal["message"]
    chat_id: Id
    id: Id
    seq: PositiveInt
    role: Role
    content: str
    created_at: AwareDatetime
    model: ModelName | None
    usage: UsageLine | None
    status: MessageStatus
    incomplete_reason: IncompleteReason | None
    item: dict[str, Any] | None

    def message(self) -> Message:
        usage = None if self.usage is None else Usage(self.usage.prompt_tokens, self.usage.completion_tokens)
        return Message(
            self.id,
            self.chat_id,
            self.seq,
            self.role,
            self.content,
            self.created_at.astimezone(UTC),
            self.model,
            usage,
            self.status,
            self.item,
            self.incomplete_reason,
        )


class BranchMessageLine(MessageLine):
    type: Literal["branch_message"]  # type: ignore[assignment]
    parent_id: Id | None
    left_at: PositiveInt

    def off_branch(self) -> OffBranchMessage:
        return OffBranchMessage(self.message(), self.parent_id, self.left_at)


AnyLine = Annotated[HeaderLine | ChatLine | MessageLine | BranchMessageLine, Field(discriminator="type")]
