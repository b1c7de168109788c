"""The contract of `insert_chats` (whole chats stored as an export gave them), on every store."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from chatkeep.domain import (
    Chat,
    ChatCopy,
    IncompleteReason,
    Message,
    MessageStatus,
    NewMessage,
    PageRequest,
    Role,
    Usage,
)
from chatkeep.errors import IdTakenError
from chatkeep.store import ChatStore
from tests.support.images import data_url, png

ALICE, BOB = "alice", "bob"
THEN = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def a_copy(chat_id: str = "conv_imported1", prefix: str = "msg_imp") -> ChatCopy:
    """A chat of four messages: a question with an image, a function call, its output, an incomplete reply."""
    image = {"type": "input_image", "image_url": data_url(png()), "detail": "auto"}
    question = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is it?"}, image]}
    call = {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": '{"x": 1}', "id": f"fc_{prefix}"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "a cat", "id": f"fco_{prefix}"}
    messages = [
        Message(f"{prefix}1", chat_id, 1, Role.USER, "what is it?", THEN + timedelta(seconds=1), item=question),
        Message(f"fc_{prefix}", chat_id, 2, Role.ASSISTANT, "look", THEN + timedelta(seconds=2), "m1", item=call),
        Message(f"fco_{prefix}", chat_id, 3, Role.USER, "a cat", THEN + timedelta(seconds=3), item=output),
        Message(
            f"{prefix}4",
            chat_id,
            4,
            Role.ASSISTANT,
            "It is a c",
            THEN + timedelta(seconds=4, microseconds=7),
            "m1",
            Usage(12, 3),
            MessageStatus.INCOMPLETE,
            None,
            IncompleteReason.STOPPED,
        ),
    ]
    chat = Chat(chat_id, "Imported", {"k": "v"}, "Be brief.", THEN, THEN + timedelta(seconds=5), 4, "m1")
    return ChatCopy(chat, messages)


async def read_back(store: ChatStore, owner: str, chat_id: str) -> tuple[Chat, list[Message]]:
    page = await store.list_messages(owner, chat_id, PageRequest(limit=100))
    return await store.get_chat(owner, chat_id), page.data


async def test_an_inserted_chat_reads_back_exactly_as_given(store: ChatStore) -> None:
    copy = a_copy()
    await store.insert_chats(ALICE, [copy])
    chat, messages = await read_back(store, ALICE, copy.chat.id)
    assert chat == copy.chat
    assert [(m.id, m.seq, m.created_at, m.item, m.usage, m.incomplete_reason) for m in messages] == [
        (m.id, m.seq, m.created_at, m.item, m.usage, m.incomplete_reason) for m in copy.messages
    ]
    for message in copy.messages:
        assert (await store.get_message(ALICE, chat.id, message.id)).id == message.id
    stats = await store.message_stats(ALICE, chat.id)
    assert (stats.message_count, stats.user_message_count, stats.last_message_at) == (4, 2, messages[-1].created_at)


async def test_an_inserted_chat_is_listed_owned_and_takes_turns(store: ChatStore) -> None:
    copy = a_copy()
    await store.insert_chats(ALICE, [copy])
    assert [c.id for c in (await store.list_chats(ALICE, PageRequest())).data] == [copy.chat.id]
    assert (await store.list_chats(BOB, PageRequest())).data == []
    assert await store.count_chats(ALICE) == 1
    appended = await store.append_message(ALICE, copy.chat.id, NewMessage(Role.USER, "and now?"))
    assert appended.seq == 5
    assert (await store.list_chats(ALICE, PageRequest(order_by="updated_at"))).data[0].id == copy.chat.id
    hits = await store.search_messages(ALICE, ["cat"], limit=5)
    assert [hit.message_id for hit in hits.hits] == [copy.messages[2].id]


async def test_an_insert_of_a_taken_id_stores_nothing(store: ChatStore) -> None:
    await store.insert_chats(BOB, [a_copy("conv_bobs", "msg_bob")])
    fresh = a_copy("conv_fresh", "msg_fresh")
    bobs_messages = {message.id for message in a_copy("conv_bobs", "msg_bob").messages}
    for taken, clash in (
        ({"conv_bobs"}, a_copy("conv_bobs", "msg_other")),
        (bobs_messages, a_copy("conv_x", "msg_bob")),
    ):
        with pytest.raises(IdTakenError) as raised:
            await store.insert_chats(ALICE, [fresh, clash])
        assert raised.value.taken in taken
    assert await store.count_chats(ALICE) == 0
    assert (await store.list_chats(ALICE, PageRequest())).data == []


async def test_an_id_the_store_gave_a_message_is_taken(store: ChatStore) -> None:
    chat = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None)
    stored = await store.append_message(ALICE, chat.id, NewMessage(Role.USER, "hi"))
    other = replace(a_copy("conv_other").chat, message_count=1)
    with pytest.raises(IdTakenError) as raised:
        await store.insert_chats(ALICE, [ChatCopy(other, [Message(stored.id, other.id, 1, Role.USER, "hi", THEN)])])
    assert raised.value.taken == stored.id
    assert await store.count_chats(ALICE) == 1
