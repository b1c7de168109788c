"""The memory store's messages keep their ids and creation times in rows of their chat
(store/message_rows.py): to callers they must be the very messages a plain `Message` would be."""

import copy
import dataclasses
import pickle
import re

import orjson
import pytest

from chatkeep.domain import Message, NewMessage, Role, Usage
from chatkeep.errors import MessageNotFoundError
from chatkeep.store import MemoryStore
from chatkeep.store.memory.message_rows import MessageRows, seq_in

OWNER = "alice"


def plain(message: Message) -> Message:
    return Message(**{f.name: getattr(message, f.name) for f in dataclasses.fields(Message)})


async def stored_reply() -> tuple[MemoryStore, str, Message]:
    store = MemoryStore()
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None)
    await store.append_question(OWNER, chat.id, "hello")
    reply = NewMessage(Role.ASSISTANT, "hi", model="m", usage=Usage(3, 4))
    return store, chat.id, await store.append_message(OWNER, chat.id, reply)


async def test_a_stored_message_is_equal_to_and_written_as_a_plain_one() -> None:
    _, _, message = await stored_reply()
    twin = plain(message)
    assert message == twin
    assert twin == message
    assert hash(message) == hash(twin)
    assert orjson.dumps(message) == orjson.dumps(twin)
    assert pickle.loads(pickle.dumps(message)) == message == copy.deepcopy(message)
    assert re.fullmatch(r"msg_[A-Za-z0-9_-]{30}", message.id), "as opaque as OpenAI's ids: no `.seq` showing"
    assert seq_in(message.id) == 2
    assert message.created_at.tzinfo is not None


async def test_an_id_that_carries_a_real_seq_but_not_its_random_bytes_finds_nothing() -> None:
    store, chat_id, message = await stored_reply()
    forged = MessageRows()
    forged.add()
    forged.add()
    assert seq_in(forged.message_id(2)) == 2
    for wrong in (forged.message_id(2), message.id[:-1] + "A", message.id + "A", "msg_" + "%" * 30, "msg_x.2"):
        with pytest.raises(MessageNotFoundError):
            await store.get_message(OWNER, chat_id, wrong)


async def test_its_id_and_time_read_back_the_same_until_it_is_forgotten() -> None:
    store, chat_id, message = await stored_reply()
    chat = await store.get_chat(OWNER, chat_id)
    assert message.created_at == chat.updated_at
    assert await store.get_message(OWNER, chat_id, message.id) is message
    await store.forget_message(OWNER, chat_id, message.id)
    forgotten = await store.get_message(OWNER, chat_id, message.id)
    assert (forgotten.id, forgotten.created_at, forgotten.content) == (message.id, message.created_at, "")
