"""An import: the file's chats stored all or none, each new one as it was exported.

Keyed by the chat ids in the file, so that importing a file twice stores nothing the second
time: a chat the owner keeps already with the very same content (as an export would write it) is
`unchanged`; one with other content is a conflict, not merged; an id another owner's chat (or
message) holds is refused as taken, without saying whose. The new chats are stored in one
atomic write (`Chats.insert_chats`), after the owner's chat quota is checked for all of them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from chatkeep.domain import Chat
from chatkeep.errors import ChatNotFoundError, ChatQuotaError, IdTakenError, ImportConflictError
from chatkeep.store import ChatStore
from chatkeep.transfer.export import chat_messages, exported_off_branch
from chatkeep.transfer.lines import branch_message_line, chat_line, message_line
from chatkeep.transfer.reader import FileChat


@dataclass(slots=True, frozen=True)
class ImportedChat:
    id: str
    line: int
    status: Literal["imported", "unchanged"]


async def import_chats(
    store: ChatStore, owner: str, chats: Sequence[FileChat], *, max_chats: int
) -> list[ImportedChat]:
    """Store the file's new chats, all or none; raises ImportConflictError naming the lines at fault."""
    new, unchanged, conflicts = [], [], []
    for chat in chats:
        try:
            kept = await store.get_chat(owner, chat.chat.id)
        except ChatNotFoundError:
            new.append(chat)
            continue
        if await _same(store, owner, kept, chat):
            unchanged.append(chat)
        else:
            detail = (
                f"chat {kept.id!r} is kept already with other content; delete it (or change the file's id) to import it"
            )
            conflicts.append({"line": chat.line, "detail": detail})
    if conflicts:
        raise ImportConflictError(
            f"line {conflicts[0]['line']}: {conflicts[0]['detail']} (nothing was imported)", conflicts
        )
    if new and await store.count_chats(owner) + len(new) > max_chats:
        raise ChatQuotaError(
            f"the import would put this owner over {max_chats} chats (CHATKEEP_MAX_CHATS); nothing was imported"
        )
    if new:
        await _insert(store, owner, new)
    return [ImportedChat(c.chat.id, c.line, "imported") for c in new] + [
        ImportedChat(c.chat.id, c.line, "unchanged") for c in unchanged
    ]


async def _insert(store: ChatStore, owner: str, chats: list[FileChat]) -> None:
    try:
        await store.insert_chats(owner, [chat.copy() for chat in chats])
    except IdTakenError as taken:
        line = _line_of(chats, taken.taken)
        detail = f"the id {taken.taken!r} is taken" if taken.taken else "an id of the file was taken meanwhile"
        raise ImportConflictError(
            f"line {line}: {detail} (nothing was imported)", [{"line": line, "detail": detail}]
        ) from None


def _line_of(chats: list[FileChat], taken: str | None) -> int:
    """The line of the chat that holds id `taken` (its own or one of its messages')."""
    for chat in chats:
        if chat.chat.id == taken:
            return chat.line
        line = chat.lines_by_id().get(taken or "")
        if line is not None:
            return line
    return chats[0].line


async def _same(store: ChatStore, owner: str, kept: Chat, chat: FileChat) -> bool:
    """Whether a kept chat is the file's chat: equal as an export writes them, message by message,
    on every branch."""
    if chat_line(kept) != chat_line(chat.chat.chat()):
        return False
    count = 0
    async for message in chat_messages(store, owner, kept):
        if count >= len(chat.messages) or message_line(message) != message_line(chat.messages[count]):
            return False
        count += 1
    if count != len(chat.messages):
        return False
    written = {message.id for message in chat.messages}
    off_branch = [branch_message_line(k) for k in await exported_off_branch(store, owner, kept, written)]
    return off_branch == [branch_message_line(k) for k in chat.off_branch]
