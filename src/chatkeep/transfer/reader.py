"""Reading an import file: every line validated before anything is stored, each error naming its line.

The whole file is checked against the format (lines.py) and the store's usual limits, and the
first errors are reported together (`InvalidImportError`), so a file is fixed in one go: unknown
line types, another version, a message before its chat or of another chat, seq gaps, ids used
twice, counts that do not add up, content over `max_message_chars`, chats over `max_chat_messages`,
and a message of another branch whose parent is not a message before it in its chat, or whose
seq is not its parent's + 1.
"""

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from chatkeep.attachments import replace_inline
from chatkeep.domain import ChatCopy, Message, MessageStatus, OffBranchMessage
from chatkeep.errors import InvalidImportError
from chatkeep.transfer.lines import (
    FORMAT,
    VERSION,
    VERSIONS,
    AnyLine,
    BranchMessageLine,
    ChatLine,
    HeaderLine,
    MessageLine,
)

MAX_REPORTED = 20  # errors listed in one answer
_LINE: TypeAdapter[HeaderLine | ChatLine | MessageLine | BranchMessageLine] = TypeAdapter(AnyLine)


@dataclass(slots=True, frozen=True)
class Limits:
    max_message_chars: int
    max_chat_messages: int


@dataclass(slots=True)
class FileChat:
    """A chat of the file: the line it begins on and what it holds."""

    line: int
    chat: ChatLine
    messages: list[Message] = field(default_factory=list)
    message_lines: list[int] = field(default_factory=list)  # the line of each message
    off_branch: list[OffBranchMessage] = field(default_factory=list)  # its other branches' messages
    off_branch_lines: list[int] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)  # the seq of each of its messages, on any branch, by id
    faulty: bool = False  # an error was reported on its lines already

    def copy(self) -> ChatCopy:
        return ChatCopy(self.chat.chat(), self.messages, self.off_branch)

    def lines_by_id(self) -> dict[str, int]:
        """The line of each of its messages, on any branch, by id."""
        ids = [m.id for m in self.messages] + [k.message.id for k in self.off_branch]
        return dict(zip(ids, self.message_lines + self.off_branch_lines, strict=True))


class _Reader:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.errors: list[dict[str, Any]] = []
        self.chats: list[FileChat] = []
        self.chat_ids: set[str] = set()
        self.message_ids: set[str] = set()
        self.version = VERSION

    def error(self, line: int, detail: str) -> None:
        self.errors.append({"line": line, "detail": detail})
        if self.chats:
            self.chats[-1].faulty = True

    def read(self, number: int, raw: bytes) -> None:
        if b"\\u0000" in raw:
            return self.error(number, "text holds a NUL character (\\u0000), which cannot be stored")
        try:
            parsed = _LINE.validate_json(raw)
        except ValidationError as invalid:
            return self.error(number, _first_problem(invalid))
        if number == 1:
            return self.header(parsed)
        if isinstance(parsed, HeaderLine):
            return self.error(number, "a second header line")
        if isinstance(parsed, ChatLine):
            return self.chat(number, parsed)
        if isinstance(parsed, BranchMessageLine):
            return self.branch_message(number, parsed)
        return self.message(number, parsed)

    def header(self, parsed: HeaderLine | ChatLine | MessageLine) -> None:
        if not isinstance(parsed, HeaderLine):
            self.error(1, f'the first line must be the header, {{"type": "{FORMAT}", "version": {VERSION}, ...}}')
        elif parsed.version not in VERSIONS:
            readable = " and ".join(str(version) for version in VERSIONS)
            self.error(1, f"version {parsed.version} is not one this server reads (it reads versions {readable})")
        else:
            self.version = parsed.version

    def chat(self, number: int, chat: ChatLine) -> None:
        self.finish_chat()
        self.chats.append(FileChat(number, chat))
        if chat.id in self.chat_ids:
            self.error(number, f"the chat id {chat.id!r} is used twice in the file")
        if chat.message_count > self.limits.max_chat_messages:
            self.error(
                number, f"a chat may hold at most {self.limits.max_chat_messages} messages (CHATKEEP_MAX_CHAT_MESSAGES)"
            )
        self.chat_ids.add(chat.id)

    def message(self, number: int, line: MessageLine) -> None:
        current = self.chat_of(number, line)
        if current is None:
            return
        if current.off_branch:
            self.error(number, "a message line after its chat's branch_message lines: those come last")
        expected = len(current.messages) + 1
        if line.seq != expected:
            self.error(number, f"seq {line.seq} where {expected} comes next: a chat's seqs run 1, 2, 3... without gaps")
        self.check_message(number, line, current)
        current.messages.append(line.message())
        current.message_lines.append(number)

    def branch_message(self, number: int, line: BranchMessageLine) -> None:
        """A message of one of the chat's other branches: after its parent, one seq further."""
        if self.version < 2:
            return self.error(number, f"a branch_message line in a version {self.version} file (they are version 2)")
        current = self.chat_of(number, line)
        if current is None:
            return
        parent_seq = 0 if line.parent_id is None else current.seqs.get(line.parent_id)
        if parent_seq is None:
            self.error(number, f"parent_id {line.parent_id!r} is not a message of this chat on an earlier line")
        elif line.seq != parent_seq + 1:
            after = "with no parent" if line.parent_id is None else f"after {line.parent_id!r} (seq {parent_seq})"
            self.error(number, f"seq {line.seq} {after}: a message's seq is its parent's + 1")
        if line.seq > self.limits.max_chat_messages:
            self.error(
                number, f"a chat may hold at most {self.limits.max_chat_messages} messages (CHATKEEP_MAX_CHAT_MESSAGES)"
            )
        self.check_message(number, line, current)
        current.off_branch.append(line.off_branch())
        current.off_branch_lines.append(number)

    def chat_of(self, number: int, line: MessageLine) -> FileChat | None:
        """The chat the message line `number` belongs to: the one read last, when it names it."""
        current = self.chats[-1] if self.chats else None
        if current is None:
            self.error(number, "a message before any chat line")
        elif line.chat_id != current.chat.id:
            self.error(
                number, f"a message of chat {line.chat_id!r} among those of {current.chat.id!r} (line {current.line})"
            )
            return None
        return current

    def check_message(self, number: int, line: MessageLine, chat: FileChat) -> None:
        if line.id in self.message_ids:
            self.error(number, f"the message id {line.id!r} is used twice in the file")
        else:
            chat.seqs[line.id] = line.seq
        self.message_ids.add(line.id)
        self.check_size(number, line)
        if line.incomplete_reason is not None and line.status is not MessageStatus.INCOMPLETE:
            self.error(number, "an incomplete_reason on a message whose status is not incomplete")

    def check_size(self, number: int, line: MessageLine) -> None:
        limit = self.limits.max_message_chars
        if len(line.content) > limit:
            self.error(number, f"content of {len(line.content)} characters, over CHATKEEP_MAX_MESSAGE_CHARS ({limit})")
        elif line.item is not None and len(orjson.dumps(replace_inline(line.item, lambda _: ""))) > limit:
            # as for an item appended on /v1: its JSON, attachments' bytes aside, within the limit
            self.error(number, f"an item over CHATKEEP_MAX_MESSAGE_CHARS ({limit}) as JSON, attachments aside")

    def finish_chat(self) -> None:
        """The chat read last has as many messages as its line said."""
        if self.chats:
            last = self.chats[-1]
            if len(last.messages) != last.chat.message_count and not last.faulty:
                self.error(
                    last.line, f"message_count {last.chat.message_count}, but {len(last.messages)} message lines follow"
                )


def read_export(body: bytes, limits: Limits) -> list[FileChat]:
    """The chats of an export file, each whole; raises InvalidImportError naming the first bad lines."""
    reader = _Reader(limits)
    lines = body.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if len(reader.errors) >= MAX_REPORTED:
            break
        if raw.strip():
            reader.read(number, raw)
        elif number == 1:
            reader.error(1, "the file is empty: it must begin with the export's header line")
    else:
        reader.finish_chat()
    if reader.errors:
        errors = sorted(reader.errors, key=lambda error: error["line"])[:MAX_REPORTED]
        first = errors[0]
        raise InvalidImportError(f"line {first['line']}: {first['detail']} (nothing was imported)", errors)
    return reader.chats


def _first_problem(invalid: ValidationError) -> str:
    """What is wrong with a line, in a sentence: the first of pydantic's errors, with its field."""
    error = invalid.errors(include_url=False)[0]
    if error["type"] == "json_invalid":
        return f"not valid JSON ({error['ctx'].get('error', 'unparsable')})" if error.get("ctx") else "not valid JSON"
    if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        return 'an unknown line type: a line is {"type": "chatkeep.export"}, "chat", "message" or "branch_message"'
    where = ".".join(str(part) for part in error["loc"][1:])
    return f"{where}: {error['msg']}" if where else error["msg"]
