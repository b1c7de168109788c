"""The turns this process runs: one record each, and the registry that stop, resume, the relay
to other processes and shutdown all read.

A `RunningTurn` is made when a turn is admitted and holds everything about it while it runs:
the task, its events (when someone streams it), its ticket on the chat, the stop request and
the future of its outcome. The turn's task is its only writer. `RunningTurns` finds a record by
the id of the question the turn answers (known once the question is stored), or by a name given
from the start (a background response's id, known while the turn still waits), keeps a streamed
turn's record a while after it ends so a late reader can still follow its events, and owns the
background tasks of turns nobody waits for, so shutdown can stop them and wait for what they store.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from chatkeep.domain import Message
from chatkeep.errors import TurnNotRunningError
from chatkeep.store import TurnTicket
from chatkeep.turns.events import TurnEvents, TurnOutcome

log = logging.getLogger(__name__)

KEEP_ENDED_SECONDS = 300.0
KEEP_ENDED_COUNT = 1000


class RunningTurn:
    """One turn, from admission to its end."""

    __slots__ = ("chat_id", "events", "name", "outcome", "question_id", "replying", "stop_requested", "task", "ticket")

    def __init__(self, chat_id: str, events: TurnEvents | None) -> None:
        self.chat_id = chat_id
        self.events = events  # None: nobody streams this turn
        self.question_id: str | None = None  # the stored message it answers, once stored
        self.name: str | None = None  # what else it is found by (`RunningTurns.known_as`)
        self.ticket: TurnTicket | None = None  # its hold on the chat's turn, while held
        self.task: asyncio.Task[Any] | None = None
        self.outcome: asyncio.Future[TurnOutcome] = asyncio.get_running_loop().create_future()
        self.replying = False  # in the part a stop may cut short
        self.stop_requested = False

    @property
    def over(self) -> bool:
        return self.outcome.done()

    def answered(self, outcome: TurnOutcome) -> None:
        """The turn ended with its reply stored: its outcome is known, and its final event written."""
        self.outcome.set_result(outcome)
        if self.events is not None:
            self.events.answered(outcome)

    def failed(self) -> None:
        """The turn ended without its reply (its events get their final error from whoever runs it)."""
        self.outcome.set_exception(TurnNotRunningError(f"the turn answering {self.question_id!r} failed"))
        self.outcome.exception()  # retrieved: nobody need wait for it

    def stop(self) -> "asyncio.Future[TurnOutcome]":
        """Cut the reply short where it is (what was written is stored, marked incomplete); the
        future of the stored outcome. A turn not yet replying, or already stopped, is left alone."""
        if self.replying and not self.stop_requested and self.task is not None:
            self.stop_requested = True
            self.task.cancel()
        return self.outcome

    def cancel(self) -> "asyncio.Future[TurnOutcome]":
        """Stop the turn wherever it is: a reply being written as `stop` does; a turn still waiting
        for its chat ends there, having stored nothing (its outcome then fails, TurnNotRunningError).
        A turn between the two (its inputs stored, its reply not begun) goes on."""
        if self.question_id is None and not self.over and not self.stop_requested and self.task is not None:
            self.stop_requested = True
            self.task.cancel()
            return self.outcome
        return self.stop()


class RunningTurns:
    def __init__(self) -> None:
        self._running: dict[str, RunningTurn] = {}  # by question id
        self._ended: OrderedDict[str, tuple[float, RunningTurn]] = OrderedDict()  # streamed ones, oldest first
        self._tasks: set[asyncio.Task[None]] = set()

    def answering(self, turn: RunningTurn, question: Message) -> None:
        """The turn's question is stored: it can be found by its id from now on, and its stream starts with it."""
        turn.question_id = question.id
        self._running[question.id] = turn
        if turn.events is not None:
            turn.events.user_message(question)

    def known_as(self, turn: RunningTurn, name: str) -> None:
        """Find `turn` by `name` too, from now on: while it waits for its chat, runs, and (streamed) a while after."""
        turn.name = name
        self._running[name] = turn

    def ended(self, turn: RunningTurn) -> None:
        """The turn is over; a streamed one stays readable a while (a retry of its question
        replaces it: it is the same turn, answered again)."""
        for key in (turn.question_id, turn.name):
            if key is None:
                continue
            if self._running.get(key) is turn:
                del self._running[key]
            if turn.events is not None:
                self._ended.pop(key, None)
                self._ended[key] = (time.monotonic(), turn)
        self._forget_old()

    def find(self, question_id: str) -> RunningTurn | None:
        """The turn answering `question_id` (or known by that name) if this process runs it, or ran
        and streamed it lately."""
        self._forget_old()
        turn = self._running.get(question_id)
        if turn is None:
            kept = self._ended.get(question_id)
            turn = kept[1] if kept is not None else None
        return turn

    def start(self, work: Coroutine[Any, Any, None], turn: RunningTurn | None = None) -> None:
        """Run `work` in a task of its own that shutdown waits for (the task of `turn`, if given)."""
        task = asyncio.create_task(work)
        if turn is not None:
            turn.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the turns still running in the background and wait while they store what they wrote.

        The server gives requests in flight their grace before it closes the service (a streamed
        turn's request lasts as long as the turn, even when its client has gone), so what still
        runs now has had its time: a streamed reply stops and stores its text so far, marked
        incomplete.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - KEEP_ENDED_SECONDS
        ended = self._ended
        while ended and (len(ended) > KEEP_ENDED_COUNT or next(iter(ended.values()))[0] < horizon):
            ended.popitem(last=False)
