"""Memory per stored message in chatkeep's memory store, measured in a fresh process.

Turns go through the real `ChatService` on a `MemoryStore` across many chats, each answered with
the reply every other measure's fake LLM writes (`bench.fake_llm.REPLY_TEXT`). What the process
grew by, minus the stored text itself (the characters' payload as CPython keeps it: one, two or
four bytes a character), over the messages stored, is what the store spends per message on
everything else: objects, ids, timestamps, usage, indexes.

The reply is fixed here rather than the offline provider's: that one explains itself at length,
and when its wording grew past 512 characters the measure grew by 31 bytes a message with no change
to the store, for CPython hands a string over 512 bytes to malloc, whose bookkeeping and rounding
cost more than its small-object allocator's (so a long reply costs a few tens of bytes more than
this measures, whatever stores it).
`python -m bench.memory_probe [--turns N]` prints one JSON line.
"""

import argparse
import asyncio
import gc
import json
from collections.abc import AsyncGenerator, Sequence

import psutil

from bench.fake_llm import REPLY_TEXT
from chatkeep.config import Settings
from chatkeep.domain import PromptMessage, Usage
from chatkeep.llm.base import NO_OPTIONS, CallOptions, Reply, StreamItem
from chatkeep.metrics import NoMetrics
from chatkeep.service import ChatService
from chatkeep.store import MemoryStore

OWNER = "bench"
CHATS = 1000
QUESTION = "Hello! Please summarize what a benchmark of a chat relay should measure, turn {}."


class FixedReply:
    """An LLM that answers every prompt with the bench's reply, in no time."""

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        return Reply(REPLY_TEXT, model="bench", usage=Usage(len(prompt), len(REPLY_TEXT.split())))

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[StreamItem, None]:
        yield await self.complete(prompt, options)


def payload_bytes(text: str) -> int:
    """Bytes of `text`'s characters in memory (PEP 393), without the string object's header."""
    widest = max(map(ord, text), default=0)
    return len(text) * (1 if widest < 0x100 else 2 if widest < 0x10000 else 4)


async def probe(turns: int) -> dict[str, float]:
    store = MemoryStore()
    service = ChatService(store, FixedReply(), Settings(llm_provider="offline"), NoMetrics())
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
