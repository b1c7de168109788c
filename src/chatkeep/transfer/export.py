"""Exports streamed from a store: chats and messages read a page at a time, so an export of any
size costs the memory of one page, and written as they are read."""

from collections.abc import AsyncIterator

from chatkeep.domain import Chat, Message, PageRequest, utcnow
from chatkeep.store import ChatStore
from chatkeep.transfer.lines import chat_line, encoded, header, message_line
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


async def jsonl_export(store: ChatStore, owner: str, chats: AsyncIterator[Chat]) -> AsyncIterator[bytes]:
    yield encoded(header(utcnow()))
    async for chat in chats:
        yield encoded(chat_line(chat))
        async for message in chat_messages(store, owner, chat):
            yield encoded(message_line(message))


async def markdown_export(store: ChatStore, owner: str, chats: AsyncIterator[Chat]) -> AsyncIterator[bytes]:
    first = True
    async for chat in chats:
        yield (("" if first else "\n---\n\n") + chat_markdown(chat)).encode()
        first = False
        async for message in chat_messages(store, owner, chat):
            yield message_markdown(message).encode()
    if first:
        yield b"_No chats._\n"


async def one_chat(chat: Chat) -> AsyncIterator[Chat]:
    yield chat
