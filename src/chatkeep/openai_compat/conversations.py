"""OpenAI's Conversations API over chatkeep's chats: a conversation is a chat, its items are the chat's messages.

The same id works on `/chats/...` and `/v1/conversations/...`. Adding items is a turn with no
reply, admitted and run like any other, so items added while a response runs on the
conversation land after its reply, never inside it; a conversation's first items are stored in
the write that creates it. Objects are shaped as OpenAI's (`openai/types/conversations`).
"""

from typing import Any

import orjson

from chatkeep.domain import DELETED_ITEM, Chat, ChatChanges, Message, NewMessage, PageRequest
from chatkeep.errors import InvalidCursorError, InvalidInputError, MessageNotFoundError
from chatkeep.idempotency import IdempotencyKey
from chatkeep.openai_compat.items import item_from_message, referenced, with_references
from chatkeep.service import ChatService
from chatkeep.store import ChatStore
from chatkeep.turns.engine import NewTurn
from chatkeep.turns.events import TurnOutcome

MAX_ITEMS_PER_REQUEST = 20


def conversation_object(chat: Chat) -> dict[str, Any]:
    return {
        "id": chat.id,
        "object": "conversation",
        "created_at": int(chat.created_at.timestamp()),
        "metadata": chat.metadata,
    }


def deleted_object(chat_id: str) -> dict[str, Any]:
    return {"id": chat_id, "object": "conversation.deleted", "deleted": True}


def items_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def is_deleted(message: Message) -> bool:
    return message.item is not None and message.item == DELETED_ITEM


async def conversation_items(store: ChatStore, owner: str, chat_id: str, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The items of `wanted` the conversation holds, as read back, by id. Raises ChatNotFoundError."""
    found: dict[str, dict[str, Any]] = {}
    for item_id in wanted:
        try:
            message = await store.get_message(owner, chat_id, item_id)
        except MessageNotFoundError:
            continue
        if not is_deleted(message):
            found[item_id] = item_from_message(message)
    return found


class Conversations:
    def __init__(self, service: ChatService) -> None:
        self._service = service
        self._store = service.store

    async def create(
        self, owner: str, items: list[NewMessage], metadata: dict[str, str], key: IdempotencyKey | None = None
    ) -> dict[str, Any]:
        """Create a conversation with its first items (read and size-checked by `read_items`); with a key, once."""
        items = with_references(items, {}, "items", "a conversation not yet made")  # there is nothing to refer to
        chat = await self._service.create_chat(
            owner, title=None, metadata=metadata, system_prompt=None, messages=items, key=key
        )
        return conversation_object(chat)

    async def get(self, owner: str, chat_id: str) -> dict[str, Any]:
        return conversation_object(await self._store.get_chat(owner, chat_id))

    async def update(self, owner: str, chat_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        chat = await self._store.update_chat(owner, chat_id, ChatChanges(frozenset({"metadata"}), metadata=metadata))
        return conversation_object(chat)

    async def delete(self, owner: str, chat_id: str) -> dict[str, Any]:
        await self._store.delete_chat(owner, chat_id)
        return deleted_object(chat_id)

    async def add_items(
        self, owner: str, chat_id: str, items: list[NewMessage], key: IdempotencyKey | None = None
    ) -> dict[str, Any]:
        """Append items to the conversation; with a key, once: a retry gets the items the first try
        added (items read and size-checked by `read_items`; an `item_reference` copies the item it
        names, which must be the conversation's)."""
        if wanted := referenced(items):
            found = await conversation_items(self._store, owner, chat_id, wanted)
            items = with_references(items, found, "items", "this conversation")
        admitted = await self._service.admission.admit(owner, chat_id, key, inputs=len(items), replies=0)
        if admitted.replay is not None:
            page: dict[str, Any] = orjson.loads(admitted.replay)
            return page
        return _added(await self._service.engine.run(admitted, NewTurn(items, _added_result, answered=False)))

    async def list_items(self, owner: str, chat_id: str, page: PageRequest) -> dict[str, Any]:
        """A page of the conversation's items; deleted ones are skipped, further pages read to fill it.
        Raises InvalidInputError (a 400 naming `after`, as OpenAI's) for a cursor that names no item."""
        items: list[dict[str, Any]] = []
        after = page.after
        while True:
            try:
                found = await self._store.list_messages(
                    owner, chat_id, PageRequest(page.limit, after, None, page.order)
                )
            except InvalidCursorError:
                raise InvalidInputError(f"no item {after!r} in conversation {chat_id!r}", param="after") from None
            items += [item_from_message(message) for message in found.data if not is_deleted(message)]
            if len(items) >= page.limit or not found.has_more:
                return items_page(items[: page.limit], found.has_more or len(items) > page.limit)
            after = found.data[-1].id

    async def get_item(self, owner: str, chat_id: str, item_id: str) -> dict[str, Any]:
        message = await self._store.get_message(owner, chat_id, item_id)
        if is_deleted(message):
            raise MessageNotFoundError(f"no item {item_id!r} in conversation {chat_id!r}")
        return item_from_message(message)

    async def delete_item(self, owner: str, chat_id: str, item_id: str) -> dict[str, Any]:
        await self.get_item(owner, chat_id, item_id)
        await self._store.forget_message(owner, chat_id, item_id)
        return conversation_object(await self._store.get_chat(owner, chat_id))


def _added(outcome: TurnOutcome) -> dict[str, Any]:
    """The items a turn with no reply appended, as the page OpenAI answers."""
    return items_page([item_from_message(message) for message in outcome.inputs], False)


def _added_result(outcome: TurnOutcome) -> str:
    return orjson.dumps(_added(outcome)).decode()
