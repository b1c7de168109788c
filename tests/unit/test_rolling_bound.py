"""A rolling summary update makes a bounded number of LLM calls however far behind the summary
is; the next update goes on from where it stopped."""

import asyncio
from collections.abc import Sequence

from chatkeep.domain import Message, NewMessage, Role
from chatkeep.metrics import NoMetrics
from chatkeep.store.memory.store import MemoryStore
from chatkeep.summaries.rolling import MAX_UPDATE_BATCHES, RollingSummaries
from chatkeep.summaries.summarizer import SummaryDraft

OWNER = "owner"


class Condensing:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        raise AssertionError("a rolling summary never summarizes for people")

    async def condense(self, previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
        self.batches.append([message.seq for message in messages])
        return f"up to {messages[-1].seq}"


async def test_an_update_of_a_long_backlog_makes_the_bounded_number_of_calls_then_the_next_goes_on() -> None:
    store, summarizer = MemoryStore(), Condensing()
    items = [NewMessage(Role.USER, f"item {n} " + "x" * 3000) for n in range(60)]  # each about 750 tokens
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None, messages=items)
    rolling = RollingSummaries(store, summarizer, NoMetrics(), budget=1000, summarize_at=0.75, summary_tokens=250)
    rolling.want(OWNER, chat.id)
    await asyncio.gather(*rolling._updating.values())
    assert len(summarizer.batches) == MAX_UPDATE_BATCHES  # not one per item: 59 before
    first = await store.get_rolling_summary(OWNER, chat.id)
    assert first is not None
    assert first.up_to_seq == summarizer.batches[-1][-1]
    rolling.want(OWNER, chat.id)
    await asyncio.gather(*rolling._updating.values())
    assert len(summarizer.batches) == 2 * MAX_UPDATE_BATCHES
    assert summarizer.batches[MAX_UPDATE_BATCHES][0] == first.up_to_seq + 1
