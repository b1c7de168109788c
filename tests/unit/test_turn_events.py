"""A turn's events as readers follow them: every event in order, and a keep-alive only after a quiet spell."""

import asyncio
from collections.abc import AsyncGenerator

from chatkeep.domain import Message, Role, utcnow
from chatkeep.errors import ChatkeepError
from chatkeep.turns.events import TurnEvent, TurnEvents

QUIET = 0.05


async def follow(events: TurnEvents, keepalive: float) -> list[list[str]]:
    return [[event.text or event.id for event in batch] async for batch in events.follow(keepalive=keepalive)]


async def first(batches: AsyncGenerator[list[TurnEvent], None]) -> list[str]:
    return [event.text for event in await anext(batches)]


def end(events: TurnEvents) -> None:
    events.failed(ChatkeepError("the end"))


async def test_a_reader_sees_every_event_in_order_then_the_end() -> None:
    events = TurnEvents()
    reader = asyncio.create_task(follow(events, keepalive=10))
    for n in range(5):
        events.delta(f"d{n}")
        await asyncio.sleep(0)
    end(events)
    batches = await reader
    assert [text for batch in batches for text in batch] == [f"d{n}" for n in range(5)] + ["end"]
    assert all(batches)


async def test_a_reader_after_an_id_gets_what_came_after_it_and_always_the_end() -> None:
    events = TurnEvents()
    events.user_message(Message("msg_1", "chat_1", 1, Role.USER, "q", utcnow()))
    for n in range(5):
        events.delta(f"d{n}")
    end(events)
    assert await follow(events, keepalive=10) == [["0", "d0", "d1", "d2", "d3", "d4", "end"]]
    assert await follow_after(events, "3") == [["d3", "d4", "end"]]
    assert await follow_after(events, "99") == [["end"]]
    assert await follow_after(events, "end") == []


async def follow_after(events: TurnEvents, last_event_id: str) -> list[list[str]]:
    return [[event.text or event.id for event in batch] async for batch in events.follow(last_event_id)]


async def test_an_idle_reader_gets_a_keep_alive_each_quiet_spell() -> None:
    events = TurnEvents()
    reader = asyncio.create_task(follow(events, keepalive=QUIET))
    await asyncio.sleep(QUIET * 3.5)
    end(events)
    batches = await reader
    assert batches[:-1] == [[], [], []]
    assert batches[-1] == ["end"]


async def test_events_closer_than_the_keep_alive_leave_no_room_for_one() -> None:
    events = TurnEvents()
    reader = asyncio.create_task(follow(events, keepalive=QUIET * 2))
    for n in range(8):
        await asyncio.sleep(QUIET)
        events.delta(f"d{n}")
    end(events)
    batches = await reader
    assert [] not in batches
    assert [text for batch in batches for text in batch] == [f"d{n}" for n in range(8)] + ["end"]


async def test_a_closed_reader_leaves_no_timer_behind() -> None:
    events = TurnEvents()
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    readers = [events.follow(keepalive=QUIET) for _ in range(10)]
    waits = [asyncio.create_task(first(reader)) for reader in readers]
    await asyncio.sleep(0)
    events.delta("d")
    for wait, reader in zip(waits, readers, strict=True):
        assert await wait == ["d"]
        await reader.aclose()
    assert sum(not handle.cancelled() for handle in loop._scheduled) <= before  # type: ignore[attr-defined]
