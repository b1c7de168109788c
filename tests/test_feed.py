"""A feed's followers: every event in order, and a keep-alive only after a quiet spell."""

import asyncio
from collections.abc import AsyncGenerator

from chatkeep.turns.feed import Feed

QUIET = 0.05


async def follow(feed: Feed[int], **options: float) -> list[list[int]]:
    return [batch async for batch in feed.follow_from(0, **options)]


async def first(batches: AsyncGenerator[list[int], None]) -> list[int]:
    return await anext(batches)


async def test_a_follower_sees_every_event_in_order_then_the_end() -> None:
    feed: Feed[int] = Feed()
    follower = asyncio.create_task(follow(feed, keepalive=10))
    for n in range(5):
        feed.push(n)
        await asyncio.sleep(0)
    feed.push(5, last=True)
    batches = await follower
    assert [event for batch in batches for event in batch] == list(range(6))
    assert all(batches)


async def test_an_idle_follower_gets_a_keep_alive_each_quiet_spell() -> None:
    feed: Feed[int] = Feed()
    follower = asyncio.create_task(follow(feed, keepalive=QUIET))
    await asyncio.sleep(QUIET * 3.5)
    feed.push(1, last=True)
    batches = await follower
    assert batches[:-1] == [[], [], []]
    assert batches[-1] == [1]


async def test_events_closer_than_the_keep_alive_leave_no_room_for_one() -> None:
    feed: Feed[int] = Feed()
    follower = asyncio.create_task(follow(feed, keepalive=QUIET * 2))
    for n in range(8):
        await asyncio.sleep(QUIET)
        feed.push(n)
    feed.close()
    batches = await follower
    assert [] not in batches
    assert [event for batch in batches for event in batch] == list(range(8))


async def test_a_closed_follower_leaves_no_timer_behind() -> None:
    feed: Feed[int] = Feed()
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    followers = [feed.follow_from(0, keepalive=QUIET) for _ in range(10)]
    waits = [asyncio.create_task(first(follower)) for follower in followers]
    await asyncio.sleep(0)
    feed.push(1)
    for wait, follower in zip(waits, followers, strict=True):
        assert await wait == [1]
        await follower.aclose()
    assert sum(not handle.cancelled() for handle in loop._scheduled) <= before  # type: ignore[attr-defined]
