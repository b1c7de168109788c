"""Exports streamed from a store: chats and messages read a page at a time, so an export of any
size costs the memory of one page (and of one chat's messages off its current branch, read
together), and written as they are read."""

from collections.abc import AsyncIterator

from chatkeep.domain import Chat, Message, OffBranchMessage, PageRequest, utcnow
from chatkeep.store import ChatStore
from chatkeep.transfer.lines import branch_message_line, chat_line, encoded, header, message_line
from chatkeep.transfer.markdown import chat_markdown, message_markdown

PAGE = 100


async def owner_chats(store: ChatStore, owner: str) -> AsyncIterator[Chat]:
    """Every chat of the owner, oldest first, a page at a time."""
    after = None
    while True:
        page = await store.list_chats(owner, PageRequest(limit=PAGE, after=after, order="asc"))
        for chat in page.data:
            yield chat
        if not page.has_more:
            return
        after = page.last_id


async def chat_messages(store: ChatStore, owner: str, chat: Chat) -> AsyncIterator[Message]:
    """The chat's messages as it was when read (`chat.message_count` of them: those a turn stores
    meanwhile are left for the next export), a page at a time."""
    after = None
    while True:
        page = await store.list_messages(owner, chat.id, PageRequest(limit=PAGE, after=after))
        for message in page.data:
            if message.seq > chat.message_count:
                return
            yield message
        if not page.has_more:
            return
        after = page.last_id


async def exported_off_branch(store: ChatStore, owner: str, chat: Chat, written: set[str]) -> list[OffBranchMessage]:
    """The chat's messages off its current branch that follow on from the messages `written` (its
    current branch as exported), by seq then creation. A branch change between the reads may have
    moved a message across: one written already, or whose parent is not, is left out, so that
    the file always reads back whole (as a turn's new messages are left for the next export)."""
    kept = []
    for off in await store.off_branch_messages(owner, chat.id):
        if off.message.id not in written and (off.parent_id is None or off.parent_id in written):
            kept.append(off)
            written.add(off.message.id)
    return kept


async def jsonl_export(store: ChatStore, owner: str, chats: AsyncIterator[Chat]) -> AsyncIterator[bytes]:
    yield encoded(header(utcnow()))
    async for chat in chats:
        yield encoded(chat_line(chat))
        written = set()
        async for message in chat_messages(store, owner, chat):
            written.add(message.id)
            yield encoded(message_line(message))
        for off in await exported_off_branch(store, owner, chat, written):
            yield encoded(branch_message_line(off))


async def markdown_export(store: ChatStore, owner: str, chats: AsyncIterator[Chat]) -> AsyncIterator[bytes]:
    first = True
    async for chat in chats:
        other_branches = len(await store.off_branch_messages(owner, chat.id))
        yield (("" if first else "\n---\n\n") + chat_markdown(chat, other_branches)).encode()
        first = False
        async for message in chat_messages(store, owner, chat):
            yield message_markdown(message).encode()
    if first:
        yield b"_No chats._\n"


async def one_chat(chat: Chat) -> AsyncIterator[Chat]:
    yield chat
