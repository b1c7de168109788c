"""The small aiohttp client the benchmark sets up with: creating chats, filling them, timing turns.

Everything here is light work off the server's core (the benchmark process runs on the load
core); the heavy, timed load comes from wrk and `bench.burst`, in processes of their own.
"""

import asyncio
import time
from collections.abc import Iterable

import aiohttp
import orjson

TURN = {"content": "Hello! Please summarize what a benchmark of a chat relay should measure."}
SETUP_CONNECTIONS = 32
STREAM_EVENTS = ("user_message", "delta", "assistant_message")
TIMEOUT = aiohttp.ClientTimeout(total=60)


def session(*, connections: int = SETUP_CONNECTIONS) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=TIMEOUT)


async def create_chats(url: str, count: int) -> list[str]:
    async with session() as http:
        limit = asyncio.Semaphore(SETUP_CONNECTIONS)

        async def create() -> str:
            async with limit, http.post(url + "/chats", json={}) as response:
                response.raise_for_status()
                chat_id: str = orjson.loads(await response.read())["id"]
                return chat_id

        return list(await asyncio.gather(*(create() for _ in range(count))))


async def post_turn(http: aiohttp.ClientSession, url: str, chat_id: str) -> float:
    """Seconds one turn took, from sending to the whole answer; raises on a non-2xx answer."""
    started = time.perf_counter()
    async with http.post(f"{url}/chats/{chat_id}/messages", json=TURN) as response:
        await response.read()
        response.raise_for_status()
    return time.perf_counter() - started


async def fill_chats(url: str, chat_ids: Iterable[str], turns: int) -> None:
    """Post `turns` turns to each chat: one after another in a chat, the chats side by side."""
    async with session() as http:

        async def fill(chat_id: str) -> None:
            for _ in range(turns):
                await post_turn(http, url, chat_id)

        await asyncio.gather(*(fill(chat_id) for chat_id in chat_ids))


async def turn_latencies(url: str, chat_ids: list[str], rounds: int) -> list[float]:
    """Seconds of each of `rounds` sequential turns on every chat, round-robin."""
    async with session(connections=1) as http:
        return [await post_turn(http, url, chat_id) for _ in range(rounds) for chat_id in chat_ids]


async def streaming_gap(url: str) -> str | None:
    """Why `url` cannot stream a turn (a short reason), or None when it answers SSE turns."""
    chat_id = (await create_chats(url, 1))[0]
    async with (
        session() as http,
        http.post(f"{url}/chats/{chat_id}/messages", json={**TURN, "stream": True}) as response,
    ):
        kind = response.headers.get("Content-Type", "")
        body = await response.read()
    if response.status >= 300 or not kind.startswith("text/event-stream"):
        return f"answered {response.status} {kind.split(';')[0] or 'without a type'}"
    events = [line[6:].strip() for line in body.decode(errors="replace").splitlines() if line.startswith("event:")]
    names = [event for event in STREAM_EVENTS if event in events]
    if names != list(STREAM_EVENTS) or events[0] != STREAM_EVENTS[0] or events[-1] != STREAM_EVENTS[-1]:
        return f"SSE without the expected events (got {sorted(set(events))})"
    return None


FIFO_TURNS = 8  # a page of messages holds them all (the API's default page is 20)


async def fifo_breaches(url: str, chat_ids: list[str], turns: int = FIFO_TURNS) -> int:
    """Chats whose stored turns are not in the order one writer posted them: each chat gets
    `turns` numbered questions, one after another, each on a new connection (so under
    `--workers N` any worker may take it), all chats at once; then each chat must read back
    question 0, its reply, question 1, its reply..., with seqs 1, 2, 3..."""
    connector = aiohttp.TCPConnector(limit=SETUP_CONNECTIONS, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:

        async def write(chat_id: str) -> bool:
            for n in range(turns):
                async with http.post(f"{url}/chats/{chat_id}/messages", json={"content": f"fifo {n}"}) as response:
                    await response.read()
                    if response.status != 201:
                        return False
            async with http.get(f"{url}/chats/{chat_id}/messages", params={"limit": str(2 * turns)}) as response:
                stored = orjson.loads(await response.read())["data"]
            expected = [(seq, "user" if seq % 2 else "assistant") for seq in range(1, 2 * turns + 1)]
            questions = [message["content"] for message in stored if message["role"] == "user"]
            in_order = [(message["seq"], message["role"]) for message in stored] == expected
            return in_order and questions == [f"fifo {n}" for n in range(turns)]

        held = await asyncio.gather(*(write(chat_id) for chat_id in chat_ids))
    return held.count(False)
