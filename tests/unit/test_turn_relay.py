"""The relay on its own: two processes' relays on one broadcast channel that delivers as PostgreSQL's
NOTIFY does (at most once, to every listener, this process included), over one shared store, so
following and stopping a turn that "another process" runs is seen without a database server."""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import orjson
import pytest

from chatkeep.domain import MessageStatus, NewMessage, PageRequest, Role
from chatkeep.idempotency import IdempotencyKeys
from chatkeep.llm import open_llm
from chatkeep.metrics import NoMetrics
from chatkeep.store import MAX_BROADCAST_BYTES, MemoryStore
from chatkeep.turns import relay
from chatkeep.turns.admission import Admission
from chatkeep.turns.engine import NewTurn, TurnEngine
from chatkeep.turns.events import TurnEvent
from chatkeep.turns.queue import TurnQueue
from chatkeep.turns.relay import TurnRelay
from chatkeep.turns.running import RunningTurn, RunningTurns
from tests.support.app import llm_settings
from tests.support.conditions import until
from tests.support.fake_openai import FakeOpenAI, Scripted

OWNER = "alice"


@dataclass
class Channel:
    """A broadcast channel in memory: each message reaches every listener on a later loop step."""

    listeners: list[Callable[[bytes], None]] = field(default_factory=list)
    dropped: Callable[[dict[str, object]], bool] = lambda message: False  # lose the messages this picks
    sent: list[dict[str, object]] = field(default_factory=list)

    async def publish(self, message: bytes) -> None:
        assert len(message) <= MAX_BROADCAST_BYTES
        decoded = orjson.loads(message)
        self.sent.append(decoded)
        if self.dropped(decoded):
            return
        for listener in list(self.listeners):
            asyncio.get_running_loop().call_soon(listener, message)

    def subscribe(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


@dataclass
class Processes:
    """Process A runs turns; process B only relays. Both share the store and the channel."""

    store: MemoryStore
    channel: Channel
    engine: TurnEngine
    admission: Admission
    relay_a: TurnRelay
    relay_b: TurnRelay
    fake: FakeOpenAI
    chat_id: str = ""

    async def start_turn(self, content: str) -> RunningTurn:
        admitted = await self.admission.admit(OWNER, self.chat_id, None)
        turn = self.engine.start(admitted, NewTurn([NewMessage(Role.USER, content)], lambda o: ""))
        await until(lambda: turn.question_id is not None)
        return turn


@pytest.fixture
async def processes(fake_llm: FakeOpenAI) -> AsyncIterator[Processes]:
    store, metrics, channel = MemoryStore(), NoMetrics(), Channel()
    running_a, running_b = RunningTurns(), RunningTurns()
    keys = IdempotencyKeys(store, abandoned_after=timedelta(seconds=15))
    admission = Admission(store, TurnQueue(metrics, max_waiting=8, max_in_flight=64), keys, metrics, rate_limit=None)
    relay_a, relay_b = TurnRelay(channel, running_a, store), TurnRelay(channel, running_b, store)
    relay_a.start()
    relay_b.start()
    async with open_llm(llm_settings(fake_llm), metrics) as llm:
        engine = TurnEngine(store, llm, metrics, running_a, system_prompt="S", budget=8000)
        chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None)
        yield Processes(store, channel, engine, admission, relay_a, relay_b, fake_llm, chat.id)
        await running_a.aclose()
        await relay_a.aclose()
        await relay_b.aclose()


async def followed(batches: AsyncIterator[list[TurnEvent]]) -> list[TurnEvent]:
    return [event async for batch in batches for event in batch]


async def test_another_process_follows_a_turn_live_after_the_last_event_it_saw(processes: Processes) -> None:
    processes.fake.queue(Scripted(content="one two three four five", chunk_delay=0.05))
    turn = await processes.start_turn("count")
    assert turn.question_id is not None
    events = await followed(processes.relay_b.follow(OWNER, processes.chat_id, turn.question_id, "2"))
    assert [event.id for event in events] == ["3", "4", "5", "end"]
    assert "".join(event.text for event in events) == "three four five"
    assert events[-1].message is not None
    assert events[-1].message.content == "one two three four five", "the reply, read from the store by its id"


async def test_another_process_follows_the_pieces_of_a_tool_call_under_its_stored_id(processes: Processes) -> None:
    processes.fake.queue(Scripted(tool_calls=[("lookup", '{"q": "chatkeep"}')], chunk_delay=0.05))
    turn = await processes.start_turn("look it up")
    assert turn.question_id is not None
    events = await followed(processes.relay_b.follow(OWNER, processes.chat_id, turn.question_id, None))
    pieces = [event for event in events if event.kind == "call_delta"]
    assert [(p.call.name, p.call.id) for p in pieces if p.call is not None] == [("lookup", "call_0")] * 3
    assert "".join(p.call.arguments for p in pieces if p.call is not None) == '{"q": "chatkeep"}'
    stored = events[-1].message
    assert stored is not None
    assert stored.item is not None
    assert {p.item_id for p in pieces} == {stored.id}
    assert stored.id.startswith("fc_")


async def test_a_follower_that_lost_forwarded_events_asks_again_and_misses_none(processes: Processes) -> None:
    lost: list[dict[str, object]] = []

    def lose_the_first_batch(message: dict[str, object]) -> bool:
        if message["op"] == "events" and message["events"] and not lost:
            lost.append(message)
            return True
        return False

    processes.channel.dropped = lose_the_first_batch
    processes.fake.queue(Scripted(content="a b c d e f", chunk_delay=0.05))
    turn = await processes.start_turn("letters")
    assert turn.question_id is not None
    await asyncio.sleep(0.12)  # a few deltas are written before anyone follows
    events = await followed(processes.relay_b.follow(OWNER, processes.chat_id, turn.question_id, None))
    assert lost, "a batch was lost on the way"
    assert [event.id for event in events] == ["0", "1", "2", "3", "4", "5", "6", "end"]


async def test_a_large_batch_travels_in_messages_under_the_broadcast_limit(processes: Processes) -> None:
    words = " ".join("x" * 900 for _ in range(30))
    processes.fake.queue(Scripted(content=words, delay=0.2))
    turn = await processes.start_turn("big")
    assert turn.question_id is not None
    await turn.outcome  # ended: its whole log is forwarded at once
    events = await followed(processes.relay_b.follow(OWNER, processes.chat_id, turn.question_id, None))
    assert "".join(event.text for event in events) == words
    forwarded = [m for m in processes.channel.sent if m["op"] == "events" and m["events"]]
    assert len(forwarded) > 1


async def test_another_process_stops_a_reply_and_it_is_stored_so_far(processes: Processes) -> None:
    processes.fake.queue(Scripted(content="w1 w2 w3 w4 w5 w6 w7 w8", chunk_delay=0.1))
    turn = await processes.start_turn("long")
    assert turn.question_id is not None
    assert turn.events is not None
    events = turn.events
    await until(lambda: any(event.kind == "delta" for event in events.events))
    assert await processes.relay_b.stop(OWNER, processes.chat_id, turn.question_id)
    page = await processes.store.list_messages(OWNER, processes.chat_id, PageRequest())
    assert page.data[-1].status is MessageStatus.INCOMPLETE


async def test_a_turn_no_process_answers_for_ends_as_the_store_says(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "FIRST_ANSWER_SECONDS", 0.05)
    monkeypatch.setattr(relay, "STOP_ANSWER_SECONDS", 0.2)
    question = await processes.store.append_message(OWNER, processes.chat_id, NewMessage(Role.USER, "orphan"))
    events = await followed(processes.relay_b.follow(OWNER, processes.chat_id, question.id, "1"))
    assert [(event.id, event.kind) for event in events] == [("end", "error")]
    assert events[0].error is not None
    assert events[0].error.slug == "reply-not-found"
    assert not await processes.relay_b.stop(OWNER, processes.chat_id, question.id)
