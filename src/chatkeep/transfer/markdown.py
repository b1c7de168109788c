"""Chats as Markdown for people to read: a title per chat, each message under its speaker and
time, function calls and their outputs as code blocks, attachments as links or a note (never
their bytes inline: an export of a chat with photos stays small)."""

import json
import re
from datetime import UTC, datetime
from typing import Any

from chatkeep.attachments import images_of, inline_in
from chatkeep.domain import DELETED_ITEM, Chat, Message, MessageStatus, Role

UNTITLED = "Untitled chat"
_BACKTICKS = re.compile(r"`+")


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def chat_markdown(chat: Chat, other_branches: int = 0) -> str:
    """The chat's heading and facts; with `other_branches` (how many of its messages are off its
    current branch), a note that what follows is its current branch only."""
    facts = f"Chat `{chat.id}` · created {when(chat.created_at)} · last active {when(chat.updated_at)}"
    if chat.model:
        facts += f" · model {chat.model}"
    lines = [f"# {chat.title or UNTITLED}", "", facts, ""]
    if other_branches:
        many = "message" if other_branches == 1 else "messages"
        lines += [
            f"_The current branch of this chat. Its other branches ({other_branches} {many}: earlier replies"
            " and questions, regenerated or edited) are in the JSONL export._",
            "",
        ]
    lines += [f"- {key}: {value}" for key, value in chat.metadata.items()]
    if chat.system_prompt:
        lines += ["", "**Instructions**", "", fenced(chat.system_prompt), ""]
    return "\n".join(lines) + "\n"


def message_markdown(message: Message) -> str:
    item = message.item
    body = _item_body(item) if item is not None and item.get("type") not in (None, "message") else message.content
    parts = [f"**{_speaker(message)}** · {when(message.created_at)}{_status(message)}", "", body or "_(empty)_"]
    notes = _attachment_notes(item) if item is not None else []
    return "\n".join(parts + notes) + "\n\n"


def fenced(text: str, language: str = "") -> str:
    """`text` in a code fence longer than any run of backticks it holds."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _speaker(message: Message) -> str:
    kind = (message.item or {}).get("type")
    if kind == "function_call":
        return "Assistant (function call)"
    if kind == "function_call_output":
        return "Function output"
    if message.role is Role.USER:
        return "User"
    return f"Assistant ({message.model})" if message.model else "Assistant"


def _status(message: Message) -> str:
    if message.status is not MessageStatus.INCOMPLETE:
        return ""
    reason = message.incomplete_reason.value if message.incomplete_reason else "unknown"
    return f" · _incomplete ({reason})_"


def _item_body(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if item == DELETED_ITEM:
        return "_(deleted)_"
    if kind == "function_call":
        return f"Calls `{item.get('name')}` (call `{item.get('call_id')}`):\n\n" + fenced(
            _pretty(item.get("arguments")), "json"
        )
    if kind == "function_call_output":
        return f"For call `{item.get('call_id')}`:\n\n" + fenced(_pretty(item.get("output")))
    return f"A `{kind}` item:\n\n" + fenced(json.dumps(item, indent=2, ensure_ascii=False), "json")


def _pretty(value: object) -> str:
    """JSON text (a call's arguments) indented; anything else as it is."""
    if isinstance(value, str):
        try:
            return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def _attachment_notes(item: dict[str, Any]) -> list[str]:
    """A line per image or file: https images as links, inline ones as a note of their type and size."""
    notes = []
    for url in images_of(item):
        if url.startswith("https://"):
            notes.append(f"\n[image]({url})")
        else:
            notes.append(f"\n_[an image, {url.partition(';')[0].removeprefix('data:')}, {_size(url)}]_")
    for part in item.get("content") or []:
        found = inline_in(part)
        if found is not None and found[0] == "file_data":
            notes.append(f"\n_[a file, {part.get('filename') or 'unnamed'}, {_size(found[1].payload)}]_")
    return notes


def _size(base64_text: str) -> str:
    payload = base64_text.partition(",")[2] or base64_text
    size = len(payload) * 3 // 4
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"
