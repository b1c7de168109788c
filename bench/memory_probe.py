"""Memory per stored message in chatkeep's memory store, measured in a fresh process.

Turns go through the real `ChatService` on a `MemoryStore` with the offline LLM, across many
chats. What the process grew by, minus the stored text itself (the characters' payload as
CPython keeps it: one, two or four bytes a character), over the messages stored, is what the
store spends per message on everything else: objects, ids, timestamps, usage, indexes.
`python -m bench.memory_probe [--turns N]` prints one JSON line.
"""

import argparse
import asyncio
import gc
import json

import psutil

from chatkeep.config import Settings
from chatkeep.llm import OfflineLLM
from chatkeep.metrics import NoMetrics
from chatkeep.service import ChatService
from chatkeep.store import MemoryStore

OWNER = "bench"
CHATS = 1000
QUESTION = "Hello! Please summarize what a benchmark of a chat relay should measure, turn {}."


def payload_bytes(text: str) -> int:
    """Bytes of `text`'s characters in memory (PEP 393), without the string object's header."""
    widest = max(map(ord, text), default=0)
    return len(text) * (1 if widest < 0x100 else 2 if widest < 0x10000 else 4)


async def probe(turns: int) -> dict[str, float]:
    store = MemoryStore()
    service = ChatService(store, OfflineLLM(), Settings(llm_provider="offline"), NoMetrics())
    chats = [await service.create_chat(OWNER, title=None, metadata={}, system_prompt=None) for _ in range(CHATS)]
    gc.collect()
    before = psutil.Process().memory_info().rss
    for turn in range(turns):
        await service.post_message(OWNER, chats[turn % CHATS].id, QUESTION.format(turn))
    gc.collect()
    grown = psutil.Process().memory_info().rss - before
    messages = content = 0
    for chat in chats:
        stored = await store.recent_messages(OWNER, chat.id, limit=2 * turns)
        messages += len(stored)
        content += sum(payload_bytes(message.content) for message in stored)
    return {
        "turns": turns,
        "messages": messages,
        "rss_growth_bytes": grown,
        "content_bytes": content,
        "bytes_per_message": grown / messages,
        "beyond_content_per_message": (grown - content) / messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure memory per stored message in the memory store.")
    parser.add_argument("--turns", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(probe(args.turns))))


if __name__ == "__main__":
    main()
