"""The contract of `Branches` (a chat as a tree of messages, its current branch what every read
sees), and `insert_chats` carrying a chat's other branches, on every store."""

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatkeep.domain import (
    AttachedMessage,
    Chat,
    ChatCopy,
    IncompleteReason,
    Message,
    MessageStatus,
    NewMessage,
    OffBranchMessage,
    PageRequest,
    Role,
    RollingSummary,
    Siblings,
    SummaryText,
    Usage,
    utcnow,
)
from chatkeep.errors import (
    ChatNotFoundError,
    IdTakenError,
    InvalidCursorError,
    MessageNotFoundError,
    TurnLapsedError,
)
from chatkeep.store import ChatStore
from chatkeep.store.protocols import TurnTicket
from tests.support.images import PNG, data_url
from tests.support.stores import open_sql_store

ALICE, BOB = "alice", "bob"
THEN = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


async def new_chat(store: ChatStore, owner: str = ALICE) -> str:
    return (await store.create_chat(owner, title=None, metadata={}, system_prompt=None)).id


async def add(store: ChatStore, chat_id: str, *contents: str) -> list[Message]:
    """Messages appended one by one, a user's, then an assistant's, and so on."""
    roles = (Role.USER, Role.ASSISTANT)
    return [await store.append_message(ALICE, chat_id, NewMessage(roles[n % 2], c)) for n, c in enumerate(contents)]


async def reply(store: ChatStore, chat_id: str, content: str, *, at: int) -> Message:
    """A new assistant message at `at`: the messages from there on leave the current branch."""
    await store.fork_at(ALICE, chat_id, at)
    return await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, content))


async def current(store: ChatStore, chat_id: str) -> list[Message]:
    return (await store.list_messages(ALICE, chat_id, PageRequest(limit=100))).data


async def contents(store: ChatStore, chat_id: str) -> list[str]:
    return [message.content for message in await current(store, chat_id)]


def asked(words: str) -> NewMessage:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": words},
            {"type": "input_image", "image_url": data_url(PNG), "detail": "auto"},
        ],
    }
    return NewMessage(Role.USER, words, item=item)


async def test_a_fork_takes_the_messages_off_and_the_next_append_gets_its_seq(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    _, a1, q2, a2 = await add(store, chat_id, "q1", "a1", "q2", "a2")
    await store.fork_at(ALICE, chat_id, 3)
    assert await contents(store, chat_id) == ["q1", "a1"]
    assert (await store.get_chat(ALICE, chat_id)).message_count == 2
    edited = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "q2 edited"))
    assert edited.seq == 3
    assert edited.id not in {q2.id, a2.id}
    assert await contents(store, chat_id) == ["q1", "a1", "q2 edited"]
    off = await store.off_branch_messages(ALICE, chat_id)
    assert [(kept.message.id, kept.message.seq, kept.parent_id, kept.left_at) for kept in off] == [
        (q2.id, 3, a1.id, 1),
        (a2.id, 4, q2.id, 1),
    ]
    assert [kept.message for kept in off] == [q2, a2]


async def test_a_fork_one_past_the_last_message_takes_nothing_off(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q1", "a1")
    await store.fork_at(ALICE, chat_id, 3)
    assert await contents(store, chat_id) == ["q1", "a1"]
    assert await store.off_branch_messages(ALICE, chat_id) == []
    assert await store.siblings(ALICE, chat_id, await current(store, chat_id)) == {}
    empty = await new_chat(store)
    await store.fork_at(ALICE, empty, 1)
    assert (await store.append_message(ALICE, empty, NewMessage(Role.USER, "first"))).seq == 1


@pytest.mark.parametrize("seq", [0, -1, 4, 10])
async def test_a_fork_out_of_range_is_a_value_error(store: ChatStore, seq: int) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q1", "a1")
    with pytest.raises(ValueError, match="not in 1 to 3"):
        await store.fork_at(ALICE, chat_id, seq)
    assert await contents(store, chat_id) == ["q1", "a1"]


async def test_siblings_are_the_messages_at_one_place_in_creation_order(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, a1 = await add(store, chat_id, "q1", "a1")
    assert await store.siblings(ALICE, chat_id, [q1, a1]) == {}  # never branched
    a1b = await reply(store, chat_id, "a1b", at=2)
    a1c = await reply(store, chat_id, "a1c", at=2)
    listed = await current(store, chat_id)
    assert await store.siblings(ALICE, chat_id, listed) == {a1c.id: Siblings((a1.id, a1b.id, a1c.id), 2)}
    await store.switch_branch(ALICE, chat_id, a1b.id)
    listed = await current(store, chat_id)
    assert [m.id for m in listed] == [q1.id, a1b.id]
    assert await store.siblings(ALICE, chat_id, listed) == {a1b.id: Siblings((a1.id, a1b.id, a1c.id), 1)}
    await store.fork_at(ALICE, chat_id, 1)  # an edited first question: its siblings have no parent
    q1b = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "q1b"))
    assert await store.siblings(ALICE, chat_id, [q1b]) == {q1b.id: Siblings((q1.id, q1b.id), 1)}


async def test_siblings_name_only_current_messages_that_have_some(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    *_, a2 = await add(store, chat_id, "q1", "a1", "q2", "a2")
    a2b = await reply(store, chat_id, "a2b", at=4)
    found = await store.siblings(ALICE, chat_id, await current(store, chat_id))
    assert found == {a2b.id: Siblings((a2.id, a2b.id), 1)}
    assert await store.siblings(ALICE, chat_id, [a2]) == {}  # off the current branch: not asked about
    assert await store.siblings(ALICE, chat_id, []) == {}


async def test_switching_back_and_forth_restores_the_messages_exactly(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await store.append_message(ALICE, chat_id, asked("what is it?"))
    await store.append_message(
        ALICE,
        chat_id,
        NewMessage(
            Role.ASSISTANT,
            "It is a c",
            model="m1",
            usage=Usage(12, 3),
            status=MessageStatus.INCOMPLETE,
            incomplete_reason=IncompleteReason.STOPPED,
        ),
    )
    await store.append_message(ALICE, chat_id, asked("and this?"))
    call = {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}", "id": "fc_1"}
    await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "look", item=call))
    first = await current(store, chat_id)
    assert isinstance(first[0], AttachedMessage)
    assert isinstance(first[2], AttachedMessage)
    await store.fork_at(ALICE, chat_id, 2)
    await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "A cat.", model="m2", usage=Usage(5, 2)))
    await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "thanks"))
    second = await current(store, chat_id)
    for _ in range(2):
        chat = await store.switch_branch(ALICE, chat_id, first[1].id)
        assert chat.message_count == 4
        assert await current(store, chat_id) == first
        assert [await store.get_message(ALICE, chat_id, m.id) for m in first] == first
        assert (await store.switch_branch(ALICE, chat_id, second[2].id)).message_count == 3
        assert await current(store, chat_id) == second
    off = await store.off_branch_messages(ALICE, chat_id)
    assert [kept.message for kept in off] == first[1:]  # attachments read back as sent off the branch too


async def test_a_switch_to_a_current_message_changes_nothing(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, _ = await add(store, chat_id, "q1", "a1")
    a1b = await reply(store, chat_id, "a1b", at=2)
    before = await store.get_chat(ALICE, chat_id)
    for message in (q1, a1b):
        assert await store.switch_branch(ALICE, chat_id, message.id) == before
    assert [kept.left_at for kept in await store.off_branch_messages(ALICE, chat_id)] == [1]


async def test_a_switch_follows_the_child_that_was_current_last(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, a1, q2, a2 = await add(store, chat_id, "q1", "a1", "q2", "a2")
    await store.fork_at(ALICE, chat_id, 3)
    q2b, a2b = await add(store, chat_id, "q2b", "a2b")
    await store.switch_branch(ALICE, chat_id, a2.id)  # the first branch again
    assert await contents(store, chat_id) == ["q1", "a1", "q2", "a2"]
    a2x = await reply(store, chat_id, "a2x", at=4)  # q2 now has two answers, a2 left last... until
    await store.switch_branch(ALICE, chat_id, a2b.id)  # ...q2 with a2x leaves
    assert await contents(store, chat_id) == ["q1", "a1", "q2b", "a2b"]
    await store.switch_branch(ALICE, chat_id, q2.id)  # down q2: a2x was current after a2
    assert [m.id for m in await current(store, chat_id)] == [q1.id, a1.id, q2.id, a2x.id]
    await store.switch_branch(ALICE, chat_id, a2.id)  # deep in a branch: the path to it comes on
    assert [m.id for m in await current(store, chat_id)] == [q1.id, a1.id, q2.id, a2.id]
    await store.switch_branch(ALICE, chat_id, q2b.id)
    assert [m.id for m in await current(store, chat_id)] == [q1.id, a1.id, q2b.id, a2b.id]
    off = await store.off_branch_messages(ALICE, chat_id)
    assert [kept.message.id for kept in off] == [q2.id, a2.id, a2x.id]  # by seq, then creation


async def test_a_deep_switch_brings_on_the_whole_path(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q1", "a1", "q2", "a2", "q3", "a3")
    await store.fork_at(ALICE, chat_id, 2)
    await add(store, chat_id, "a1b")
    deep = (await store.off_branch_messages(ALICE, chat_id))[3]
    assert deep.message.content == "q3"
    chat = await store.switch_branch(ALICE, chat_id, deep.message.id)
    assert chat.message_count == 6
    assert await contents(store, chat_id) == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert [kept.message.content for kept in await store.off_branch_messages(ALICE, chat_id)] == ["a1b"]


async def test_counts_stats_and_pages_follow_the_branch(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    messages = await add(store, chat_id, "q1", "a1", "q2", "a2", "q3", "a3")
    await store.fork_at(ALICE, chat_id, 4)
    a2b = (await add(store, chat_id, "", "a2b"))[1]  # a user message at 4, a reply at 5
    stats = await store.message_stats(ALICE, chat_id)
    assert (stats.message_count, stats.user_message_count, stats.assistant_message_count, stats.last_seq) == (
        5,
        3,
        2,
        5,
    )
    assert (stats.first_message_at, stats.last_message_at) == (messages[0].created_at, a2b.created_at)
    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=2, after=messages[1].id))
    assert ([m.content for m in page.data], page.has_more) == (["q2", ""], True)
    page = await store.list_messages(ALICE, chat_id, PageRequest(limit=2, after=page.data[-1].id))
    assert ([m.content for m in page.data], page.has_more) == (["a2b"], False)
    page = await store.list_messages(ALICE, chat_id, PageRequest(order="desc", limit=3))
    assert [m.seq for m in page.data] == [5, 4, 3]
    recent = await store.recent_messages(ALICE, chat_id, limit=3)
    assert [m.content for m in recent] == ["a2b", "", "q2"]
    assert (await store.get_chat(ALICE, chat_id)).message_count == 5
    await store.switch_branch(ALICE, chat_id, messages[5].id)
    stats = await store.message_stats(ALICE, chat_id)
    assert (stats.message_count, stats.user_message_count, stats.last_seq) == (6, 3, 6)
    assert stats.last_message_at == messages[5].created_at
    page = await store.list_messages(ALICE, chat_id, PageRequest(order="desc", limit=2, after=messages[5].id))
    assert [m.id for m in page.data] == [messages[4].id, messages[3].id]
    assert [m.id for m in await store.recent_messages(ALICE, chat_id, limit=2)] == [messages[5].id, messages[4].id]
    await store.fork_at(ALICE, chat_id, 1)
    stats = await store.message_stats(ALICE, chat_id)
    assert (stats.message_count, stats.user_message_count, stats.first_message_at, stats.last_message_at) == (
        0,
        0,
        None,
        None,
    )
    assert await store.recent_messages(ALICE, chat_id, limit=5) == []


async def test_a_branch_change_moves_the_chat_up_by_activity(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    _, a1 = await add(store, chat_id, "q1", "a1")
    a1b = await reply(store, chat_id, "a1b", at=2)
    other = await new_chat(store)
    await asyncio.sleep(0.002)
    chat = await store.switch_branch(ALICE, chat_id, a1.id)
    assert chat.updated_at > a1b.created_at
    listed = await store.list_chats(ALICE, PageRequest(order="desc", order_by="updated_at"))
    assert [c.id for c in listed.data] == [chat_id, other]


async def test_summaries_covering_the_messages_taken_off_are_dropped(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    messages = await add(store, chat_id, "q1", "a1", "q2", "a2", "q3", "a3")
    await store.save_summary(ALICE, chat_id, SummaryText("s", ["h"], 4, utcnow()))
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=10)
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("r", 2))
    await store.fork_at(ALICE, chat_id, 5)  # after what both cover
    assert (await store.get_summary(ALICE, chat_id)) is not None
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("r", 2)
    await store.fork_at(ALICE, chat_id, 4)
    assert await store.get_summary(ALICE, chat_id) is None
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("r", 2)
    await store.save_summary(ALICE, chat_id, SummaryText("s", ["h"], 3, utcnow()))
    await store.switch_branch(ALICE, chat_id, messages[3].id)  # parts from the current branch at 4
    assert await store.get_summary(ALICE, chat_id) is not None
    await store.switch_branch(ALICE, chat_id, messages[1].id)  # current already: nothing happens
    await store.fork_at(ALICE, chat_id, 2)
    await add(store, chat_id, "x")
    await store.switch_branch(ALICE, chat_id, messages[5].id)
    assert await store.get_summary(ALICE, chat_id) is None
    assert await store.get_rolling_summary(ALICE, chat_id) is None
    assert await contents(store, chat_id) == ["q1", "a1", "q2", "a2", "q3", "a3"]


async def test_search_finds_the_current_branch_only(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, a1 = await add(store, chat_id, "alpha question", "bravo answer")
    a1b = await reply(store, chat_id, "charlie answer", at=2)

    async def found(word: str) -> list[str]:
        return [hit.message_id for hit in (await store.search_messages(ALICE, [word], limit=10)).hits]

    assert (await found("bravo"), await found("charlie"), await found("answer")) == ([], [a1b.id], [a1b.id])
    await store.switch_branch(ALICE, chat_id, a1.id)
    assert (await found("bravo"), await found("charlie"), await found("answer")) == ([a1.id], [], [a1.id])
    assert await found("alpha") == [q1.id]


async def test_off_branch_messages_are_not_read_as_current(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    _, a1 = await add(store, chat_id, "q1", "a1")
    await reply(store, chat_id, "a1b", at=2)
    with pytest.raises(MessageNotFoundError):
        await store.get_message(ALICE, chat_id, a1.id)
    with pytest.raises(MessageNotFoundError):
        await store.forget_message(ALICE, chat_id, a1.id)
    with pytest.raises(InvalidCursorError):
        await store.list_messages(ALICE, chat_id, PageRequest(after=a1.id))


async def test_delete_chat_removes_every_branch(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    _, a1 = await add(store, chat_id, "q1", "a1")
    await reply(store, chat_id, "a1b", at=2)
    await store.delete_chat(ALICE, chat_id)
    for read in (store.off_branch_messages, store.get_chat):
        with pytest.raises(ChatNotFoundError):
            await read(ALICE, chat_id)
    # the off-branch message's id is free again: nothing of the chat is kept
    chat = Chat("conv_again", None, {}, None, THEN, THEN, 1)
    await store.insert_chats(ALICE, [ChatCopy(chat, [Message(a1.id, chat.id, 1, Role.USER, "again", THEN)])])


async def test_branch_calls_on_a_missing_or_others_chat(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, a1 = await add(store, chat_id, "q1", "a1")
    await reply(store, chat_id, "a1b", at=2)
    for owner, chat in ((BOB, chat_id), (ALICE, "conv_missing"), (ALICE, "conv_\x00")):
        with pytest.raises(ChatNotFoundError):
            await store.fork_at(owner, chat, 1)
        with pytest.raises(ChatNotFoundError):
            await store.switch_branch(owner, chat, a1.id)
        with pytest.raises(ChatNotFoundError):
            await store.siblings(owner, chat, [q1])
        with pytest.raises(ChatNotFoundError):
            await store.off_branch_messages(owner, chat)
    other = await new_chat(store)
    for missing in ("msg_nope", "", "msg_\x00", a1.id):
        with pytest.raises(MessageNotFoundError):
            await store.switch_branch(ALICE, other, missing)
    assert await contents(store, chat_id) == ["q1", "a1b"]


async def test_fenced_branch_writes_store_nothing_once_the_ticket_lapsed(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    q1, a1 = await add(store, chat_id, "q1", "a1")
    a1b = await reply(store, chat_id, "a1b", at=2)
    async with store.turn_lease(ALICE, chat_id) as old:
        await store.fork_at(ALICE, chat_id, 3, ticket=old)  # nothing to take off, but fenced alike
    for ticket in (old, TurnTicket(old.number + 1000)):
        with pytest.raises(TurnLapsedError):
            await store.fork_at(ALICE, chat_id, 2, ticket=ticket)
        with pytest.raises(TurnLapsedError):
            await store.switch_branch(ALICE, chat_id, a1.id, ticket=ticket)
    async with store.turn_lease(ALICE, chat_id) as held:
        with pytest.raises(TurnLapsedError):
            await store.fork_at(ALICE, chat_id, 1, ticket=old)
        with pytest.raises(TurnLapsedError):
            await store.switch_branch(ALICE, chat_id, a1.id, ticket=old)
        assert [m.id for m in await current(store, chat_id)] == [q1.id, a1b.id]
        await store.switch_branch(ALICE, chat_id, a1.id, ticket=held)
        await store.fork_at(ALICE, chat_id, 2, ticket=held)
        await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "a1c"), ticket=held)
    assert await contents(store, chat_id) == ["q1", "a1c"]
    assert len(await store.off_branch_messages(ALICE, chat_id)) == 2


async def test_concurrent_turns_keep_seqs_gap_free_and_each_reply_after_its_question(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q0", "answer to q0")
    shuffled = random.Random(25)

    async def ask(n: int) -> None:
        await asyncio.sleep(shuffled.random() * 0.02)
        async with store.turn_lease(ALICE, chat_id) as ticket:
            question, _ = await store.append_question(ALICE, chat_id, f"q{n}", ticket=ticket)
            await asyncio.sleep(0)
            answer = NewMessage(Role.ASSISTANT, f"answer to {question.content}")
            await store.append_message(ALICE, chat_id, answer, ticket=ticket, ends_turn=True)

    async def regenerate(n: int) -> None:
        await asyncio.sleep(shuffled.random() * 0.02)
        async with store.turn_lease(ALICE, chat_id) as ticket:
            (last, question) = await store.recent_messages(ALICE, chat_id, limit=2, ticket=ticket)
            await store.fork_at(ALICE, chat_id, last.seq, ticket=ticket)
            await asyncio.sleep(0)
            answer = NewMessage(Role.ASSISTANT, f"answer to {question.content}", model=f"take {n}")
            await store.append_message(ALICE, chat_id, answer, ticket=ticket, ends_turn=True)

    await asyncio.gather(*(ask(n) if n % 3 else regenerate(n) for n in range(1, 13)))
    messages = await current(store, chat_id)
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert len(messages) == 2 + 2 * 8  # q0's pair, and a pair for each of the 8 questions asked
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert (question.role, answer.role, answer.content) == (
            Role.USER,
            Role.ASSISTANT,
            f"answer to {question.content}",
        )
    off = await store.off_branch_messages(ALICE, chat_id)
    assert len(off) == 4  # each regeneration took one reply off
    by_id = {m.id: m for m in messages}
    for kept in off:
        parent = by_id[kept.parent_id or ""]
        assert parent.seq == kept.message.seq - 1
        assert kept.message.content == f"answer to {parent.content}"
    assert (await store.get_chat(ALICE, chat_id)).message_count == len(messages)


def a_tree_copy(chat_id: str = "conv_tree") -> ChatCopy:
    """q1 a1 q2 a2 current; a1 once answered as a1b (then q2b, a2b), and q1 once asked as q1b."""

    def at(n: int) -> datetime:
        return THEN + timedelta(seconds=n)

    messages = [
        Message("msg_q1", chat_id, 1, Role.USER, "q1", at(1)),
        Message("msg_a1", chat_id, 2, Role.ASSISTANT, "a1", at(2), "m1", Usage(3, 4)),
        Message("msg_q2", chat_id, 3, Role.USER, "q2", at(3)),
        Message("msg_a2", chat_id, 4, Role.ASSISTANT, "a2", at(4), status=MessageStatus.INCOMPLETE),
    ]
    image = {"type": "input_image", "image_url": data_url(PNG), "detail": "auto"}
    item: dict[str, Any] = {"type": "message", "role": "user", "content": [image]}
    off_branch = [
        OffBranchMessage(Message("msg_q1b", chat_id, 1, Role.USER, "q1b", at(0)), None, 1),
        OffBranchMessage(Message("msg_a1b", chat_id, 2, Role.ASSISTANT, "a1b", at(5)), "msg_q1", 3),
        OffBranchMessage(Message("msg_q2b", chat_id, 3, Role.USER, "q2b", at(6), item=item), "msg_a1b", 3),
        OffBranchMessage(Message("msg_a2b", chat_id, 4, Role.ASSISTANT, "a2b", at(7)), "msg_q2b", 3),
    ]
    chat = Chat(chat_id, "Tree", {}, None, THEN, at(8), 4)
    return ChatCopy(chat, messages, off_branch)


async def test_an_inserted_chat_keeps_its_other_branches(store: ChatStore) -> None:
    copy = a_tree_copy()
    await store.insert_chats(ALICE, [copy])
    off = await store.off_branch_messages(ALICE, copy.chat.id)
    assert [(k.message.id, k.parent_id, k.left_at) for k in off] == [
        (k.message.id, k.parent_id, k.left_at) for k in copy.off_branch
    ]
    assert [(k.message.content, k.message.item) for k in off] == [
        (k.message.content, k.message.item) for k in copy.off_branch
    ]
    assert isinstance(off[2].message, AttachedMessage)  # the image as sent
    listed = await current(store, copy.chat.id)
    assert await store.siblings(ALICE, copy.chat.id, listed) == {
        "msg_q1": Siblings(("msg_q1b", "msg_q1"), 1),
        "msg_a1": Siblings(("msg_a1", "msg_a1b"), 0),
    }
    chat = await store.switch_branch(ALICE, copy.chat.id, "msg_a1b")
    assert (chat.message_count, await contents(store, copy.chat.id)) == (4, ["q1", "a1b", "q2b", "a2b"])
    assert (await current(store, copy.chat.id))[2].item == copy.off_branch[2].message.item
    new = await store.append_message(ALICE, copy.chat.id, NewMessage(Role.USER, "q3"))
    assert new.seq == 5
    left = {k.message.id: k.left_at for k in await store.off_branch_messages(ALICE, copy.chat.id)}
    assert left == {"msg_q1b": 1, "msg_a1": 4, "msg_q2": 4, "msg_a2": 4}  # later than any imported


async def test_an_insert_whose_off_branch_id_is_taken_stores_nothing(store: ChatStore) -> None:
    await store.insert_chats(ALICE, [a_tree_copy("conv_first")])
    clash = a_tree_copy("conv_second")
    fresh = ChatCopy(
        clash.chat,
        [Message(f"{m.id}_2", m.chat_id, m.seq, m.role, m.content, m.created_at) for m in clash.messages],
        clash.off_branch,  # their ids held by the first chat's other branches
    )
    with pytest.raises(IdTakenError) as raised:
        await store.insert_chats(ALICE, [fresh])
    assert raised.value.taken in {k.message.id for k in clash.off_branch}
    assert await store.count_chats(ALICE) == 1
    chat_id = await new_chat(store)
    (message,) = await add(store, chat_id, "q")
    await store.fork_at(ALICE, chat_id, 1)
    taken = ChatCopy(Chat("conv_third", None, {}, None, THEN, THEN, 0), [], [OffBranchMessage(message, None, 1)])
    with pytest.raises(IdTakenError):  # an id the store gave a message now off its branch
        await store.insert_chats(ALICE, [taken])


async def test_a_branch_change_in_another_process_is_seen_by_a_turns_context(sql_store_url: str) -> None:
    """Two stores on one database stand for two server processes: the one that took the chat's
    last turn keeps its newest messages in memory, and must not answer from them once the other
    changed branches (however many messages the chat holds again)."""
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = (await first.create_chat(ALICE, title=None, metadata={}, system_prompt=None)).id
        async with first.turn_lease(ALICE, chat_id) as ticket:
            await first.append_messages(
                ALICE, chat_id, [NewMessage(Role.USER, "q1"), NewMessage(Role.ASSISTANT, "a1")], ticket=ticket
            )
        async with second.turn_lease(ALICE, chat_id) as ticket:
            await second.fork_at(ALICE, chat_id, 2, ticket=ticket)
            await second.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "a1b"), ticket=ticket)
        async with first.turn_lease(ALICE, chat_id) as ticket:
            await first.append_message(ALICE, chat_id, NewMessage(Role.USER, "q2"), ticket=ticket)
            window = await first.recent_messages(ALICE, chat_id, limit=10, ticket=ticket)
            assert [m.content for m in window] == ["q2", "a1b", "q1"]


async def test_turns_of_two_processes_fork_and_append_in_order(sql_store_url: str) -> None:
    async with open_sql_store(sql_store_url) as first, open_sql_store(sql_store_url) as second:
        chat_id = (await first.create_chat(ALICE, title=None, metadata={}, system_prompt=None)).id

        async def turn(store: ChatStore, n: int) -> None:
            async with store.turn_lease(ALICE, chat_id) as ticket:
                last = await store.recent_messages(ALICE, chat_id, limit=2, ticket=ticket)
                if n % 3 == 0 and len(last) == 2:
                    await store.fork_at(ALICE, chat_id, last[0].seq, ticket=ticket)
                    question = last[1].content
                else:
                    question = (await store.append_question(ALICE, chat_id, f"q{n}", ticket=ticket))[0].content
                answer = NewMessage(Role.ASSISTANT, f"answer to {question}")
                await store.append_message(ALICE, chat_id, answer, ticket=ticket, ends_turn=True)

        await asyncio.gather(*(turn((first, second)[n % 2], n) for n in range(1, 13)))
        messages = (await first.list_messages(ALICE, chat_id, PageRequest(limit=100))).data
        assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
        for question, answer in zip(messages[::2], messages[1::2], strict=True):
            assert answer.content == f"answer to {question.content}"
        stats = await second.message_stats(ALICE, chat_id)
        assert (stats.message_count, stats.user_message_count) == (len(messages), len(messages) // 2)


async def test_a_summary_written_while_its_messages_left_the_branch_is_not_kept(store: ChatStore) -> None:
    """A summary is written from messages read seconds before (an LLM call in between): when a
    branch change took them off meanwhile, keeping it would summarize another branch."""
    chat_id = await new_chat(store)
    messages = await add(store, chat_id, "q1", "a1", "q2", "a2")
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=10)
    await store.fork_at(ALICE, chat_id, 3)  # an edit of q2 while the summaries were being written
    await add(store, chat_id, "q2 edited", "a2 again")

    await store.save_summary(ALICE, chat_id, SummaryText("of q1 to a2", [], 4, utcnow(), through_id=messages[3].id))
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("of q1 to a2", 4, through_id=messages[3].id))

    assert await store.get_summary(ALICE, chat_id) is None
    assert await store.get_rolling_summary(ALICE, chat_id) is None
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=10)  # the hold was let go all the same
    current = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    await store.save_summary(ALICE, chat_id, SummaryText("of this branch", [], 4, utcnow(), through_id=current[3].id))
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("of this branch", 2, through_id=current[1].id))
    assert (await store.get_summary(ALICE, chat_id)).summary == "of this branch"  # type: ignore[union-attr]
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("of this branch", 2)
