"""What only the memory store promises about turns: on an idle chat, taking and giving back a
ticket waits for nothing and allocates no waiter (it is the benchmark's hot path)."""

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from chatkeep.domain import NewMessage, Role
from chatkeep.store import MemoryStore

OWNER = "alice"


def run_at_once(step: Coroutine[Any, Any, Any]) -> Any:
    """What `step` returns when it runs to its end without suspending once; fails if it suspends."""
    with pytest.raises(StopIteration) as ended:
        step.send(None)
    return ended.value.value


async def test_a_turn_on_an_idle_chat_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt="S")

    def no_waiter() -> None:
        raise AssertionError("a turn on an idle chat allocated a waiter")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_future", no_waiter)
    for n in range(3):
        lease = store.turn_lease(OWNER, chat.id, question=f"q{n}")
        ticket = run_at_once(lease.__aenter__())
        assert ticket.question is not None
        assert (ticket.question.content, ticket.system_prompt) == (f"q{n}", "S")
        reply = NewMessage(Role.ASSISTANT, f"a{n}")
        await store.append_message(OWNER, chat.id, reply, ticket=ticket, ends_turn=n % 2 == 0)
        run_at_once(lease.__aexit__(None, None, None))
    assert (await store.get_chat(OWNER, chat.id)).message_count == 6
