"""Per-chat turn taking: one turn at a time on a chat, in arrival order, with bounded waiting.

Each chat that has a turn running gets a line (an `asyncio.Lock`, whose waiters are woken in
FIFO order); chats never share a line, so they never wait for each other. A line exists only
while someone holds or waits on it, so idle chats cost nothing.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from chatkeep.errors import ChatBusyError

BUSY_RETRY_AFTER_SECONDS = 1.0


@dataclass(slots=True)
class _Line:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    members: int = 0  # the holder plus the waiters


class TurnQueue:
    def __init__(self, *, max_waiting: int) -> None:
        self._max_waiting = max_waiting
        self._lines: dict[str, _Line] = {}

    @asynccontextmanager
    async def turn(self, chat_id: str) -> AsyncIterator[None]:
        """Hold `chat_id`'s turn for the block. Raises ChatBusyError when too many already wait."""
        line = self._lines.get(chat_id)
        if line is None:
            line = self._lines[chat_id] = _Line()
        elif line.members > self._max_waiting:
            raise ChatBusyError(
                f"{line.members - 1} turns already wait on chat {chat_id!r}; retry later",
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        line.members += 1
        try:
            async with line.lock:
                yield
        finally:
            line.members -= 1
            if line.members == 0:
                del self._lines[chat_id]

    def waiting(self, chat_id: str) -> int:
        """How many turns wait (not counting the one running) on the chat."""
        line = self._lines.get(chat_id)
        return max(0, line.members - 1) if line else 0
