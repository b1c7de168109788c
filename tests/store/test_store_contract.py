"""The ChatStore contract, run against every store in `tests.support.stores.STORES`."""

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from chatkeep.domain import (
    DELETED_ITEM,
    ChatChanges,
    IdempotencyRecord,
    KeyClaim,
    KeyState,
    NewMessage,
    PageRequest,
    Role,
    RollingSummary,
    StoredResponse,
    SummaryText,
    Usage,
    utcnow,
)
from chatkeep.errors import (
    ChatNotFoundError,
    InvalidCursorError,
    MessageNotFoundError,
    ResponseNotFoundError,
    TurnLapsedError,
)
from chatkeep.store import ChatStore, RateLease
from chatkeep.store.paging import activity_cursor

ALICE, BOB = "alice", "bob"
KEY, REQUEST, OTHER_REQUEST = "key-1", "fingerprint-1", "fingerprint-2"
KEEP = timedelta(hours=24)
ABANDON = timedelta(minutes=1)
LATER = 0.002  # a pause after which the clock reads later, for tests that compare timestamps


async def new_chat(store: ChatStore, owner: str = ALICE, title: str | None = None) -> str:
    chat = await store.create_chat(owner, title=title, metadata={}, system_prompt=None)
    return chat.id


async def add(store: ChatStore, chat_id: str, *contents: str, owner: str = ALICE) -> None:
    for n, content in enumerate(contents):
        role = Role.USER if n % 2 == 0 else Role.ASSISTANT
        await store.append_message(owner, chat_id, NewMessage(role, content))


async def test_created_chat_reads_back(store: ChatStore) -> None:
    chat = await store.create_chat(ALICE, title="T", metadata={"k": "v"}, system_prompt="S")
    assert chat.id.startswith("conv_")  # one id on both APIs, with OpenAI's prefix for a conversation
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


async def test_a_chats_model_is_stored_and_changed(store: ChatStore) -> None:
    chosen = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None, model="big-model")
    default = await store.create_chat(ALICE, title=None, metadata={}, system_prompt=None)
    assert (chosen.model, default.model) == ("big-model", None)
    assert (await store.get_chat(ALICE, chosen.id)).model == "big-model"
    assert (await store.get_chat(ALICE, default.id)).model is None
    renamed = await store.update_chat(ALICE, chosen.id, ChatChanges(frozenset({"title"}), title="kept"))
    assert renamed.model == "big-model"  # a change that does not name the model keeps it
    back = await store.update_chat(ALICE, chosen.id, ChatChanges(frozenset({"model"}), model=None))
    assert back.model is None
    moved = await store.update_chat(ALICE, default.id, ChatChanges(frozenset({"model"}), model="small-model"))
    assert (await store.get_chat(ALICE, default.id)).model == moved.model == "small-model"
    listed = await store.list_chats(ALICE, PageRequest(order="asc"))
    assert [chat.model for chat in listed.data] == [None, "small-model"]


async def activity_order(store: ChatStore, owner: str = ALICE, **kwargs: object) -> tuple[list[str], bool]:
    page = await store.list_chats(owner, PageRequest(order_by="updated_at", **kwargs))  # type: ignore[arg-type]
    return [chat.id for chat in page.data], page.has_more


async def test_chats_list_by_last_activity_a_new_message_or_an_update_moving_one_up(store: ChatStore) -> None:
    ids = [await new_chat(store, title=str(n)) for n in range(4)]
    await new_chat(store, BOB)
    assert await activity_order(store, order="desc") == (ids[::-1], False)
    await asyncio.sleep(LATER)
    await add(store, ids[1], "a new message")
    assert await activity_order(store, order="desc") == ([ids[1], ids[3], ids[2], ids[0]], False)
    await asyncio.sleep(LATER)
    await store.update_chat(ALICE, ids[0], ChatChanges(frozenset({"title"}), title="renamed"))
    assert await activity_order(store, order="desc") == ([ids[0], ids[1], ids[3], ids[2]], False)
    assert await activity_order(store, order="asc") == ([ids[2], ids[3], ids[1], ids[0]], False)
    assert await activity_order(store, BOB) != ([], False)  # each owner's own chats
    await store.delete_chat(ALICE, ids[3])
    assert await activity_order(store, order="desc") == ([ids[0], ids[1], ids[2]], False)


async def test_chats_by_last_activity_page_by_cursor_in_both_orders(store: ChatStore) -> None:
    ids = [await new_chat(store, title=str(n)) for n in range(5)]  # created in order: active in order
    assert await activity_order(store, order="desc", limit=2) == (ids[::-1][:2], True)
    assert await activity_order(store, order="desc", after=ids[3]) == (ids[2::-1], False)
    assert await activity_order(store, order="desc", before=ids[1], limit=2) == ([ids[3], ids[2]], True)
    assert await activity_order(store, order="asc", after=ids[0], before=ids[3]) == (ids[1:3], False)
    assert await activity_order(store, order="asc", before=ids[0]) == ([], False)
    with pytest.raises(InvalidCursorError):
        await activity_order(store, after="conv_nope")
    with pytest.raises(InvalidCursorError):
        await activity_order(store, BOB, after=ids[0])  # another owner's chat is no cursor


async def test_paging_by_activity_from_a_listed_place_stays_put_when_that_chat_moves(store: ChatStore) -> None:
    ids = [await new_chat(store, title=str(n)) for n in range(5)]
    first = await store.list_chats(ALICE, PageRequest(order_by="updated_at", order="desc", limit=2))
    assert [chat.id for chat in first.data] == [ids[4], ids[3]]
    cursor = activity_cursor(first.data[-1])
    await asyncio.sleep(LATER)
    await add(store, ids[3], "the last listed chat moves to the top")
    await add(store, ids[1], "and one not listed yet")
    # From the chat's id: its place now, at the top. From the cursor: where it was listed.
    assert await activity_order(store, order="desc", after=ids[3]) == ([ids[4], ids[2], ids[0]], False)
    assert await activity_order(store, order="desc", after=cursor) == ([ids[2], ids[0]], False)
    assert await activity_order(store, order="asc", before=cursor) == ([ids[0], ids[2]], False)
    await store.delete_chat(ALICE, ids[3])  # a place needs no chat there any more
    assert await activity_order(store, order="desc", after=cursor, limit=1) == ([ids[2]], True)


async def test_paging_by_activity_never_repeats_or_skips_a_chat_while_others_are_written_to(
    store: ChatStore,
) -> None:
    ids = [await new_chat(store, title=str(n)) for n in range(12)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list_chats(ALICE, PageRequest(order_by="updated_at", order="desc", limit=3, after=cursor))
        seen += [chat.id for chat in page.data]
        if not page.has_more:
            break
        cursor = activity_cursor(page.data[-1])
        await add(store, page.data[0].id, "a listed chat moves up")  # concurrent writes to listed chats
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(ids)


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

    async def seqs(*, limit: int, before_seq: int | None = None, after_seq: int = 0) -> list[int]:
        window = await store.recent_messages(ALICE, chat_id, limit=limit, before_seq=before_seq, after_seq=after_seq)
        return [m.seq for m in window]

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


async def test_one_rolling_summary_at_a_time_and_it_only_moves_forward(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    assert await store.get_rolling_summary(ALICE, chat_id) is None
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=60)
    assert not await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=60)  # held
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("up to four", 4))
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("up to four", 4)
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=60)  # let go
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("up to two", 2))  # older: not kept, but let go
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("up to four", 4)
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=60)
    await store.end_rolling_summary(ALICE, chat_id, None)
    assert await store.get_rolling_summary(ALICE, chat_id) == RollingSummary("up to four", 4)


async def test_a_rolling_summary_hold_lapses_and_belongs_to_its_owner(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    assert not await store.claim_rolling_summary(BOB, chat_id, hold_seconds=60)
    assert not await store.claim_rolling_summary(ALICE, "chat_missing", hold_seconds=60)
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=0.05)
    await store.end_rolling_summary(BOB, chat_id, RollingSummary("not bob's", 9))  # no effect
    await asyncio.sleep(0.1)
    assert await store.claim_rolling_summary(ALICE, chat_id, hold_seconds=60)  # its holder died: the hold lapsed
    assert await store.get_rolling_summary(ALICE, chat_id) is None
    with pytest.raises(ChatNotFoundError):
        await store.get_rolling_summary(BOB, chat_id)
    await store.end_rolling_summary(ALICE, chat_id, RollingSummary("s", 2))
    await store.delete_chat(ALICE, chat_id)
    with pytest.raises(ChatNotFoundError):
        await store.get_rolling_summary(ALICE, chat_id)


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


async def contents(store: ChatStore, chat_id: str) -> list[str]:
    return [m.content for m in (await store.list_messages(ALICE, chat_id, PageRequest(limit=100))).data]


async def hold(store: ChatStore, chat_id: str) -> None:
    async with store.turn_lease(ALICE, chat_id):
        pass


async def test_turns_on_one_chat_are_granted_one_at_a_time_in_the_order_asked(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    entered: list[int] = []
    inside = 0

    async def turn(n: int) -> None:
        nonlocal inside
        await asyncio.sleep(n * 0.05)  # asked in this order: far apart beside a ticket's round trip under load
        async with store.turn_lease(ALICE, chat_id) as ticket:
            inside += 1
            assert inside == 1, "two turns held the chat at once"
            entered.append(n)
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, f"turn {n}"), ticket=ticket)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(turn(n) for n in range(5)))
    assert entered == list(range(5))
    assert await contents(store, chat_id) == [f"turn {n}" for n in range(5)]


async def test_turns_on_different_chats_do_not_wait_for_each_other(store: ChatStore) -> None:
    first, second = await new_chat(store), await new_chat(store)
    async with store.turn_lease(ALICE, first), asyncio.timeout(5), store.turn_lease(ALICE, second) as ticket:
        await store.append_message(ALICE, second, NewMessage(Role.USER, "meanwhile"), ticket=ticket)


async def test_an_append_whose_ticket_no_longer_heads_the_chat_stores_nothing(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    async with store.turn_lease(ALICE, chat_id) as old:
        await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "in time"), ticket=old)
    with pytest.raises(TurnLapsedError):  # given back at its block's end
        await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "too late"), ticket=old)
    async with store.turn_lease(ALICE, chat_id) as current:
        with pytest.raises(TurnLapsedError):
            await store.append_question(ALICE, chat_id, "too late", ticket=old)
        with pytest.raises(TurnLapsedError):
            await store.append_messages(
                ALICE, chat_id, [NewMessage(Role.USER, "too"), NewMessage(Role.USER, "late")], ticket=old
            )
        await store.append_message(
            ALICE, chat_id, NewMessage(Role.USER, "the next turn"), ticket=current, ends_turn=True
        )
        with pytest.raises(TurnLapsedError):  # given back with its last append
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "after its end"), ticket=current)
    assert await contents(store, chat_id) == ["in time", "the next turn"]
    assert (await store.get_chat(ALICE, chat_id)).message_count == 2


@pytest.mark.parametrize("replies", [1, 2])
async def test_the_turns_last_append_lets_the_next_turn_in_before_its_block_ends(
    store: ChatStore, replies: int
) -> None:
    """`ends_turn` gives the ticket back with the append (of one message or several): the turn
    waiting next begins at once, and the first block's end has nothing left to give back (so the
    one after that still waits)."""
    chat_id = await new_chat(store)
    order: list[str] = []
    second_in, second_may_end = asyncio.Event(), asyncio.Event()

    async def second() -> None:
        async with store.turn_lease(ALICE, chat_id) as ticket:
            order.append("second in")
            second_in.set()
            await second_may_end.wait()
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "second"), ticket=ticket)
            order.append("second out")  # in the block: the third may begin as soon as it ends

    async def third() -> None:
        async with store.turn_lease(ALICE, chat_id) as ticket:
            order.append("third in")
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "third"), ticket=ticket)

    async with store.turn_lease(ALICE, chat_id) as ticket:
        waiting = [asyncio.create_task(second())]
        await asyncio.sleep(0.05)
        waiting.append(asyncio.create_task(third()))
        await asyncio.sleep(0.05)
        assert order == [], "the next turns wait while the first is not done"
        first = [NewMessage(Role.ASSISTANT, "first")] * replies
        if replies == 1:
            await store.append_message(ALICE, chat_id, first[0], ticket=ticket, ends_turn=True)
        else:
            await store.append_messages(ALICE, chat_id, first, ticket=ticket, ends_turn=True)
        await asyncio.wait_for(second_in.wait(), 5)
        order.append("first out")
    await asyncio.sleep(0.2)
    assert order == ["second in", "first out"], "the first block's end took nothing from the second"
    second_may_end.set()
    await asyncio.gather(*waiting)
    assert order == ["second in", "first out", "second out", "third in"]
    assert await contents(store, chat_id) == ["first"] * replies + ["second", "third"]


async def test_a_turn_on_an_idle_chat_stores_its_question_with_its_ticket(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await store.update_chat(ALICE, chat_id, ChatChanges(frozenset({"system_prompt"}), system_prompt="be brief"))
    async with store.turn_lease(ALICE, chat_id, question="q") as ticket:
        assert (await store.get_chat(ALICE, chat_id)).message_count == 1, "stored as the ticket was granted"
        question = ticket.question
        assert question is not None
        assert (question.seq, question.role, question.content, ticket.system_prompt) == (1, Role.USER, "q", "be brief")
        assert await store.get_message(ALICE, chat_id, question.id) == question
        assert await store.recent_messages(ALICE, chat_id, limit=10, ticket=ticket) == [question]
        reply = NewMessage(Role.ASSISTANT, "a")
        assert (await store.append_message(ALICE, chat_id, reply, ticket=ticket, ends_turn=True)).seq == 2
    assert await contents(store, chat_id) == ["q", "a"], "the question was stored once"
    async with store.turn_lease(ALICE, chat_id) as bare:
        assert (bare.question, bare.system_prompt) == (None, None), "no question asked for, none stored"


async def test_a_turn_waiting_in_line_stores_its_question_only_in_its_turn(store: ChatStore) -> None:
    chat_id = await new_chat(store)

    async def next_turn() -> None:
        async with store.turn_lease(ALICE, chat_id, question="second q") as ticket:
            assert ticket.question is None, "a ticket that had to wait comes without its question"
            await store.append_question(ALICE, chat_id, "second q", ticket=ticket)

    async with store.turn_lease(ALICE, chat_id, question="first q") as ticket:
        queued = asyncio.create_task(next_turn())
        await asyncio.sleep(0.05)
        assert await contents(store, chat_id) == ["first q"], "a waiting turn stores nothing"
        await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "first a"), ticket=ticket)
    await asyncio.wait_for(queued, 5)
    assert await contents(store, chat_id) == ["first q", "first a", "second q"]


async def test_created_at_never_goes_backwards_under_queued_turns(store: ChatStore) -> None:
    """Three turns ask for the chat's turn with their questions before the one ahead has ended: the
    second waits in the store's line, the third in the process's (as the service's queue holds a
    turn until the one ahead ends). Each question is created when stored, after the reply before it."""
    chat_id = await new_chat(store)
    leases = [store.turn_lease(ALICE, chat_id, question=f"q{n}") for n in range(3)]
    entered, ended = [asyncio.Event() for _ in range(3)], [asyncio.Event() for _ in range(3)]

    async def turn(n: int) -> None:
        if n == 1:
            await entered[0].wait()
        if n == 2:
            await ended[1].wait()
        async with leases[n] as ticket:
            entered[n].set()
            if ticket.question is None:
                await store.append_question(ALICE, chat_id, f"q{n}", ticket=ticket)
            await asyncio.sleep(LATER)
            reply = NewMessage(Role.ASSISTANT, f"a{n}")
            await store.append_message(ALICE, chat_id, reply, ticket=ticket, ends_turn=True)
        ended[n].set()

    await asyncio.gather(*(turn(n) for n in range(3)))
    messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    assert [m.content for m in messages] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    stamps = [m.created_at for m in messages]
    assert stamps == sorted(stamps)


async def test_a_turn_on_a_missing_chat_or_one_deleted_while_it_waits_is_not_found(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    with pytest.raises(ChatNotFoundError):
        await hold(store, "chat_missing")
    with pytest.raises(ChatNotFoundError):
        async with store.turn_lease(BOB, chat_id):
            pass
    async with store.turn_lease(ALICE, chat_id) as ticket:
        waiter = asyncio.create_task(hold(store, chat_id))
        await asyncio.sleep(0.05)
        await store.delete_chat(ALICE, chat_id)
        with pytest.raises(ChatNotFoundError):
            await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "into the void"), ticket=ticket)
        with pytest.raises(ChatNotFoundError):
            await asyncio.wait_for(waiter, 5)
    with pytest.raises(ChatNotFoundError):
        await hold(store, chat_id)


async def test_a_cancelled_waiter_leaves_the_line(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    async with store.turn_lease(ALICE, chat_id):
        waiter = asyncio.create_task(hold(store, chat_id))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with asyncio.timeout(1):  # the next turn waits for no one (nor for a lease to lapse)
        await hold(store, chat_id)


async def test_a_chat_is_created_with_its_first_messages(store: ChatStore) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"}
    usage = Usage(prompt_tokens=1, completion_tokens=2)
    first = [
        NewMessage(Role.USER, "hello"),
        NewMessage(Role.ASSISTANT, "weather()", item=call),
        NewMessage(Role.ASSISTANT, "sunny", model="m", usage=usage, id="msg_announced"),
    ]
    chat = await store.create_chat(ALICE, title="T", metadata={"k": "v"}, system_prompt="S", messages=first)
    assert chat.message_count == 3
    assert await store.get_chat(ALICE, chat.id) == chat
    assert (await store.list_chats(ALICE, PageRequest())).data == [chat]
    stored = (await store.list_messages(ALICE, chat.id, PageRequest())).data
    assert [(m.seq, m.role, m.content, m.item, m.model, m.usage) for m in stored] == [
        (1, Role.USER, "hello", None, None, None),
        (2, Role.ASSISTANT, "weather()", call, None, None),
        (3, Role.ASSISTANT, "sunny", None, "m", usage),
    ]
    assert stored[2].id == "msg_announced"
    assert await store.get_message(ALICE, chat.id, "msg_announced") == stored[2]
    stats = await store.message_stats(ALICE, chat.id)
    assert (stats.message_count, stats.user_message_count, stats.assistant_message_count) == (3, 1, 2)
    assert chat.created_at <= stats.first_message_at == stored[0].created_at  # type: ignore[operator]
    assert stats.last_message_at == stored[2].created_at == chat.updated_at
    assert (await store.append_message(ALICE, chat.id, NewMessage(Role.USER, "more"))).seq == 4


def expected_page(ids: list[str], page: PageRequest) -> tuple[list[str], bool]:
    """The specification of paging, worked out on the index of `ids` (ascending).

    Written independently of the stores' key ranges (`store/paging.py`), which it checks.
    """
    lo, hi = 0, len(ids)
    ascending = page.order == "asc"
    if page.after is not None:
        index = position(ids, page.after)
        lo, hi = (index + 1, hi) if ascending else (lo, index)
    if page.before is not None:
        index = position(ids, page.before)
        lo, hi = (lo, min(hi, index)) if ascending else (max(lo, index + 1), hi)
    hi = max(lo, hi)
    if ascending == (page.before is None or page.after is not None):  # read from the low end
        window = ids[lo : min(hi, lo + page.limit)]
        has_more = lo + len(window) < hi
    else:
        window = ids[max(lo, hi - page.limit) : hi]
        has_more = hi - len(window) > lo
    return (window if ascending else window[::-1]), has_more


def position(ids: list[str], cursor: str) -> int:
    if cursor not in ids:
        raise InvalidCursorError(cursor)
    return ids.index(cursor)


def every_page(ids: list[str]) -> list[PageRequest]:
    cursors = [None, *ids]
    return [
        PageRequest(limit=limit, after=after, before=before, order=order)
        for order in ("asc", "desc")
        for limit in (1, 2, 5)
        for after in cursors
        for before in cursors
    ]


async def test_message_pages_match_the_specification(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, *[f"m{n}" for n in range(1, 6)])
    ids = [m.id for m in (await store.list_messages(ALICE, chat_id, PageRequest(limit=100))).data]
    for page in every_page(ids):
        listed = await store.list_messages(ALICE, chat_id, page)
        assert ([m.id for m in listed.data], listed.has_more) == expected_page(ids, page), page


async def test_chat_pages_match_the_specification(store: ChatStore) -> None:
    ids = [await new_chat(store) for _ in range(2)]
    await new_chat(store, BOB)
    ids += [await new_chat(store) for _ in range(3)]
    await store.delete_chat(ALICE, ids.pop(1))
    for page in every_page(ids):
        listed = await store.list_chats(ALICE, page)
        assert ([c.id for c in listed.data], listed.has_more) == expected_page(ids, page), page


async def test_cursors_must_name_an_object_of_the_listed_collection(store: ChatStore) -> None:
    chat_id, other = await new_chat(store), await new_chat(store)
    bobs = await new_chat(store, BOB)
    await add(store, other, "elsewhere")
    elsewhere = (await store.list_messages(ALICE, other, PageRequest())).data[0].id
    await add(store, chat_id, "here")
    gone = await new_chat(store)
    await store.delete_chat(ALICE, gone)
    for cursor in (bobs, gone, "chat_nope"):
        for page in (PageRequest(after=cursor), PageRequest(before=cursor, order="desc")):
            with pytest.raises(InvalidCursorError):
                await store.list_chats(ALICE, page)
    for page in (PageRequest(after=elsewhere), PageRequest(before=elsewhere), PageRequest(before=chat_id)):
        with pytest.raises(InvalidCursorError):
            await store.list_messages(ALICE, chat_id, page)
    with pytest.raises(ChatNotFoundError):
        await store.list_messages(BOB, chat_id, PageRequest(after=elsewhere))


# Ids no store hands out: a NUL (which PostgreSQL refuses in a text parameter), a seq suffix of
# digits that are not ASCII (`str.isdigit()` takes "²", which `int()` refuses), other characters.
UNKNOWABLE_IDS = ["\x00", "chat_x\x00y", "msg_x.\u00b2", "msg_x.\u0661", "\x1b[31m", "a b", "é"]


async def test_ids_and_cursors_no_store_hands_out_are_simply_not_found(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    question = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "q"))
    await store.save_response(ALICE, StoredResponse("resp_1", None, None, utcnow(), {"id": "resp_1"}, []))
    base, _, _ = question.id.rpartition(".")
    for bad in [*UNKNOWABLE_IDS, f"{base}.\u00b2", f"{question.id}\x00"]:
        for page in (PageRequest(after=bad), PageRequest(before=bad)):
            with pytest.raises(InvalidCursorError):
                await store.list_chats(ALICE, page)
            with pytest.raises(InvalidCursorError):
                await store.list_messages(ALICE, chat_id, page)
        with pytest.raises(MessageNotFoundError):
            await store.get_message(ALICE, chat_id, bad)
        with pytest.raises(MessageNotFoundError):
            await store.forget_message(ALICE, chat_id, bad)
        with pytest.raises(ResponseNotFoundError):
            await store.get_response(ALICE, bad)
        with pytest.raises(ResponseNotFoundError):
            await store.delete_response(ALICE, bad)
        for lookup in (
            store.get_chat(ALICE, bad),
            store.update_chat(ALICE, bad, ChatChanges(frozenset({"title"}), title="t")),
            store.delete_chat(ALICE, bad),
            store.append_message(ALICE, bad, NewMessage(Role.USER, "x")),
            store.list_messages(ALICE, bad, PageRequest()),
            store.recent_messages(ALICE, bad, limit=5),
            store.message_stats(ALICE, bad),
            store.get_message(ALICE, bad, question.id),
            store.get_summary(ALICE, bad),
            store.get_rolling_summary(ALICE, bad),
        ):
            with pytest.raises(ChatNotFoundError):
                await lookup
        with pytest.raises(ChatNotFoundError):
            async with store.turn_lease(ALICE, bad, question="q"):
                pass
        assert not await store.claim_rolling_summary(ALICE, bad, hold_seconds=1)
    assert (await store.get_chat(ALICE, chat_id)).message_count == 1


async def test_content_and_metadata_round_trip_exactly(store: ChatStore) -> None:
    metadata = {"ключ": "значение 🙂", "quote": 'it\'s "quoted"', "empty": ""}
    chat = await store.create_chat(ALICE, title="Ünïcode 标题", metadata=metadata, system_prompt="S\nT")
    content = "naïve café 👩‍💻 ' \" \\ \t end\n" * 800
    stored = await store.append_message(ALICE, chat.id, NewMessage(Role.USER, content))
    assert (await store.get_chat(ALICE, chat.id)).metadata == metadata
    assert (await store.list_chats(ALICE, PageRequest())).data == [await store.get_chat(ALICE, chat.id)]
    assert (await store.list_messages(ALICE, chat.id, PageRequest())).data == [stored]
    assert await store.recent_messages(ALICE, chat.id, limit=1) == [stored]


async def test_chat_reads_follow_appends_and_updates(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "q", "a", "q2")
    newest = (await store.recent_messages(ALICE, chat_id, limit=1))[0]
    chat = await store.get_chat(ALICE, chat_id)
    assert (chat.message_count, chat.updated_at) == (3, newest.created_at)
    assert (await store.list_chats(ALICE, PageRequest())).data == [chat]
    renamed = await store.update_chat(ALICE, chat_id, ChatChanges(frozenset({"title"}), title="new"))
    assert renamed.message_count == 3
    assert renamed.updated_at >= newest.created_at
    stats = await store.message_stats(ALICE, chat_id)
    assert (stats.last_message_at, stats.last_seq) == (newest.created_at, 3)


async def test_concurrent_appends_to_many_chats_stay_gap_free(store: ChatStore) -> None:
    chats = [await new_chat(store) for _ in range(4)]
    roles = [Role.USER, Role.ASSISTANT]
    stored = await asyncio.gather(
        *(store.append_message(ALICE, c, NewMessage(roles[n % 2], f"{c} {n}")) for n in range(15) for c in chats)
    )
    for chat_id in chats:
        seqs = sorted(m.seq for m in stored if m.chat_id == chat_id)
        assert seqs == list(range(1, 16))
        stats = await store.message_stats(ALICE, chat_id)
        assert (stats.message_count, stats.user_message_count, stats.assistant_message_count) == (15, 8, 7)


async def test_a_delete_racing_appends_leaves_no_trace(store: ChatStore) -> None:
    doomed, kept = await new_chat(store), await new_chat(store)

    async def append(chat_id: str, n: int) -> int | None:
        try:
            return (await store.append_message(ALICE, chat_id, NewMessage(Role.USER, f"m{n}"))).seq
        except ChatNotFoundError:
            return None

    appends = [append(chat_id, n) for n in range(20) for chat_id in (doomed, kept)]
    results = await asyncio.gather(store.delete_chat(ALICE, doomed), *appends)
    doomed_seqs = sorted(seq for seq in results[1::2] if seq is not None)
    assert doomed_seqs == list(range(1, len(doomed_seqs) + 1))  # the ones that made it were consecutive
    assert sorted(seq for seq in results[2::2] if seq is not None) == list(range(1, 21))
    with pytest.raises(ChatNotFoundError):
        await store.recent_messages(ALICE, doomed, limit=5)
    assert [c.id for c in (await store.list_chats(ALICE, PageRequest())).data] == [kept]
    assert (await store.message_stats(ALICE, kept)).message_count == 20


async def test_get_message_reads_one_message_of_the_chat(store: ChatStore) -> None:
    chat_id, other = await new_chat(store), await new_chat(store)
    question = await store.append_message(ALICE, chat_id, NewMessage(Role.USER, "q"))
    usage = Usage(prompt_tokens=1, completion_tokens=2)
    answer = await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "a", model="m", usage=usage))
    elsewhere = await store.append_message(ALICE, other, NewMessage(Role.USER, "elsewhere"))
    assert await store.get_message(ALICE, chat_id, question.id) == question
    assert await store.get_message(ALICE, chat_id, answer.id) == answer
    for missing in ("msg_nope", elsewhere.id):
        with pytest.raises(MessageNotFoundError):
            await store.get_message(ALICE, chat_id, missing)
    with pytest.raises(ChatNotFoundError):
        await store.get_message(BOB, chat_id, question.id)
    with pytest.raises(ChatNotFoundError):
        await store.get_message(ALICE, "chat_nope", question.id)


async def test_token_counts_of_64_bits_are_kept_by_every_append(store: ChatStore) -> None:
    """Over 32 bits (a 500 that lost the reply on PostgreSQL before m012), up to a signed 64-bit integer."""
    chat_id = await new_chat(store)
    usages = [Usage(3_000_000_000, 2**63 - 1), Usage(2**63 - 1, 4_000_000_000), Usage(2**40, 2**33)]
    reply = [NewMessage(Role.ASSISTANT, f"a{n}", model="m", usage=usage) for n, usage in enumerate(usages)]
    await store.append_message(ALICE, chat_id, reply[0])  # alone
    async with store.turn_lease(ALICE, chat_id, question="q") as ticket:
        await store.append_message(ALICE, chat_id, reply[1], ticket=ticket, ends_turn=True)  # giving the turn back
    async with store.turn_lease(ALICE, chat_id) as ticket:
        await store.append_messages(ALICE, chat_id, [reply[2], reply[0]], ticket=ticket, ends_turn=True)  # together
    messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    assert [(m.content, m.usage) for m in messages] == [
        ("a0", usages[0]),
        ("q", None),
        ("a1", usages[1]),
        ("a2", usages[2]),
        ("a0", usages[0]),
    ]
    assert (await store.get_message(ALICE, chat_id, messages[2].id)).usage == usages[1]


async def claim(
    store: ChatStore,
    fingerprint: str = REQUEST,
    *,
    key: str = KEY,
    owner: str = ALICE,
    expired: bool = False,
    abandoned: bool = False,
    at: datetime | None = None,
) -> KeyClaim:
    """Claim as the service does at `at` (now); `expired`/`abandoned` make that moment the cut-off,
    so every record written before it counts as expired or abandoned."""
    now = at or utcnow()
    return await store.claim_key(
        owner,
        key,
        fingerprint,
        expired_before=now if expired else now - KEEP,
        abandoned_before=now if abandoned else now - ABANDON,
    )


async def stored_key(store: ChatStore, *, key: str = KEY, owner: str = ALICE) -> IdempotencyRecord:
    """The record of a present key, read by a claim that cannot take it (another request's)."""
    outcome = await claim(store, "someone else's request", key=key, owner=owner)
    assert not outcome.claimed
    assert outcome.previous is not None
    return outcome.previous


async def test_a_new_key_is_claimed_and_then_in_flight(store: ChatStore) -> None:
    before = utcnow()
    assert await claim(store) == KeyClaim(claimed=True, previous=None)
    after = utcnow()
    again = await claim(store)
    assert not again.claimed
    record = again.previous
    assert record is not None
    assert (record.fingerprint, record.state, record.result, record.user_message_id) == (
        REQUEST,
        KeyState.RUNNING,
        None,
        None,
    )
    assert before <= record.created_at == record.updated_at <= after
    assert await stored_key(store) == record  # refusing a claim changes nothing


async def test_a_key_used_for_another_request_is_never_claimed(store: ChatStore) -> None:
    await claim(store)
    first = await stored_key(store)
    await asyncio.sleep(LATER)
    assert await claim(store, OTHER_REQUEST, abandoned=True) == KeyClaim(claimed=False, previous=first)
    await store.update_key(ALICE, KEY, state=KeyState.FAILED, user_message_id="msg_q")
    failed = await stored_key(store)
    assert await claim(store, OTHER_REQUEST) == KeyClaim(claimed=False, previous=failed)


async def test_a_done_key_is_replayed_not_claimed(store: ChatStore) -> None:
    await claim(store)
    await store.update_key(ALICE, KEY, state=KeyState.DONE, result='{"id": 1}', user_message_id="msg_q")
    done = await stored_key(store)
    assert (done.state, done.result, done.user_message_id) == (KeyState.DONE, '{"id": 1}', "msg_q")
    await asyncio.sleep(LATER)
    for abandoned in (False, True):
        assert await claim(store, abandoned=abandoned) == KeyClaim(claimed=False, previous=done)


async def test_a_running_key_is_taken_over_only_once_abandoned(store: ChatStore) -> None:
    await claim(store)
    await store.update_key(ALICE, KEY, state=KeyState.RUNNING, user_message_id="msg_q")
    running = await stored_key(store)
    assert await claim(store) == KeyClaim(claimed=False, previous=running)
    await asyncio.sleep(LATER)
    assert await claim(store, abandoned=True) == KeyClaim(claimed=True, previous=running)
    taken = await stored_key(store)
    assert (taken.state, taken.created_at, taken.user_message_id) == (KeyState.RUNNING, running.created_at, "msg_q")
    assert taken.updated_at > running.updated_at
    assert not (await claim(store)).claimed  # in flight again, for the new holder


async def test_a_key_kept_alive_is_never_taken_over(store: ChatStore) -> None:
    await claim(store)
    store.keep_key_alive(ALICE, KEY)
    running = await stored_key(store)
    await asyncio.sleep(LATER)
    assert await claim(store, abandoned=True) == KeyClaim(claimed=False, previous=running)
    store.let_key_lapse(ALICE, KEY)
    assert (await claim(store, abandoned=True)).claimed, "once let go, a key that is not refreshed is abandoned"


async def test_a_failed_key_is_claimed_again(store: ChatStore) -> None:
    await claim(store)
    await store.update_key(ALICE, KEY, state=KeyState.RUNNING, user_message_id="msg_q")
    await store.update_key(ALICE, KEY, state=KeyState.FAILED)
    failed = await stored_key(store)
    assert (failed.state, failed.user_message_id) == (KeyState.FAILED, "msg_q")
    await asyncio.sleep(LATER)
    assert await claim(store) == KeyClaim(claimed=True, previous=failed)
    retried = await stored_key(store)
    assert (retried.state, retried.user_message_id) == (KeyState.RUNNING, "msg_q")
    assert retried.created_at == failed.created_at
    assert retried.updated_at > failed.updated_at


async def test_an_expired_key_is_replaced_by_a_fresh_one(store: ChatStore) -> None:
    await claim(store)
    await store.update_key(ALICE, KEY, state=KeyState.DONE, result="old answer", user_message_id="msg_q")
    old = await stored_key(store)
    await asyncio.sleep(LATER)
    assert await claim(store, OTHER_REQUEST, expired=True) == KeyClaim(claimed=True, previous=None)
    fresh = await stored_key(store)
    assert (fresh.fingerprint, fresh.state, fresh.result, fresh.user_message_id) == (
        OTHER_REQUEST,
        KeyState.RUNNING,
        None,
        None,
    )
    assert fresh.created_at == fresh.updated_at > old.updated_at


async def test_keys_are_scoped_per_owner(store: ChatStore) -> None:
    assert (await claim(store, owner=ALICE)).claimed
    assert await claim(store, OTHER_REQUEST, owner=BOB) == KeyClaim(claimed=True, previous=None)
    assert (await stored_key(store, owner=ALICE)).fingerprint == REQUEST
    assert (await stored_key(store, owner=BOB)).fingerprint == OTHER_REQUEST


@pytest.mark.parametrize("before", ["absent", "failed", "abandoned", "expired"])
async def test_concurrent_claims_of_one_key_claim_it_once(store: ChatStore, before: str) -> None:
    for key in ("k1", "k2", "k3"):
        if before != "absent":
            await claim(store, key=key)
        if before == "failed":
            await store.update_key(ALICE, key, state=KeyState.FAILED, user_message_id="msg_q")
        await asyncio.sleep(LATER)
        cutoff = utcnow()  # one moment for all: the winner's own record is neither abandoned nor expired
        outcomes = await asyncio.gather(
            *(
                claim(store, key=key, abandoned=before == "abandoned", expired=before == "expired", at=cutoff)
                for _ in range(20)
            )
        )
        assert [outcome.claimed for outcome in outcomes].count(True) == 1
        refused = [outcome.previous for outcome in outcomes if not outcome.claimed]
        assert all(previous is not None and previous.state is KeyState.RUNNING for previous in refused)


async def test_update_key_records_how_far_the_request_got(store: ChatStore) -> None:
    await claim(store)
    claimed = await stored_key(store)
    await asyncio.sleep(LATER)
    await store.update_key(ALICE, KEY, state=KeyState.RUNNING, user_message_id="msg_q")
    questioned = await stored_key(store)
    assert (questioned.state, questioned.result, questioned.user_message_id) == (KeyState.RUNNING, None, "msg_q")
    assert (questioned.created_at, questioned.fingerprint) == (claimed.created_at, REQUEST)
    assert questioned.updated_at > claimed.updated_at
    await asyncio.sleep(LATER)
    await store.update_key(ALICE, KEY, state=KeyState.DONE, result="answer")
    done = await stored_key(store)
    assert (done.state, done.result, done.user_message_id) == (KeyState.DONE, "answer", "msg_q")
    assert done.updated_at > questioned.updated_at
    await store.update_key(ALICE, KEY, state=KeyState.FAILED, user_message_id="msg_other")
    failed = await stored_key(store)
    assert (failed.state, failed.result, failed.user_message_id) == (KeyState.FAILED, None, "msg_other")


async def test_updating_an_unknown_key_does_nothing(store: ChatStore) -> None:
    await store.update_key(ALICE, KEY, state=KeyState.DONE, result="answer", user_message_id="msg_q")
    await claim(store, key="other")
    await store.update_key(BOB, "other", state=KeyState.DONE, result="answer")
    assert await claim(store) == KeyClaim(claimed=True, previous=None)
    assert (await stored_key(store, key="other")).state is KeyState.RUNNING


async def test_a_released_key_can_be_claimed_afresh(store: ChatStore) -> None:
    await claim(store)
    await store.release_key(ALICE, KEY)
    await store.release_key(ALICE, KEY)  # gone already: nothing to do
    assert await claim(store, OTHER_REQUEST) == KeyClaim(claimed=True, previous=None)
    assert (await stored_key(store)).fingerprint == OTHER_REQUEST


async def test_purge_deletes_the_keys_of_every_owner_created_before_the_cutoff(store: ChatStore) -> None:
    for owner, key in ((ALICE, "a"), (ALICE, "b"), (BOB, "a")):
        await claim(store, key=key, owner=owner)
    await store.update_key(ALICE, "b", state=KeyState.DONE, result="answer")  # updated later: still old
    await asyncio.sleep(LATER)
    cutoff = utcnow()
    await asyncio.sleep(LATER)
    await claim(store, key="c", owner=BOB)
    assert await store.purge_keys(expired_before=cutoff) == 3
    assert await store.purge_keys(expired_before=cutoff) == 0
    assert (await stored_key(store, key="c", owner=BOB)).state is KeyState.RUNNING
    for owner, key in ((ALICE, "a"), (ALICE, "b"), (BOB, "a")):
        assert await claim(store, OTHER_REQUEST, key=key, owner=owner) == KeyClaim(claimed=True, previous=None)


async def renew(
    store: ChatStore, lease: str, *, want: int = 1, spent: Sequence[float] = (), key: str = "posts:alice"
) -> RateLease:
    """A lease on a limit of 3 in half a second; its slots count as taken 0.1 s ahead."""
    return await store.renew_rate_lease(
        key, lease, spent=spent, want=want, limit=3, window_seconds=0.5, lease_seconds=0.1
    )


async def test_rate_slots_are_counted_in_a_moving_window(store: ChatStore) -> None:
    assert await renew(store, "a", want=2) == RateLease(2)
    assert await renew(store, "b", want=5) == RateLease(1), "as many as fit under the limit"
    refused = await renew(store, "c")
    assert refused.slots == 0
    assert refused.wait is not None
    assert 0.5 < refused.wait <= 0.6, "the leases' slots count from their end, 0.1 s ahead"
    assert await renew(store, "a", key="posts:bob", want=3) == RateLease(3), "keys count apart"
    await asyncio.sleep(refused.wait + 0.05)
    assert await renew(store, "c", want=3) == RateLease(3)


async def test_a_lease_gives_back_what_it_did_not_spend(store: ChatStore) -> None:
    assert await renew(store, "a", want=3) == RateLease(3)
    assert await renew(store, "a", want=3, spent=[0.0]) == RateLease(2), "renewed, not added to"
    assert (await renew(store, "b")).slots == 0
    assert await renew(store, "a", want=0, spent=[0.0]) == RateLease(0), "settled: two spent in all"
    assert await renew(store, "b", want=3) == RateLease(1)


async def test_a_spent_slot_counts_from_when_it_was_spent(store: ChatStore) -> None:
    assert await renew(store, "a", want=3) == RateLease(3)
    assert await renew(store, "a", want=0, spent=[0.4, 0.0, 0.0]) == RateLease(0)
    refused = await renew(store, "b")
    assert refused.wait is not None
    assert refused.wait <= 0.15, "the slot spent 0.4 s ago frees first"
    await asyncio.sleep(refused.wait + 0.05)
    assert await renew(store, "b", want=3) == RateLease(1)


async def test_concurrent_leases_never_take_more_slots_than_the_limit(store: ChatStore) -> None:
    leases = await asyncio.gather(*(renew(store, f"l{n}", want=n % 3 + 1) for n in range(20)))
    assert sum(lease.slots for lease in leases) == 3


async def test_a_question_appended_tells_the_chats_system_prompt_as_it_is(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    question, system_prompt = await store.append_question(ALICE, chat_id, "first")
    assert (question.seq, question.role, question.content, system_prompt) == (1, Role.USER, "first", None)
    await store.update_chat(ALICE, chat_id, ChatChanges(frozenset({"system_prompt"}), system_prompt="Be brief."))
    question, system_prompt = await store.append_question(ALICE, chat_id, "second")
    assert (question.seq, system_prompt) == (2, "Be brief.")
    assert (await store.get_message(ALICE, chat_id, question.id)) == question
    with pytest.raises(ChatNotFoundError):
        await store.append_question(BOB, chat_id, "not bob's")


async def test_messages_appended_together_take_consecutive_seqs_and_keep_their_items(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "before")
    call = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Rome"}'}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    items = [
        NewMessage(Role.ASSISTANT, "weather(city=Rome)", item=call),
        NewMessage(Role.USER, "sunny", item=output),
        NewMessage(Role.USER, "thanks"),
    ]
    appended, system_prompt = await store.append_messages(ALICE, chat_id, items)
    assert system_prompt is None
    assert [(m.seq, m.item) for m in appended] == [(2, call), (3, output), (4, None)]
    stored = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    assert stored[1:] == appended
    stats = await store.message_stats(ALICE, chat_id)
    assert (stats.message_count, stats.user_message_count) == (4, 3)
    with pytest.raises(ChatNotFoundError):
        await store.append_messages(BOB, chat_id, [NewMessage(Role.USER, "x")])


async def test_responses_are_kept_per_owner(store: ChatStore) -> None:
    kept = StoredResponse(
        "resp_1", None, None, utcnow(), {"id": "resp_1", "output": [{"type": "message"}]}, [{"type": "message"}]
    )
    await store.save_response(ALICE, kept)
    assert await store.get_response(ALICE, "resp_1") == kept
    with pytest.raises(ResponseNotFoundError):
        await store.get_response(BOB, "resp_1")
    with pytest.raises(ResponseNotFoundError):
        await store.delete_response(BOB, "resp_1")
    await store.delete_response(ALICE, "resp_1")
    with pytest.raises(ResponseNotFoundError):
        await store.get_response(ALICE, "resp_1")


async def test_an_unfinished_response_is_updated_until_it_ends_and_lapses_unless_kept_alive(store: ChatStore) -> None:
    queued = StoredResponse("resp_bg", None, None, utcnow(), {"id": "resp_bg", "status": "queued"}, [], {"events": []})
    await store.save_response(ALICE, queued, live_for=30)
    assert await store.get_response(ALICE, "resp_bg") == queued
    running = replace(queued, body={"id": "resp_bg", "status": "in_progress"})
    assert await store.update_response(ALICE, running, live_for=30)
    assert not await store.update_response(ALICE, running, if_lapsed=True)  # kept alive
    assert not await store.update_response(BOB, running)
    assert not await store.update_response(ALICE, running, expected=("queued",))
    assert not await store.update_response(ALICE, replace(running, id="resp_none"))
    done = replace(queued, body={"id": "resp_bg", "status": "completed"}, input_items=[{"type": "message"}])
    done = replace(done, stream={"events": [["end", "assistant_message", "msg_1"]]})
    assert await store.update_response(ALICE, done)
    assert await store.get_response(ALICE, "resp_bg") == done
    assert not await store.update_response(ALICE, running, live_for=30)  # what ended stays ended

    lapsing = StoredResponse("resp_lapsing", "chat_1", None, utcnow(), {"status": "in_progress"}, [], {"events": []})
    await store.save_response(ALICE, lapsing, live_for=0.05)
    await asyncio.sleep(0.3)
    assert (await store.get_response(ALICE, "resp_lapsing")).lapsed
    failed = replace(lapsing, body={"status": "failed"})
    assert await store.update_response(ALICE, failed, if_lapsed=True)
    assert await store.get_response(ALICE, "resp_lapsing") == failed  # ended: no longer lapsed

    ended_before = StoredResponse("resp_old", None, None, utcnow(), {"id": "resp_old"}, [])  # no status: ended
    await store.save_response(ALICE, ended_before)
    assert not (await store.get_response(ALICE, "resp_old")).lapsed
    assert not await store.update_response(ALICE, replace(ended_before, body={"status": "failed"}))


async def test_a_message_can_be_stored_under_an_id_announced_before(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "first")
    stored = await store.append_message(ALICE, chat_id, NewMessage(Role.ASSISTANT, "named", id="msg_announced"))
    assert (stored.id, stored.seq) == ("msg_announced", 2)
    assert await store.get_message(ALICE, chat_id, "msg_announced") == stored
    page = await store.list_messages(ALICE, chat_id, PageRequest(after="msg_announced", order="desc"))
    assert [m.content for m in page.data] == ["first"]


async def test_a_forgotten_message_keeps_its_seq_and_nothing_else(store: ChatStore) -> None:
    chat_id = await new_chat(store)
    await add(store, chat_id, "keep", "drop me", "keep too")
    dropped = (await store.list_messages(ALICE, chat_id, PageRequest())).data[1]
    await store.forget_message(ALICE, chat_id, dropped.id)
    messages = (await store.list_messages(ALICE, chat_id, PageRequest())).data
    assert [(m.seq, m.content, m.item) for m in messages] == [
        (1, "keep", None),
        (2, "", DELETED_ITEM),
        (3, "keep too", None),
    ]
    assert messages[1].id == dropped.id
    with pytest.raises(MessageNotFoundError):
        await store.forget_message(ALICE, chat_id, "msg_unknown")
    with pytest.raises(ChatNotFoundError):
        await store.forget_message(BOB, chat_id, dropped.id)


async def test_count_chats_counts_the_owners_chats_alone(store: ChatStore) -> None:
    assert await store.count_chats(ALICE) == 0
    first = await new_chat(store, ALICE)
    await store.create_chat(
        ALICE, title=None, metadata={}, system_prompt=None, messages=[NewMessage(Role.USER, "with a message")]
    )
    await new_chat(store, BOB)
    assert (await store.count_chats(ALICE), await store.count_chats(BOB), await store.count_chats("carol")) == (2, 1, 0)
    await store.delete_chat(ALICE, first)
    assert await store.count_chats(ALICE) == 1
