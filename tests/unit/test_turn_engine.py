"""The turn engine on its own: the memory store, the real OpenAI-compatible client and the fake
upstream, with no HTTP in front, so each kind of turn and each way a turn ends is seen directly."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from chatkeep.domain import MessageStatus, NewMessage, PageRequest, Role
from chatkeep.errors import LLMBadResponseError
from chatkeep.idempotency import IdempotencyKey, IdempotencyKeys
from chatkeep.llm import open_llm
from chatkeep.metrics import NoMetrics
from chatkeep.store import MemoryStore
from chatkeep.turns.admission import Admission
from chatkeep.turns.engine import Chain, NewTurn, TurnEngine, unstored
from chatkeep.turns.events import TurnEvent, TurnOutcome
from chatkeep.turns.queue import TurnQueue
from chatkeep.turns.running import RunningTurn, RunningTurns
from tests.support.app import llm_settings
from tests.support.conditions import until
from tests.support.fake_openai import FakeOpenAI, Scripted

OWNER = "alice"


@dataclass
class Parts:
    store: MemoryStore
    running: RunningTurns
    admission: Admission
    engine: TurnEngine
    fake: FakeOpenAI

    async def new_chat(self) -> str:
        return (await self.store.create_chat(OWNER, title=None, metadata={}, system_prompt="S")).id

    async def streaming(self, chat_id: str, reply: str, *, chunk_delay: float, deltas: int) -> RunningTurn:
        """A streamed turn whose upstream writes `reply` a word every `chunk_delay` s, once `deltas` of them came."""
        self.fake.queue(Scripted(content=reply, chunk_delay=chunk_delay))
        turn = self.engine.start(await self.admission.admit(OWNER, chat_id, None), ask("go on"))
        events = turn.events
        assert events is not None
        await until(lambda: sum(event.kind == "delta" for event in events.events) >= deltas)
        return turn

    async def contents(self, chat_id: str) -> list[tuple[str, str, MessageStatus]]:
        page = await self.store.list_messages(OWNER, chat_id, PageRequest(limit=100))
        return [(message.role.value, message.content, message.status) for message in page.data]


@pytest.fixture
async def parts(fake_llm: FakeOpenAI) -> AsyncIterator[Parts]:
    store, metrics, running = MemoryStore(), NoMetrics(), RunningTurns()
    keys = IdempotencyKeys(store, abandoned_after=timedelta(seconds=15))
    admission = Admission(store, TurnQueue(metrics, max_waiting=8, max_in_flight=64), keys, metrics, rate_limit=None)
    async with open_llm(llm_settings(fake_llm), metrics) as llm:
        engine = TurnEngine(store, llm, metrics, running, system_prompt="default", budget=8000)
        yield Parts(store, running, admission, engine, fake_llm)
        await running.aclose()


def ask(content: str) -> NewTurn:
    return NewTurn([NewMessage(Role.USER, content)], lambda outcome: outcome.outputs[0].id)


async def all_events(batches: AsyncIterator[list[TurnEvent]]) -> list[TurnEvent]:
    return [event async for batch in batches for event in batch]


async def test_a_streamed_turn_writes_its_events_to_its_record_and_is_found_by_its_question(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    parts.fake.queue(Scripted(content="one two three", chunk_delay=0.05))
    turn = parts.engine.start(await parts.admission.admit(OWNER, chat_id, None), ask("count"))
    assert turn.events is not None
    await until(lambda: turn.question_id is not None)
    assert parts.running.find(turn.question_id or "") is turn, "running: found by the question it answers"
    events = await all_events(turn.events.follow())
    outcome = await turn.outcome
    assert [event.kind for event in events] == ["user_message", "delta", "delta", "delta", "assistant_message"]
    assert [event.id for event in events] == ["0", "1", "2", "3", "end"]
    assert "".join(event.text for event in events) == "one two three"
    assert events[-1].outcome is outcome
    assert outcome.outputs[0].content == "one two three"
    assert parts.running.find(outcome.inputs[0].id) is turn, "ended: still readable a while"
    assert await parts.contents(chat_id) == [
        ("user", "count", MessageStatus.COMPLETED),
        ("assistant", "one two three", MessageStatus.COMPLETED),
    ]


async def test_a_stopped_reply_keeps_what_was_written_marked_incomplete(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    turn = await parts.streaming(chat_id, "a b c d e f g h", chunk_delay=0.1, deltas=2)
    outcome = await turn.stop()
    reply = outcome.outputs[0]
    assert reply.status is MessageStatus.INCOMPLETE
    assert reply.content
    assert "a b c d e f g h".startswith(reply.content)
    assert turn.events is not None
    assert turn.events.events[-1].kind == "assistant_message"
    assert (await parts.contents(chat_id))[-1] == ("assistant", reply.content, MessageStatus.INCOMPLETE)


async def test_items_appended_without_a_reply_call_no_model(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    items = [NewMessage(Role.USER, "first"), NewMessage(Role.ASSISTANT, "second")]
    outcome = await parts.engine.run(
        await parts.admission.admit(OWNER, chat_id, None), NewTurn(items, lambda o: "", answered=False)
    )
    assert ([m.content for m in outcome.inputs], outcome.outputs, outcome.reply) == (["first", "second"], [], None)
    assert [content for _, content, _ in await parts.contents(chat_id)] == ["first", "second"]
    assert parts.fake.requests == []


async def test_a_turn_on_no_chat_is_answered_from_its_chain_and_stores_nothing(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    inputs = [unstored(NewMessage(Role.USER, "and then?"))]
    prompt = [{"role": "system", "content": "chain"}, {"role": "user", "content": "and then?"}]
    chained = NewTurn([NewMessage(Role.USER, "and then?")], lambda o: "", chain=Chain(inputs, prompt))  # type: ignore[arg-type]
    outcome = await parts.engine.run(await parts.admission.admit(OWNER, None, None), chained)
    assert outcome.inputs == inputs
    assert outcome.outputs[0].content == "echo: and then?"
    assert outcome.outputs[0].chat_id == ""
    assert parts.fake.prompts == [prompt]
    assert await parts.contents(chat_id) == []


async def test_the_key_is_settled_once_however_the_turn_ends(parts: Parts) -> None:
    """A reply that failed leaves its question for the retry to answer; the answer is then replayed."""
    chat_id = await parts.new_chat()
    key = IdempotencyKey("retry-me", "fingerprint")
    parts.fake.queue(Scripted(status=400))
    with pytest.raises(LLMBadResponseError) as failed:
        await parts.engine.run(await parts.admission.admit(OWNER, chat_id, key), ask("hello"))
    question_id = failed.value.user_message_id
    retried = await parts.engine.run(await parts.admission.admit(OWNER, chat_id, key), ask("hello"))
    assert retried.inputs[0].id == question_id, "the retry answered the stored question"
    replayed = await parts.admission.admit(OWNER, chat_id, key)
    assert replayed.replay == retried.outputs[0].id
    assert [content for _, content, _ in await parts.contents(chat_id)] == ["hello", "echo: hello"]


async def test_shutdown_stops_a_streamed_reply_and_stores_it_so_far(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    turn = await parts.streaming(chat_id, "w1 w2 w3 w4 w5 w6", chunk_delay=0.2, deltas=1)
    await parts.running.aclose()
    outcome: TurnOutcome = turn.outcome.result()
    assert outcome.outputs[0].status is MessageStatus.INCOMPLETE
    assert turn.events is not None
    assert turn.events.done
    assert (await parts.contents(chat_id))[-1][2] is MessageStatus.INCOMPLETE


async def test_turns_on_one_chat_run_in_order_each_reply_after_its_question(parts: Parts) -> None:
    chat_id = await parts.new_chat()
    parts.fake.latency = 0.02
    admitted = [await parts.admission.admit(OWNER, chat_id, None) for _ in range(5)]
    await asyncio.gather(*(parts.engine.run(a, ask(f"q{n}")) for n, a in enumerate(admitted)))
    assert [content for _, content, _ in await parts.contents(chat_id)] == [
        text for n in range(5) for text in (f"q{n}", f"echo: q{n}")
    ]
