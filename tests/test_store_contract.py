"""The ChatStore contract, run against every store in `tests.stores.STORES`."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from chatkeep.domain import ChatChanges, NewMessage, PageRequest, Role, SummaryText, Usage, utcnow
from chatkeep.errors import ChatNotFoundError, InvalidCursorError
from chatkeep.store import ChatStore
from tests.stores import STORES, open_test_store

ALICE, BOB = "alice", "bob"


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ChatStore]:
    async with open_test_store(request.param) as store:
        yield store


async def new_chat(store: ChatStore, owner: str = ALICE, title: str | None = None) -> str:
    chat = await store.create_chat(owner, title=title, metadata={}, system_prompt=None)
    return chat.id


async def add(store: ChatStore, chat_id: str, *contents: str, owner: str = ALICE) -> None:
    for n, content in enumerate(contents):
        role = Role.USER if n % 2 == 0 else Role.ASSISTANT
        await store.append_message(owner, chat_id, NewMessage(role, content))


async def test_created_chat_reads_back(store: ChatStore) -> None:
    chat = await store.create_chat(ALICE, title="T", metadata={"k": "v"}, system_prompt="S")
    assert chat.id.startswith("chat_")
    assert (chat.title, chat.metadata, chat.system_prompt, chat.message_count) == ("T", {"k": "v"}, "S", 0)
    assert chat.created_at.tzinfo is not None
    assert await store.get_chat(ALICE, chat.id) == chat


async def test_a_chat_of_another_owner_is_not_found(store: ChatStore) -> None:
    chat_id = await new_chat(store, ALICE)
    with pytest.raises(ChatNotFoundError):
        await store.get_chat(BOB, chat_id)
    with pytest.raises(ChatNotFoundError):
        await store.update_chat(BOB, chat_id, ChatChanges(frozenset({"title"}), title="mine"))
    with pytest.raises(ChatNotFoundError):
        await store.delete_chat(BOB, chat_id)
    with pytest.raises(ChatNotFoundError):
        await store.append_message(BOB, chat_id, NewMessage(Role.USER, "x"))
    with pytest.raises(ChatNotFoundError):
        await store.list_messages(BOB, chat_id, PageRequest())
    with pytest.raises(ChatNotFoundError):
        await store.recent_messages(BOB, chat_id, limit=5)
    with pytest.raises(ChatNotFoundError):
        await store.message_stats(BOB, chat_id)
    with pytest.raises(ChatNotFoundError):
        await store.get_summary(BOB, chat_id)
    assert (await store.list_chats(BOB, PageRequest())).data == []
    with pytest.raises(InvalidCursorError):
        await store.list_chats(BOB, PageRequest(after=chat_id))
    assert (await store.get_chat(ALICE, chat_id)).title is None


async def test_update_changes_only_named_fields(store: ChatStore) -> None:
    chat = await store.create_chat(ALICE, title="T", metadata={"a": "1"}, system_prompt="S")
    changed = await store.update_chat(ALICE, chat.id, ChatChanges(frozenset({"metadata"}), metadata={"b": "2"}))
    assert (changed.title, changed.metadata, changed.system_prompt) == ("T", {"b": "2"}, "S")
    assert changed.updated_at >= chat.updated_at
    cleared = await store.update_chat(ALICE, chat.id, ChatChanges(frozenset({"title", "system_prompt"})))
    assert (cleared.title, cleared.system_prompt) == (None, None)
    assert await store.get_chat(ALICE, chat.id) == cleared


async def test_delete_removes_the_chat_its_messages_and_summary(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q", "a")
    await store.save_summary(ALICE, chat_id, SummaryText("s", [], 2, utcnow()))
    await store.delete_chat(ALICE, chat_id)
    for read in (store.get_chat, store.message_stats, store.get_summary):
        with pytest.raises(ChatNotFoundError):
            await read(ALICE, chat_id)
    with pytest.raises(ChatNotFoundError):
        await store.delete_chat(ALICE, chat_id)
    assert (await store.list_chats(ALICE, PageRequest())).data == []


async def test_chats_list_by_cursor_in_both_orders(store: ChatStore) -> None:
    ids = [await new_chat(store, title=str(n)) for n in range(5)]
    await new_chat(store, BOB)

    async def listed(**kwargs: object) -> tuple[list[str], bool]:
        page = await store.list_chats(ALICE, PageRequest(**kwargs))  # type: ignore[arg-type]
        return [chat.id for chat in page.data], page.has_more

    assert await listed(order="asc") == (ids, False)
    assert await listed(order="desc", limit=2) == (ids[::-1][:2], True)
    assert await listed(order="desc", after=ids[3]) == (ids[2::-1], False)
    assert await listed(order="desc", before=ids[1], limit=2) == ([ids[3], ids[2]], True)
    assert await listed(order="asc", after=ids[0], before=ids[3]) == (ids[1:3], False)
    assert await listed(order="asc", before=ids[0]) == ([], False)
    with pytest.raises(InvalidCursorError):
        await listed(after="chat_nope")


async def test_appends_get_gap_free_seqs_and_count(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    usage = Usage(prompt_tokens=3, completion_tokens=4)
    first = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "hi"))
    second = await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "hello", model="m", usage=usage))
    assert (first.seq, second.seq) == (1, 2)
    assert (second.model, second.usage, second.chat_id) == ("m", usage, chat_id)
    assert (first.model, first.usage) == (None, None)
    chat = await store.get_chat(ALICE, chat_id)
    assert chat.message_count == 2
    assert chat.updated_at == second.created_at


async def test_concurrent_appends_to_one_chat_stay_gap_free(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    stored = await asyncio.gather(
        *(store.append_message(ALICE, chat_id, NewMessage(Role.USER, f"m{n}")) for n in range(50))
    )
    assert sorted(m.seq for m in stored) == list(range(1, 51))
    assert len({m.id for m in stored}) == 50
    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=100))
    assert [m.seq for m in page.data] == list(range(1, 51))


async def test_messages_list_by_cursor(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, *[f"m{n}" for n in range(1, 8)])
    everything = (await store.list_messages(ALICE, chat_id, PageRequest(limit=100))).data
    ids = [m.id for m in everything]
    assert [m.content for m in everything] == [f"m{n}" for n in range(1, 8)]

    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=2, after=ids[1]))
    assert ([m.seq for m in page.data], page.has_more) == ([3, 4], True)
    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=3, order="desc", after=ids[3]))
    assert ([m.seq for m in page.data], page.has_more) == ([3, 2, 1], False)
    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=2, before=ids[2]))
    assert ([m.seq for m in page.data], page.has_more) == ([1, 2], False)
    other = await new_chat(store)
    with pytest.raises(InvalidCursorError):
        await store.list_messages(ALICE, other, PageRequest(after=ids[0]))


async def test_recent_messages_are_a_newest_first_window(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, *[f"m{n}" for n in range(1, 11)])

    async def seqs(**kwargs: int) -> list[int]:
        return [m.seq for m in await store.recent_messages(ALICE, chat_id, **kwargs)]

    assert await seqs(limit=3) == [10, 9, 8]
    assert await seqs(limit=3, before_seq=5) == [4, 3, 2]
    assert await seqs(limit=10, before_seq=3) == [2, 1]
    assert await seqs(limit=4, after_seq=7) == [10, 9, 8]
    assert await seqs(limit=2, after_seq=2, before_seq=6) == [5, 4]
    assert await seqs(limit=5, before_seq=1) == []


async def test_stats_count_exactly(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    empty = await store.message_stats(ALICE, chat_id)
    assert (empty.message_count, empty.last_seq, empty.first_message_at) == (0, 0, None)
    await add(store, chat_id, "q1", "a1", "q2")
    stats = await store.message_stats(ALICE, chat_id)
    messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    assert (stats.message_count, stats.user_message_count, stats.assistant_message_count) == (3, 2, 1)
    assert (stats.first_message_at, stats.last_message_at) == (messages[0].created_at, messages[-1].created_at)
    assert stats.last_seq == 3


async def test_a_summary_never_goes_back_to_fewer_messages(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    assert await store.get_summary(ALICE, chat_id) is None
    now = utcnow()
    newer = SummaryText("covers four", ["h1", "h2"], 4, now)
    await store.save_summary(ALICE, chat_id, newer)
    await store.save_summary(ALICE, chat_id, SummaryText("covers two", [], 2, now + timedelta(seconds=1)))
    assert await store.get_summary(ALICE, chat_id) == newer


async def test_turn_lease_can_be_taken_again_once_released(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    for _ in range(2):
        async with store.turn_lease(ALICE, chat_id):
            await add(store, chat_id, "inside a turn")
