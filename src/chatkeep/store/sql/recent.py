"""The newest messages of the chats this process takes turns on, kept in memory by the SQL stores.

Reading a turn's context from the database is the costliest part of a turn, so a store keeps
each chat's newest messages, and only the turn whose own appends proved them current may read
them back: an append under the turn's ticket answers the chat's count and `revision` (bumped
when a stored message changes), and when they run on from what is kept, nothing happened to the
chat in between. Any other reader, or any doubt, reads the database. What is kept is bounded per
chat and over all chats, the least recently used going first.
"""

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from chatkeep.domain import Message
from chatkeep.store.paging import KeyRange, newest_first

MAX_MESSAGES = 512  # a chat's newest: more than a context of 8,000 tokens holds of typical turns
MAX_CHARS = 32_000_000  # over every chat: about 32 MB of ASCII text, plus the messages' objects


@dataclass(slots=True, eq=False)
class _Kept:
    owner: str
    revision: int
    proven_by: int  # the ticket whose appends proved these current
    messages: list[Message] = field(default_factory=list)  # contiguous seqs, oldest first
    chars: int = 0

    @property
    def first_seq(self) -> int:
        return self.messages[0].seq

    @property
    def last_seq(self) -> int:
        return self.messages[-1].seq


class RecentMessages:
    def __init__(self, *, max_chars: int = MAX_CHARS, max_messages: int = MAX_MESSAGES) -> None:
        self._chats: OrderedDict[str, _Kept] = OrderedDict()  # by chat id, least recently used first
        self._max_chars = max_chars
        self._max_messages = max_messages
        self._chars = 0

    def appended(self, owner: str, chat_id: str, messages: list[Message], *, revision: int, ticket: int | None) -> None:
        """Messages this process just appended under `ticket` (nothing is kept without one): they
        join the chat's kept messages when they run on from them at the same revision, else replace them."""
        if ticket is None:
            return
        kept = self._chats.get(chat_id)
        follows = kept is not None and kept.revision == revision and kept.last_seq + 1 == messages[0].seq
        if kept is None or not follows or kept.owner != owner:
            self.forget(chat_id)
            kept = self._chats[chat_id] = _Kept(owner, revision, ticket)
        kept.proven_by = ticket
        self._chats.move_to_end(chat_id)
        self._add(kept, messages, at_end=True)
        self._trim(kept)

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        read: Callable[[KeyRange[int]], Awaitable[list[Message]]],
        *,
        limit: int,
        before_seq: int | None,
        after_seq: int,
        ticket: int | None,
    ) -> list[Message]:
        """`ChatStore.recent_messages`: from memory when the messages `ticket` proved hold them all,
        else `read` from the database (and what was read joins the kept messages where it runs on into them)."""
        kept = self.newest(owner, chat_id, ticket=ticket, limit=limit, before_seq=before_seq, after_seq=after_seq)
        if kept is not None:
            return kept
        found = await read(newest_first(limit, before_seq, after_seq))
        self.read_older(owner, chat_id, ticket, found)
        return found

    def newest(
        self, owner: str, chat_id: str, *, ticket: int | None, limit: int, before_seq: int | None, after_seq: int
    ) -> list[Message] | None:
        """What `ChatStore.recent_messages` answers, from the messages `ticket` proved; None when
        they do not hold all of it (or `ticket` proved none)."""
        kept = self._proven(owner, chat_id, ticket)
        if kept is None:
            return None
        end = kept.last_seq + 1 if before_seq is None else min(before_seq, kept.last_seq + 1)
        start = max(after_seq + 1, end - limit)  # the oldest seq asked for
        if start < kept.first_seq and kept.first_seq > 1:
            return None
        first = kept.first_seq
        return kept.messages[max(start - first, 0) : max(end - first, 0)][::-1]

    def read_older(self, owner: str, chat_id: str, ticket: int | None, newest_first: list[Message]) -> None:
        """Messages the turn holding `ticket` read from the database: those older than the kept ones
        join them when they run on into the oldest, while there is room."""
        kept = self._proven(owner, chat_id, ticket)
        if kept is None:
            return
        older = [message for message in newest_first if message.seq < kept.first_seq]
        if not older or older[0].seq + 1 != kept.first_seq:
            return
        room = self._max_messages - len(kept.messages)
        self._add(kept, older[:room][::-1], at_end=False)
        self._shed()

    def forget(self, chat_id: str) -> None:
        """Drop the chat's kept messages (the chat is deleted, or they can no longer be trusted)."""
        kept = self._chats.pop(chat_id, None)
        if kept is not None:
            self._chars -= kept.chars

    def _proven(self, owner: str, chat_id: str, ticket: int | None) -> _Kept | None:
        kept = self._chats.get(chat_id)
        if ticket is None or kept is None or kept.proven_by != ticket or kept.owner != owner:
            return None
        return kept

    def _add(self, kept: _Kept, messages: list[Message], *, at_end: bool) -> None:
        chars = sum(len(message.content) for message in messages)
        if at_end:
            kept.messages.extend(messages)
        else:
            kept.messages[:0] = messages
        kept.chars += chars
        self._chars += chars

    def _trim(self, kept: _Kept) -> None:
        """Keep the chat's newest `max_messages`, then every chat's to `max_chars` in all."""
        extra = len(kept.messages) - self._max_messages
        if extra > 0:
            dropped = sum(len(message.content) for message in kept.messages[:extra])
            del kept.messages[:extra]
            kept.chars -= dropped
            self._chars -= dropped
        self._shed()

    def _shed(self) -> None:
        while self._chars > self._max_chars and len(self._chats) > 1:
            self.forget(next(iter(self._chats)))
