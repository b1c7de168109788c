"""Finding a turn wherever it is, to resume its events or stop its reply.

Behind a load balancer a client's next request lands on any process. A turn is looked for here
first (running, or streamed and ended lately: `RunningTurns`), then, when processes share the
store's broadcast channel (PostgreSQL), in the process that runs it (`TurnRelay`), and last in
the store, which knows how it ended: its stored reply, or none. A turn known by a name of its
own (a background response's id) is found the same way, by that name, even before it runs.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from chatkeep.domain import Message
from chatkeep.errors import TurnNotRunningError
from chatkeep.store import ChatStore
from chatkeep.turns.events import END_ID, TurnEvent, stored_end
from chatkeep.turns.relay import TurnRelay
from chatkeep.turns.running import RunningTurns


class TurnLocator:
    def __init__(self, store: ChatStore, running: RunningTurns, relay: TurnRelay | None) -> None:
        self._store = store
        self._running = running
        self._relay = relay  # None: no other process can run this store's turns

    async def events_after(
        self, owner: str, chat_id: str, question_id: str, last_event_id: str | None
    ) -> AsyncGenerator[list[TurnEvent], None]:
        """The events of the turn answering `question_id` after `last_event_id`: live while it runs,
        ending with its final event whatever id the client last saw.

        Raises ChatNotFoundError, or MessageNotFoundError when the chat has no such message,
        before anything streams.
        """
        await self._store.get_chat(owner, chat_id)
        turn = self._running.find(question_id)
        if turn is not None and turn.events is not None and turn.chat_id == chat_id:
            return turn.events.follow(last_event_id)
        ended = await stored_end(self._store, owner, chat_id, question_id)
        if ended.kind == "assistant_message" or self._relay is None:
            return _once(ended, last_event_id)
        return self._relay.follow(owner, chat_id, question_id, last_event_id)

    async def stop(self, owner: str, chat_id: str, question_id: str) -> Message:
        """Stop the reply to `question_id` where it is written and answer the stored reply: the
        text written so far, marked incomplete.

        Raises ChatNotFoundError or MessageNotFoundError, or TurnNotRunningError when no reply to
        that message is being written (it ended, failed, or its server is gone).
        """
        await self._store.get_message(owner, chat_id, question_id)
        turn = self._running.find(question_id)
        if turn is not None and turn.chat_id == chat_id and not turn.over:
            return (await asyncio.shield(turn.stop())).outputs[0]
        # Another process may be writing it, unless its reply is stored already: then it has ended,
        # and asking the others would only wait out their silence.
        if (
            self._relay is not None
            and (await stored_end(self._store, owner, chat_id, question_id)).message is None
            and await self._relay.stop(owner, chat_id, question_id)
        ):
            ended = await stored_end(self._store, owner, chat_id, question_id)
            if ended.message is not None:
                return ended.message
        raise TurnNotRunningError(f"no reply to {question_id!r} is being written; it has ended or failed")

    def events_of(self, owner: str, name: str) -> AsyncIterator[list[TurnEvent]] | None:
        """All the events of the turn known as `name`, from its first, live until its last: from
        this process's record of it, else relayed from the process that runs it (they stop, with
        no final event, when none answers). None when no other process can run it: then the
        caller's own record must say how it went."""
        turn = self._running.find(name)
        if turn is not None and turn.events is not None:
            return turn.events.follow()
        if self._relay is not None:
            return self._relay.follow(owner, None, name, None)
        return None

    async def cancel(self, owner: str, name: str) -> bool:
        """Cancel the turn known as `name` wherever it runs (`RunningTurn.cancel`): True once it
        has ended, what it wrote stored; False when no process answers for it."""
        turn = self._running.find(name)
        if turn is not None:
            if not turn.over:
                with contextlib.suppress(TurnNotRunningError):  # it ended before its reply began
                    await asyncio.shield(turn.cancel())
            return True
        return self._relay is not None and await self._relay.stop(owner, None, name, cancel=True)


async def _once(event: TurnEvent, last_event_id: str | None) -> AsyncGenerator[list[TurnEvent], None]:
    if last_event_id != END_ID:
        yield [event]
