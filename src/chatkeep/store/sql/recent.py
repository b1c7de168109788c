"""The newest messages of the chats this process takes turns on, kept in memory by the SQL stores.

Every turn reads its chat's newest messages for the context it sends upstream; read from the
database, that is the costliest part of a turn (a round trip or more, and a hundred rows or so
to decode). A turn's own appends prove what the process has kept current: an append carrying
the turn's ticket runs while that ticket holds the chat's turn, so no other process appends to
the chat meanwhile, and it answers the chat's message count and its `revision` (bumped whenever
a stored message changes, as a forgotten one does). When the count follows on from the kept
tail and the revision is the one it was kept at, nothing happened to the chat in between, and
the appended messages join the tail; otherwise the tail starts over from them. Reads for the
turn holding that same ticket are then answered from the tail wherever it covers them; older
messages come from the database, and join the tail when they fit on.

A tail is only ever trusted by the turn whose appends proved it: any other reader (listing a
chat, a fold, another process) reads the database. Tails are bounded: at most `MAX_MESSAGES` a
chat, and `max_chars` of content over all chats, the least recently used chats going first.
"""

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from chatkeep.domain import Message
from chatkeep.store.paging import KeyRange, newest_first

MAX_MESSAGES = 512  # a chat's newest: more than a context of 8,000 tokens holds of typical turns
MAX_CHARS = 32_000_000  # over every chat: about 32 MB of ASCII text, plus the messages' objects


@dataclass(slots=True, eq=False)
class _Tail:
    owner: str
    revision: int
    proven_by: int  # the ticket whose appends proved the tail current
    messages: list[Message] = field(default_factory=list)  # contiguous seqs, oldest first
    chars: int = 0

    @property
    def first_seq(self) -> int:
        return self.messages[0].seq

    @property
    def last_seq(self) -> int:
        return self.messages[-1].seq


class Tails:
    def __init__(self, *, max_chars: int = MAX_CHARS, max_messages: int = MAX_MESSAGES) -> None:
        self._tails: OrderedDict[str, _Tail] = OrderedDict()  # by chat id, least recently used first
        self._max_chars = max_chars
        self._max_messages = max_messages
        self._chars = 0

    def appended(self, owner: str, chat_id: str, messages: list[Message], *, revision: int, ticket: int | None) -> None:
        """Messages this process just appended under `ticket` (nothing is kept without one): the
        chat's tail grows by them when it runs on into them at the same revision, else starts over."""
        if ticket is None:
            return
        tail = self._tails.get(chat_id)
        follows = tail is not None and tail.revision == revision and tail.last_seq + 1 == messages[0].seq
        if tail is None or not follows or tail.owner != owner:
            self.forget(chat_id)
            tail = self._tails[chat_id] = _Tail(owner, revision, ticket)
        tail.proven_by = ticket
        self._tails.move_to_end(chat_id)
        self._add(tail, messages, at_end=True)
        self._trim(tail)

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        read: Callable[[KeyRange], Awaitable[list[Message]]],
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int,
        ticket: int | None,
    ) -> list[Message]:
        """`ChatStore.recent_messages`: from the tail `ticket` proved where it holds them all, else
        `read` from the database (and what was read joins the tail where it runs on into it)."""
        kept = self.newest(owner, chat_id, ticket=ticket, limit=limit, before_seq=before_seq, after_seq=after_seq)
        if kept is not None:
            return kept
        found = await read(newest_first(limit, before_seq, after_seq))
        self.read_older(owner, chat_id, ticket, found)
        return found

    def newest(
        self, owner: str, chat_id: str, *, ticket: int | None, limit: int, before_seq: int | None, after_seq: int
    ) -> list[Message] | None:
        """What `ChatStore.recent_messages` answers, from the tail `ticket` proved; None when the
        tail does not hold all of it (or `ticket` proved none)."""
        tail = self._proven(owner, chat_id, ticket)
        if tail is None:
            return None
        end = tail.last_seq + 1 if before_seq is None else min(before_seq, tail.last_seq + 1)
        start = max(after_seq + 1, end - limit)  # the oldest seq asked for
        if start < tail.first_seq and tail.first_seq > 1:
            return None
        first = tail.first_seq
        return tail.messages[max(start - first, 0) : max(end - first, 0)][::-1]

    def read_older(self, owner: str, chat_id: str, ticket: int | None, newest_first: list[Message]) -> None:
        """Messages the turn holding `ticket` read from the database: those older than the tail
        join it when they run on into its oldest, while it has room."""
        tail = self._proven(owner, chat_id, ticket)
        if tail is None:
            return
        older = [message for message in newest_first if message.seq < tail.first_seq]
        if not older or older[0].seq + 1 != tail.first_seq:
            return
        room = self._max_messages - len(tail.messages)
        self._add(tail, older[:room][::-1], at_end=False)
        self._shed()

    def forget(self, chat_id: str) -> None:
        """Drop the chat's tail (the chat is deleted, or its tail can no longer be trusted)."""
        tail = self._tails.pop(chat_id, None)
        if tail is not None:
            self._chars -= tail.chars

    def _proven(self, owner: str, chat_id: str, ticket: int | None) -> _Tail | None:
        tail = self._tails.get(chat_id)
        if ticket is None or tail is None or tail.proven_by != ticket or tail.owner != owner:
            return None
        return tail

    def _add(self, tail: _Tail, messages: list[Message], *, at_end: bool) -> None:
        chars = sum(len(message.content) for message in messages)
        if at_end:
            tail.messages.extend(messages)
        else:
            tail.messages[:0] = messages
        tail.chars += chars
        self._chars += chars

    def _trim(self, tail: _Tail) -> None:
        """Keep the tail to its newest `max_messages`, then every tail to `max_chars`."""
        extra = len(tail.messages) - self._max_messages
        if extra > 0:
            dropped = sum(len(message.content) for message in tail.messages[:extra])
            del tail.messages[:extra]
            tail.chars -= dropped
            self._chars -= dropped
        self._shed()

    def _shed(self) -> None:
        while self._chars > self._max_chars and len(self._tails) > 1:
            self.forget(next(iter(self._tails)))
