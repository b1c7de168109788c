"""TurnQueue on its own: FIFO per chat, bounded waiting, nothing kept for idle chats."""

import asyncio

import pytest

from chatkeep.errors import ChatBusyError
from chatkeep.metrics import NoMetrics
from chatkeep.turns.queue import TurnQueue


async def test_turns_on_one_chat_run_one_at_a_time_in_arrival_order() -> None:
    queue = TurnQueue(NoMetrics(), max_waiting=10, max_in_flight=100)
    order: list[int] = []
    running = 0

    async def turn(n: int) -> None:
        nonlocal running
        async with queue.join("chat", "alice"):
            running += 1
            assert running == 1
            await asyncio.sleep(0.001 * (5 - n % 5))
            order.append(n)
            running -= 1

    await asyncio.gather(*(turn(n) for n in range(10)))
    assert order == list(range(10))


async def test_different_chats_run_at_once() -> None:
    queue = TurnQueue(NoMetrics(), max_waiting=0, max_in_flight=100)
    inside = asyncio.Event()
    both = 0

    async def turn(chat: str) -> None:
        nonlocal both
        async with queue.join(chat, "alice"):
            both += 1
            if both == 2:
                inside.set()
            await asyncio.wait_for(inside.wait(), 1)

    await asyncio.gather(turn("a"), turn("b"))


async def test_waiting_is_bounded_and_the_line_is_dropped_when_idle() -> None:
    queue = TurnQueue(NoMetrics(), max_waiting=2, max_in_flight=100)
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.join("chat", "alice"):
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(3)]
    await asyncio.sleep(0)
    assert queue.waiting("chat") == 2
    with pytest.raises(ChatBusyError) as busy:
        async with queue.join("chat", "alice"):
            pass
    assert busy.value.retry_after == 1.0
    release.set()
    await asyncio.gather(*tasks)
    assert queue.waiting("chat") == 0
    assert queue._queues == {}


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    queue = TurnQueue(NoMetrics(), max_waiting=1, max_in_flight=100)
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.join("chat", "alice"):
            await release.wait()

    holder = asyncio.create_task(hold())
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert queue.waiting("chat") == 0
    release.set()
    await holder
    assert queue._queues == {}
