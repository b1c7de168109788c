"""The burst client: many chats post one turn each, all at once, each on its own connection.

It runs in a process of its own on the load core (`python -m bench.burst URL CHATS_FILE`) and
prints one JSON line: the wall time from the first post to the last answer, and how many turns
failed. wrk cannot do this: it keeps a fixed number of connections busy instead of firing a
fixed number of requests at once.
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import uvloop

from bench.client import TURN

TIMEOUT = aiohttp.ClientTimeout(total=120)


async def burst(url: str, chat_ids: list[str]) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:

        async def post(chat_id: str) -> bool:
            async with http.post(f"{url}/chats/{chat_id}/messages", json=TURN) as response:
                await response.read()
                return response.status < 300

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(post(chat_id) for chat_id in chat_ids), return_exceptions=True)
        seconds = time.perf_counter() - started
    failed = sum(outcome is not True for outcome in outcomes)
    return {"seconds": seconds, "turns": len(chat_ids), "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description="Post one turn to every chat at once and time it.")
    parser.add_argument("url")
    parser.add_argument("chats", type=Path, help="a file with one chat id per line")
    args = parser.parse_args()
    chat_ids = args.chats.read_text().split()
    print(json.dumps(uvloop.run(burst(args.url, chat_ids))))


if __name__ == "__main__":
    main()
