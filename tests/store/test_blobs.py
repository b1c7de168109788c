"""Attachments in every store: their bytes kept once per content, the stored items referencing
them, and every read giving back the items as sent (including a response's input items)."""

import hashlib
from pathlib import Path
from typing import Any

from chatkeep.attachments import BLOBS_KEY
from chatkeep.domain import AttachedMessage, NewMessage, PageRequest, Role, StoredResponse, utcnow
from chatkeep.store import ChatStore, MemoryStore
from chatkeep.store.blobs import DirectoryBlobs, MemoryBlobs
from tests.support.images import PDF, PNG, b64, data_url

ALICE = "alice"
DIGEST = hashlib.sha256(PNG).hexdigest()


def asked(words: str) -> NewMessage:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": words},
            {"type": "input_image", "image_url": data_url(PNG), "detail": "auto"},
            {"type": "input_file", "filename": "a.pdf", "file_data": b64(PDF)},
        ],
    }
    return NewMessage(Role.USER, words, item=item)


async def test_every_read_gives_back_the_items_as_sent(store: ChatStore) -> None:
    chat = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None, messages=[asked("first")])
    appended = await store.append_message(ALICE, chat.id, asked("second"))
    more, _ = await store.append_messages(ALICE, chat.id, [asked("third"), NewMessage(Role.ASSISTANT, "plain")])
    sent = asked("x").item
    assert sent is not None
    for message in [appended, more[0]]:
        assert message.item == {
            **sent,
            "content": [{**sent["content"][0], "text": message.content}, *sent["content"][1:]],
        }
        assert isinstance(message, AttachedMessage)
        assert message.images == (data_url(PNG),)
    listed = (await store.list_messages(ALICE, chat.id, PageRequest())).data
    recent = await store.recent_messages(ALICE, chat.id, limit=10)
    one = await store.get_message(ALICE, chat.id, listed[0].id)
    for message in [*listed[:3], *recent[1:], one]:
        assert message.item is not None
        assert message.item["content"][1:] == sent["content"][1:]
        assert BLOBS_KEY not in message.item
    assert listed[3].item is None


async def test_a_responses_input_items_read_back_as_sent(store: ChatStore) -> None:
    item: dict[str, Any] = {"id": "msg_1", **(asked("in a response").item or {})}
    kept = StoredResponse("resp_1", None, None, utcnow(), {"output": []}, [item])
    await store.save_response(ALICE, kept)
    assert (await store.get_response(ALICE, "resp_1")).input_items == [item]


async def test_a_memory_store_keeps_an_attachment_once() -> None:
    blobs = MemoryBlobs()
    store = MemoryStore(blobs)
    chat = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None, messages=[asked("one")])
    await store.append_message(ALICE, chat.id, asked("two"))
    assert sorted(await blobs.get([DIGEST, hashlib.sha256(PDF).hexdigest(), "0" * 64])) == sorted(
        [DIGEST, hashlib.sha256(PDF).hexdigest()]
    )
    assert len(blobs._blobs) == 2  # the PNG and the PDF, once each for both messages
    kept = store._chats[chat.id].messages  # as the store holds them: references, not bytes
    assert all(message.item is not None and message.item[BLOBS_KEY] for message in kept)
    assert not any(b64(PNG) in str(message.item) for message in kept)


async def test_a_directory_keeps_each_blob_in_a_file_named_by_its_hash(tmp_path: Path) -> None:
    store = MemoryStore(DirectoryBlobs(tmp_path / "blobs"))
    chat = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None, messages=[asked("one")])
    await store.append_message(ALICE, chat.id, asked("two"))
    names = sorted(path.name for path in (tmp_path / "blobs").iterdir())
    assert names == sorted([DIGEST, hashlib.sha256(PDF).hexdigest()])  # no temporary file left behind
    (tmp_path / "blobs" / DIGEST).unlink()  # an operator removed it: the image reads back empty, the rest as sent
    message = (await store.list_messages(ALICE, chat.id, PageRequest())).data[0]
    assert message.item is not None
    assert message.item["content"][1]["image_url"] == "data:image/png;base64,"
    assert message.item["content"][2]["file_data"] == b64(PDF)
