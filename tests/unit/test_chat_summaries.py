"""ChatSummaries: where an update starts (the cached summary, the rolling summary, the first
message), the bound on its LLM calls, and the rate slot it takes; over the memory store, with a
summarizer that records what it was asked."""

from collections.abc import Sequence

import pytest

from chatkeep.domain import Message, NewMessage, Role, RollingSummary, utcnow
from chatkeep.errors import RateLimitedError
from chatkeep.metrics import NoMetrics
from chatkeep.store.memory.store import MemoryStore
from chatkeep.summaries.chat import MAX_SUMMARY_CHUNKS, ChatSummaries
from chatkeep.summaries.summarizer import SummaryDraft, extractive_condensed, extractive_summary

OWNER = "owner"
BUDGET = 100  # tokens of messages a call: ten messages of 10


class Recording:
    """A summarizer that says which messages it was shown, and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[SummaryDraft | None, list[int]]] = []
        self.lengths: list[int] = []  # of each message shown

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        self.calls.append((previous, [message.seq for message in messages]))
        self.lengths += [len(message.content) for message in messages]
        return f"up to {messages[-1].seq}", [f"highlight {messages[-1].seq}"]

    async def condense(self, previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
        raise AssertionError("a chat summary never condenses")


class Slots:
    """A rate limit of `left` slots."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.taken = 0

    async def check(self, owner: str) -> None:
        if self.taken >= self.left:
            raise RateLimitedError("over the rate limit", retry_after=1)
        self.taken += 1

    async def check_ready(self) -> None:
        return None


async def chat_of(store: MemoryStore, count: int, *, chars: int = 18) -> str:
    """A chat of `count` messages of about 10 tokens each (more with `chars`)."""
    messages = [
        NewMessage(Role.USER if n % 2 == 0 else Role.ASSISTANT, f"{n:04d} " + "w" * chars) for n in range(count)
    ]
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None, messages=messages)
    return chat.id


async def add(store: MemoryStore, chat_id: str, count: int) -> None:
    for _ in range(count):
        await store.append_message(OWNER, chat_id, NewMessage(Role.USER, "0000 " + "w" * 18))


async def roll_to(store: MemoryStore, chat_id: str, seq: int) -> None:
    assert await store.claim_rolling_summary(OWNER, chat_id, hold_seconds=60)
    await store.end_rolling_summary(OWNER, chat_id, RollingSummary(f"rolled up to {seq}", seq))


def summaries(store: MemoryStore, summarizer: Recording, slots: Slots | None = None) -> ChatSummaries:
    return ChatSummaries(store, summarizer, NoMetrics(), budget=BUDGET, rate_limit=slots)


async def test_an_update_makes_at_most_the_bound_of_calls_and_goes_on_where_it_stopped() -> None:
    store, summarizer = MemoryStore(), Recording()
    chat_id = await chat_of(store, 100)  # ten chunks
    chats = summaries(store, summarizer)
    first = await chats.summary(OWNER, chat_id)
    assert len(summarizer.calls) == MAX_SUMMARY_CHUNKS
    assert (first.stale, first.up_to_seq) == (True, summarizer.calls[-1][1][-1])
    second = await chats.summary(OWNER, chat_id, refresh=True)  # starting over would not get further
    assert len(summarizer.calls) == 2 * MAX_SUMMARY_CHUNKS
    assert summarizer.calls[MAX_SUMMARY_CHUNKS][0] == (first.text.summary, first.text.highlights)  # type: ignore[union-attr]
    assert second.up_to_seq > first.up_to_seq


async def test_a_message_longer_than_a_chunk_is_sent_cut_to_it() -> None:
    store, summarizer = MemoryStore(), Recording()
    chat_id = await chat_of(store, 3, chars=4000)  # each about 1,000 tokens
    await summaries(store, summarizer).summary(OWNER, chat_id)
    assert len(summarizer.lengths) == MAX_SUMMARY_CHUNKS
    assert all(3 * BUDGET <= length <= 4 * BUDGET for length in summarizer.lengths)


async def test_a_refresh_starts_over_from_the_rolling_summary() -> None:
    store, summarizer = MemoryStore(), Recording()
    chat_id = await chat_of(store, 60)
    await roll_to(store, chat_id, 50)
    chats = summaries(store, summarizer)
    summary = await chats.summary(OWNER, chat_id, refresh=True)
    assert summarizer.calls == [(("rolled up to 50", []), list(range(51, 61)))]
    assert (summary.up_to_seq, summary.stale) == (60, False)
    await add(store, chat_id, 2)
    await chats.summary(OWNER, chat_id, refresh=True)
    assert summarizer.calls[1:] == [  # anew, not from the cached summary: two chunks
        (("rolled up to 50", []), list(range(51, 61))),
        (("up to 60", ["highlight 60"]), [61, 62]),
    ]


async def test_an_update_builds_on_the_rolling_summary_when_it_covers_more_than_the_cached_one() -> None:
    store, summarizer = MemoryStore(), Recording()
    chat_id = await chat_of(store, 4)
    chats = summaries(store, summarizer)
    await chats.summary(OWNER, chat_id)
    await add(store, chat_id, 80)
    await roll_to(store, chat_id, 80)
    summary = await chats.summary(OWNER, chat_id)
    assert summarizer.calls[-1] == (("rolled up to 80", ["highlight 4"]), [81, 82, 83, 84])
    assert (summary.up_to_seq, summary.stale) == (84, False)


async def test_an_update_takes_a_rate_slot_and_a_current_summary_none() -> None:
    store, summarizer, slots = MemoryStore(), Recording(), Slots(1)
    chat_id = await chat_of(store, 4)
    chats = summaries(store, summarizer, slots)
    await chats.summary(OWNER, chat_id)
    for refresh in (False, True):
        assert not (await chats.summary(OWNER, chat_id, refresh=refresh)).stale
    assert (slots.taken, len(summarizer.calls)) == (1, 1)
    await add(store, chat_id, 2)
    with pytest.raises(RateLimitedError):
        await chats.summary(OWNER, chat_id, refresh=True)
    served = await chats.summary(OWNER, chat_id)  # the cached summary, marked stale
    assert (served.up_to_seq, served.stale, len(summarizer.calls)) == (4, True, 1)
    with pytest.raises(RateLimitedError):
        await chats.summary(OWNER, await chat_of(store, 2))  # nothing cached: the first summary needs the LLM


def test_offline_a_summary_anew_keeps_the_questions_the_rolling_summary_kept() -> None:
    rolled = extractive_condensed(None, [question(1, "How do sourdough starters work at home?")], max_tokens=100)
    _, highlights = extractive_summary((rolled, []), [question(2, "What flour suits rye bread best?")])
    assert highlights == ["How do sourdough starters work at home?", "What flour suits rye bread best?"]


def question(seq: int, text: str) -> Message:
    return Message(f"msg_{seq}", "chat_1", seq, Role.USER, text, utcnow())
