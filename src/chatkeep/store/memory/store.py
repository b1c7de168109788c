"""`MemoryStore`: everything in this process's memory, gone on restart; the default store.

It is the executable specification of `ChatStore`. Its methods never await between reading and
writing a chat (a turn waits in line, and a message's attachments go to the blob store, before),
so each one is atomic on the event loop: concurrent appends cannot interleave and `seq` stays
gap-free. Attachments' bytes are kept once per content (store/blobs.py): in memory, or in
CHATKEEP_BLOB_DIR. Messages of a chat live in a list indexed by `seq - 1`, which makes
every window and page O(page), and a message's id ends with its seq, so finding one by id needs
no index; a stored message keeps its id and creation time in a row of its chat rather than in
objects of their own (message_rows.py), because a chat may hold millions. A chat's turn queue is
two fields of its record: the ticket at its head and, only while turns wait, a queue of their
futures, so a turn on an idle chat takes and gives back its ticket without allocating a waiter.
"""

import asyncio
import time
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import orjson

from chatkeep.attachments import BLOBS_KEY
from chatkeep.domain import (
    DELETED_ITEM,
    UNFINISHED_RESPONSES,
    Chat,
    ChatChanges,
    ChatCopy,
    IdempotencyRecord,
    KeyClaim,
    KeyState,
    Message,
    MessageStats,
    NewMessage,
    OffBranchMessage,
    Page,
    PageRequest,
    Role,
    RollingSummary,
    Siblings,
    StoredResponse,
    SummaryText,
    new_id,
    utcnow,
)
from chatkeep.errors import (
    ChatNotFoundError,
    IdTakenError,
    MessageNotFoundError,
    ResponseNotFoundError,
    TurnLapsedError,
)
from chatkeep.search import SearchHit, SearchKey, SearchPage, scan_score, scan_snippet
from chatkeep.store.blobs import Attachments, BlobStore, MemoryBlobs, appended_as_sent, needs_restoring
from chatkeep.store.memory.message_rows import MessageRows, moment, moved_rows, now_us, seq_in, stored_message
from chatkeep.store.paging import EPOCH, MICROSECOND, ActivityKey, KeyRange, activity_range, key_range, page_rows
from chatkeep.store.protocols import Broadcast, RateLease, TurnTicket

T = TypeVar("T")

NO_TICKET = 0  # the head of an idle chat's queue: ticket numbers start at 1
LAPSED_DETAIL = "the turn's ticket no longer heads the chat; nothing was stored"


@dataclass(slots=True, eq=False)
class _ChatRecord:
    owner: str
    rank: int
    id: str
    title: str | None
    metadata: dict[str, str]
    system_prompt: str | None
    model: str | None
    created_at: datetime
    updated: int  # microseconds since the epoch, as the creation times in `rows`
    messages: list[Message] = field(default_factory=list)
    rows: MessageRows = field(default_factory=MessageRows)
    user_count: int = 0
    summary: SummaryText | None = None
    named: dict[str, int] | None = None  # seqs of the messages whose ids the caller chose
    attached: bool = False  # it holds a message whose item references blobs: reads restore them
    rolling_summary: RollingSummary | None = None
    summarizing_until: float = 0.0  # the monotonic time the rolling summary's hold lapses
    head: int = NO_TICKET  # the ticket holding the chat's turn
    waiting: "deque[tuple[int, asyncio.Future[None]]] | None" = None  # the tickets behind it, in order
    branches: "_OffBranch | None" = None  # its messages off the current branch, once it has any

    def holds(self, seq: int, message_id: str | None) -> bool:
        """Whether the current branch's message `seq` is `message_id` (None: any)."""
        return message_id is None or (0 < seq <= len(self.messages) and self.messages[seq - 1].id == message_id)

    def seq_of(self, message_id: str) -> int | None:
        """The seq of the chat's message `message_id`, which it carries (see `seq_in`) unless the
        caller chose the id."""
        seq = seq_in(message_id)
        if seq is None or not 0 < seq <= len(self.messages):
            return self.named.get(message_id) if self.named else None
        return seq if self.messages[seq - 1].id == message_id else None

    def take_off(self, seq: int, left_at: int) -> None:
        """Take the current branch's messages from `seq` on off it (`Branches.fork_at`): each keeps
        its id and creation time in its own slots, as its row in `rows` goes."""
        branches = self.branches = self.branches or _OffBranch()
        taken = self.messages[seq - 1 :]
        parent_id = self.messages[seq - 2].id if seq > 1 else None
        for message in taken:
            kept = replace(message)  # its id and creation time as values, no longer its row's
            branches.keep(OffBranchMessage(kept, parent_id, left_at))
            if self.named:
                self.named.pop(kept.id, None)
            parent_id = kept.id
        del self.messages[seq - 1 :]
        old, self.rows = self.rows, self.rows.before(seq)
        moved_rows(self.messages, old, self.rows)
        self.user_count -= sum(message.role is Role.USER for message in taken)

    def bring_on(self, path: Sequence[OffBranchMessage]) -> None:
        """Put the off-branch messages `path` (one after the other, the first after the current
        branch's last message) back on the current branch, under the ids they had."""
        assert self.branches is not None
        for kept in path:
            message = self.branches.take(kept.message.id)
            assert message.seq == len(self.messages) + 1, "an off-branch message comes back at its own seq"
            self.rows.add_at(_micros(message.created_at))  # the row of its seq: its slots hold its values
            self.messages.append(message)
            if seq_in(message.id) != message.seq:
                self.named = self.named or {}
                self.named[message.id] = message.seq
            self.user_count += message.role is Role.USER
            self.attached = self.attached or (message.item is not None and BLOBS_KEY in message.item)

    def drop_summaries_from(self, seq: int) -> None:
        """Drop the cached summary and the rolling summary when they cover message `seq` or later:
        a branch change took those messages off."""
        if self.summary is not None and self.summary.up_to_seq >= seq:
            self.summary = None
        if self.rolling_summary is not None and self.rolling_summary.up_to_seq >= seq:
            self.rolling_summary = None

    def to_chat(self) -> Chat:
        return Chat(
            id=self.id,
            title=self.title,
            metadata=dict(self.metadata),
            system_prompt=self.system_prompt,
            created_at=self.created_at,
            updated_at=moment(self.updated),
            message_count=len(self.messages),
            model=self.model,
        )

    @property
    def activity(self) -> tuple[int, str]:
        """Its place among its owner's chats by last activity (`_OwnerChats.activity`)."""
        return self.updated, self.id


@dataclass(slots=True, eq=False)
class _OffBranch:
    """A chat's messages off its current branch, by id, and their ids by parent id; `changes`
    is the chat's count of branch changes, what each one's `left_at` was as it left."""

    by_id: dict[str, OffBranchMessage] = field(default_factory=dict)
    children: dict[str | None, list[str]] = field(default_factory=dict)
    changes: int = 0

    def keep(self, kept: OffBranchMessage) -> None:
        self.by_id[kept.message.id] = kept
        self.children.setdefault(kept.parent_id, []).append(kept.message.id)

    def take(self, message_id: str) -> Message:
        """Take the off-branch message `message_id` out, to bring it back on the current branch."""
        kept = self.by_id.pop(message_id)
        others = self.children[kept.parent_id]
        others.remove(message_id)
        if not others:
            del self.children[kept.parent_id]
        return kept.message

    def path_to(self, message_id: str) -> list[OffBranchMessage]:
        """The off-branch messages from where the branch through `message_id` leaves the current
        one to its leaf: `message_id`'s off-branch ancestors, it, then at each step the child
        that was current last."""
        path = [self.by_id[message_id]]
        while (parent_id := path[-1].parent_id) is not None and parent_id in self.by_id:
            path.append(self.by_id[parent_id])
        path.reverse()
        while (child := self.current_last(path[-1].message.id)) is not None:
            path.append(child)
        return path

    def current_last(self, parent_id: str) -> OffBranchMessage | None:
        """Of the off-branch messages after `parent_id`, the one that was current last."""
        kept = [self.by_id[child] for child in self.children.get(parent_id, ())]
        return max(kept, key=_left_order, default=None)


def _place(kept: OffBranchMessage) -> tuple[datetime, str]:
    """Where an off-branch message sits among its siblings: in creation order."""
    return kept.message.created_at, kept.message.id


def _left_order(kept: OffBranchMessage) -> tuple[int, datetime, str]:
    """The order in which off-branch messages left the current branch (ties, which only an import
    makes, by creation)."""
    return kept.left_at, kept.message.created_at, kept.message.id


@dataclass(slots=True)  # not frozen: one is made for every response kept, and frozen init is slow
class _KeptResponse:
    owner: str
    chat_id: str | None
    previous_response_id: str | None
    created_at: datetime
    json: bytes  # [its object, its input items, its stream]
    status: str | None
    live_until: float | None  # on the monotonic clock

    @property
    def lapsed(self) -> bool:
        return self.status in UNFINISHED_RESPONSES and (self.live_until is None or self.live_until <= time.monotonic())


@dataclass(slots=True)
class _OwnerChats:
    """One owner's chats in creation order (ranks ascending) and by last activity (their
    (updated, id) ascending), both for bisecting cursors."""

    ranks: list[int] = field(default_factory=list)
    by_rank: dict[int, _ChatRecord] = field(default_factory=dict)
    activity: list[tuple[int, str]] = field(default_factory=list)

    def moved(self, record: _ChatRecord, updated: int) -> None:
        """`record` was written to at `updated`: it moves to its new place by activity."""
        del self.activity[bisect_left(self.activity, record.activity)]
        record.updated = updated
        insort(self.activity, record.activity)  # at the end, but for a clock that stepped back


@dataclass
class _RateCount:
    """One key's rate slots: those spent, by when (sorted), and those each lease holds (its end, its slots)."""

    spent: list[float] = field(default_factory=list)
    leased: dict[str, tuple[float, int]] = field(default_factory=dict)

    def counted(self) -> int:
        return len(self.spent) + sum(slots for _, slots in self.leased.values())

    def oldest(self) -> float:
        return min([*self.spent[:1], *(ends for ends, _ in self.leased.values())])


class MemoryStore:
    def __init__(self, blobs: BlobStore | None = None) -> None:
        self._attachments = Attachments(blobs or MemoryBlobs())  # attachments' bytes, once per content
        self._chats: dict[str, _ChatRecord] = {}
        self._owners: dict[str, _OwnerChats] = {}
        self._next_rank = 0
        self._keys: OrderedDict[tuple[str, str], IdempotencyRecord] = OrderedDict()  # oldest first
        self._kept_keys: set[tuple[str, str]] = set()
        self._rate_counts: dict[str, _RateCount] = {}
        self._responses: dict[str, _KeptResponse] = {}  # by id
        self._last_ticket = NO_TICKET

    async def check_ready(self) -> None:
        return None  # in this process: answering is being here

    def _record(self, owner: str, chat_id: str) -> _ChatRecord:
        record = self._chats.get(chat_id)
        if record is None or record.owner != owner:
            raise _no_chat(chat_id)
        return record

    async def create_chat(
        self,
        owner: str,
        *,
        title: str | None,
        metadata: dict[str, str],
        system_prompt: str | None,
        messages: Sequence[NewMessage] = (),
        model: str | None = None,
    ) -> Chat:
        if messages:
            messages = await self._attachments.kept(messages)
        now = now_us()
        self._next_rank += 1
        record = _ChatRecord(
            owner, self._next_rank, new_id("conv"), title, dict(metadata), system_prompt, model, moment(now), now
        )
        for message in messages:  # nothing here can fail halfway: the chat is not stored yet
            self._append(record, message)
        self._chats[record.id] = record
        owned = self._owners.setdefault(owner, _OwnerChats())
        owned.ranks.append(record.rank)
        owned.by_rank[record.rank] = record
        insort(owned.activity, record.activity)
        return record.to_chat()

    async def insert_chats(self, owner: str, chats: Sequence[ChatCopy]) -> None:
        kept = [await self._kept_copy(copy) for copy in chats]
        taken = self._taken_id(kept)  # from here on nothing awaits: all of them are stored, or none
        if taken is not None:
            raise IdTakenError(taken)
        for copy in kept:
            self._insert_copy(owner, copy)

    async def _kept_copy(self, copy: ChatCopy) -> ChatCopy:
        """`copy` with the attachments of its messages, on every branch, kept in the blob store."""
        messages = await self._attachments.kept(copy.messages)
        if not copy.off_branch:
            return replace(copy, messages=messages)
        off = await self._attachments.kept([kept.message for kept in copy.off_branch])
        off_branch = [replace(kept, message=message) for kept, message in zip(copy.off_branch, off, strict=True)]
        return replace(copy, messages=messages, off_branch=off_branch)

    def _taken_id(self, copies: Sequence[ChatCopy]) -> str | None:
        """The first id of `copies` a chat or message of the store holds. Message ids are kept per
        chat here, so this scans every chat (an import is rare): a chosen id in its `named`, one of
        the store's own ids at the seq it carries."""
        for copy in copies:
            if copy.chat.id in self._chats:
                return copy.chat.id
        wanted = {message.id for copy in copies for message in copy.messages}
        wanted |= {kept.message.id for copy in copies for kept in copy.off_branch}
        by_seq: dict[int, set[str]] = {}
        for message_id in wanted:
            if (seq := seq_in(message_id)) is not None:
                by_seq.setdefault(seq, set()).add(message_id)
        for record in self._chats.values():
            if record.named and (named := wanted & record.named.keys()):
                return min(named)
            for seq, ids in by_seq.items():
                if seq <= len(record.messages) and (found := record.messages[seq - 1].id) in ids:
                    return found
            if record.branches and (off := wanted & record.branches.by_id.keys()):
                return min(off)
        return None

    def _insert_copy(self, owner: str, copy: ChatCopy) -> None:
        chat = copy.chat
        self._next_rank += 1
        updated = _micros(chat.updated_at)
        record = _ChatRecord(
            owner, self._next_rank, chat.id, chat.title, dict(chat.metadata), chat.system_prompt, chat.model,
            chat.created_at, updated,
        )  # fmt: skip
        record.named = {message.id: message.seq for message in copy.messages} or None
        for message in copy.messages:
            record.rows.add_at(_micros(message.created_at))
            record.messages.append(_row_of(record, message.seq, message))
            record.user_count += message.role is Role.USER
        if copy.off_branch:
            branches = record.branches = _OffBranch()
            for kept in copy.off_branch:
                branches.keep(replace(kept, message=replace(kept.message, chat_id=record.id)))
                record.attached = record.attached or (kept.message.item is not None and BLOBS_KEY in kept.message.item)
            branches.changes = max(kept.left_at for kept in copy.off_branch)
        self._chats[record.id] = record
        owned = self._owners.setdefault(owner, _OwnerChats())
        owned.ranks.append(record.rank)
        owned.by_rank[record.rank] = record
        insort(owned.activity, record.activity)

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        return self._record(owner, chat_id).to_chat()

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        owned = self._owners.get(owner, _OwnerChats())
        named = (self._chats.get(cursor) for cursor in (page.after, page.before) if cursor is not None)
        cursors = [chat for chat in named if chat is not None and chat.owner == owner]
        if page.order_by == "updated_at":
            return self._chats_by_activity(owned, page, {c.id: (moment(c.updated), c.id) for c in cursors})
        span = key_range(page, {c.id: c.rank for c in cursors}, "chat")
        lo, hi = bisect_right(owned.ranks, span.above), bisect_left(owned.ranks, span.below)
        ranks, has_more = page_rows(_read(owned.ranks, lo, hi, span), page, span)
        return Page([owned.by_rank[rank].to_chat() for rank in ranks], has_more)

    def _chats_by_activity(self, owned: _OwnerChats, page: PageRequest, keys: dict[str, ActivityKey]) -> Page[Chat]:
        span = activity_range(page, keys)
        above, below = (_in_micros(key) for key in (span.above, span.below))
        lo, hi = bisect_right(owned.activity, above), bisect_left(owned.activity, below)
        places, has_more = page_rows(_read(owned.activity, lo, hi, span), page, span)
        return Page([self._chats[chat_id].to_chat() for _, chat_id in places], has_more)

    async def count_chats(self, owner: str) -> int:
        owned = self._owners.get(owner)
        return len(owned.ranks) if owned is not None else 0

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        record = self._record(owner, chat_id)
        if "title" in changes.fields:
            record.title = changes.title
        if "metadata" in changes.fields:
            record.metadata = dict(changes.metadata)
        if "system_prompt" in changes.fields:
            record.system_prompt = changes.system_prompt
        if "model" in changes.fields:
            record.model = changes.model
        self._owners[owner].moved(record, now_us())
        return record.to_chat()

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        record = self._record(owner, chat_id)
        del self._chats[chat_id]
        owned = self._owners[owner]
        del owned.ranks[bisect_left(owned.ranks, record.rank)]
        del owned.by_rank[record.rank]
        del owned.activity[bisect_left(owned.activity, record.activity)]
        for _, waiter in record.waiting or ():
            if not waiter.done():
                waiter.set_exception(_no_chat(chat_id))
        record.waiting = None

    def turn_lease(self, owner: str, chat_id: str, *, question: str | None = None) -> "_TurnLease":
        return _TurnLease(self, owner, chat_id, question)

    async def append_message(
        self,
        owner: str,
        chat_id: str,
        message: NewMessage,
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> Message:
        sent = message
        if message.item is not None:
            (message,) = await self._attachments.kept([message])
        record = self._fenced(owner, chat_id, ticket)
        stored = self._append(record, message)
        if ends_turn and ticket is not None:
            _give_back(record, ticket.number)
        return stored if message is sent else appended_as_sent([stored], [sent])[0]

    async def append_messages(
        self,
        owner: str,
        chat_id: str,
        messages: Sequence[NewMessage],
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> tuple[list[Message], str | None]:
        kept = await self._attachments.kept(messages)
        record = self._fenced(owner, chat_id, ticket)
        stored = [self._append(record, message) for message in kept]
        if ends_turn and ticket is not None:
            _give_back(record, ticket.number)
        return appended_as_sent(stored, messages), record.system_prompt

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: TurnTicket | None = None
    ) -> tuple[Message, str | None]:
        record = self._fenced(owner, chat_id, ticket)
        return self._append(record, NewMessage(Role.USER, content)), record.system_prompt

    def _fenced(self, owner: str, chat_id: str, ticket: TurnTicket | None) -> _ChatRecord:
        """The chat to append to, once `ticket` (when given) is found to head it."""
        record = self._record(owner, chat_id)
        if ticket is not None and record.head != ticket.number:
            raise TurnLapsedError(LAPSED_DETAIL)
        return record

    def _take_ticket(self) -> int:
        self._last_ticket += 1
        return self._last_ticket

    def _append(self, record: _ChatRecord, message: NewMessage) -> Message:
        now, seq = record.rows.add(), len(record.messages) + 1
        if message.id is not None:
            record.named = record.named or {}
            record.named[message.id] = seq
        stored = _row_of(record, seq, message)
        record.messages.append(stored)
        record.user_count += message.role is Role.USER
        owned = self._owners.get(record.owner)
        if owned is not None and record.id in self._chats:
            owned.moved(record, now)
        else:  # its first messages, as it is created: it takes its place once stored
            record.updated = now
        return stored

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        record = self._record(owner, chat_id)
        seq = record.seq_of(message_id)
        if seq is None:
            raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")
        kept = record.messages[seq - 1]
        record.messages[seq - 1] = replace(kept, content="", model=None, usage=None, item=DELETED_ITEM)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        record = self._record(owner, chat_id)
        cursors = (page.after, page.before)
        span = key_range(page, {c: seq for c in cursors if c is not None and (seq := record.seq_of(c))}, "message")
        messages = record.messages  # message `seq` sits at index seq - 1
        lo, hi = min(span.above, len(messages)), min(span.below - 1, len(messages))
        rows, has_more = page_rows(_read(messages, lo, hi, span), page, span)
        return Page(await self._attachments.restored(rows), has_more)

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int = 0,
        ticket: TurnTicket | None = None,
    ) -> list[Message]:
        record = self._record(owner, chat_id)
        messages = record.messages
        end = len(messages) if before_seq is None else min(before_seq - 1, len(messages))
        start = max(after_seq, end - limit, 0)
        window = messages[start:end][::-1]
        # every turn reads its window here: a chat that never held an attachment skips the scan
        return await self._attachments.restored(window) if record.attached and needs_restoring(window) else window

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        record = self._record(owner, chat_id)
        messages = record.messages
        return MessageStats(
            message_count=len(messages),
            user_message_count=record.user_count,
            assistant_message_count=len(messages) - record.user_count,
            first_message_at=messages[0].created_at if messages else None,
            last_message_at=messages[-1].created_at if messages else None,
            last_seq=len(messages),
        )

    async def search_messages(
        self, owner: str, terms: Sequence[str], *, limit: int, after: SearchKey | None = None
    ) -> SearchPage:
        """A scan of every message of the owner's chats: the executable specification of search,
        not an index (the SQL stores have one)."""
        owned = self._owners.get(owner, _OwnerChats())
        found = [
            (SearchKey(score, record.id, message.seq), record, message)
            for record in owned.by_rank.values()
            for message in record.messages
            if (score := scan_score(message.content, terms))
        ]
        found.sort(key=lambda hit: (-hit[0].score, hit[0].chat_id, hit[0].seq))
        if after is not None:
            found = [hit for hit in found if hit[0].follows(after)]
        hits = [
            SearchHit(
                record.id,
                record.title,
                message.id,
                message.seq,
                message.role,
                message.created_at,
                scan_snippet(message.content, terms),
                key.score,
            )
            for key, record, message in found[:limit]
        ]
        return SearchPage(hits, len(found) > limit)

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        return self._record(owner, chat_id).summary

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        record = self._record(owner, chat_id)
        if (record.summary is None or record.summary.up_to_seq <= summary.up_to_seq) and record.holds(
            summary.up_to_seq, summary.through_id
        ):
            record.summary = summary

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        return self._record(owner, chat_id).rolling_summary

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        record = self._chats.get(chat_id)
        now = time.monotonic()
        if record is None or record.owner != owner or record.summarizing_until > now:
            return False
        record.summarizing_until = now + hold_seconds
        return True

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        record = self._chats.get(chat_id)
        if record is None or record.owner != owner:
            return
        record.summarizing_until = 0.0
        kept = record.rolling_summary
        if (
            summary is not None
            and (kept is None or kept.up_to_seq < summary.up_to_seq)
            and record.holds(summary.up_to_seq, summary.through_id)
        ):
            record.rolling_summary = summary

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        record = self._record(owner, chat_id)
        seq = record.seq_of(message_id)
        if seq is None:
            raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")
        (message,) = await self._attachments.restored([record.messages[seq - 1]])
        return message

    async def fork_at(self, owner: str, chat_id: str, seq: int, *, ticket: TurnTicket | None = None) -> None:
        record = self._fenced(owner, chat_id, ticket)
        last = len(record.messages)
        if not 1 <= seq <= last + 1:
            raise ValueError(f"seq {seq} is not in 1 to {last + 1}, the chat's last seq + 1")
        if seq <= last:
            branches = record.branches = record.branches or _OffBranch()
            branches.changes += 1
            record.take_off(seq, branches.changes)
            record.drop_summaries_from(seq)
            self._owners[owner].moved(record, now_us())

    async def switch_branch(
        self, owner: str, chat_id: str, message_id: str, *, ticket: TurnTicket | None = None
    ) -> Chat:
        record = self._fenced(owner, chat_id, ticket)
        if record.seq_of(message_id) is not None:
            return record.to_chat()  # on the current branch already
        branches = record.branches
        if branches is None or message_id not in branches.by_id:
            raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")
        path = branches.path_to(message_id)
        parted_at = path[0].message.seq
        branches.changes += 1
        if parted_at <= len(record.messages):
            record.take_off(parted_at, branches.changes)
        record.bring_on(path)
        record.drop_summaries_from(parted_at)
        self._owners[owner].moved(record, now_us())
        return record.to_chat()

    async def siblings(self, owner: str, chat_id: str, messages: Sequence[Message]) -> dict[str, Siblings]:
        record = self._record(owner, chat_id)
        branches = record.branches
        if branches is None or not branches.children:
            return {}
        current = record.messages
        found = {}
        for message in messages:
            seq = message.seq
            if not 0 < seq <= len(current) or current[seq - 1].id != message.id:
                continue  # not on the current branch
            others = branches.children.get(current[seq - 2].id if seq > 1 else None)
            if others:
                places = sorted([(message.created_at, message.id)] + [_place(branches.by_id[i]) for i in others])
                ids = tuple(message_id for _, message_id in places)
                found[message.id] = Siblings(ids, ids.index(message.id))
        return found

    async def off_branch_messages(self, owner: str, chat_id: str) -> list[OffBranchMessage]:
        record = self._record(owner, chat_id)
        if record.branches is None:
            return []
        kept = sorted(record.branches.by_id.values(), key=lambda k: (k.message.seq, *_place(k)))
        messages = await self._attachments.restored([k.message for k in kept])
        return [replace(k, message=message) for k, message in zip(kept, messages, strict=True)]

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        now = utcnow()
        record = self._keys.get((owner, key))
        if record is None or record.created_at < expired_before:
            self._keys.pop((owner, key), None)
            self._keys[owner, key] = IdempotencyRecord(fingerprint, KeyState.RUNNING, None, None, now, now)
            return KeyClaim(claimed=True, previous=None)
        kept = (owner, key) in self._kept_keys
        in_flight = record.state is KeyState.RUNNING and (kept or record.updated_at >= abandoned_before)
        if record.fingerprint != fingerprint or record.state is KeyState.DONE or in_flight:
            return KeyClaim(claimed=False, previous=record)
        self._keys[owner, key] = replace(record, state=KeyState.RUNNING, updated_at=now)
        return KeyClaim(claimed=True, previous=record)

    async def update_key(
        self,
        owner: str,
        key: str,
        *,
        state: KeyState,
        result: str | None = None,
        user_message_id: str | None = None,
    ) -> None:
        record = self._keys.get((owner, key))
        if record is not None:
            user_message_id = user_message_id or record.user_message_id
            updated = replace(record, state=state, result=result, user_message_id=user_message_id, updated_at=utcnow())
            self._keys[owner, key] = updated

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._kept_keys.add((owner, key))

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._kept_keys.discard((owner, key))

    async def release_key(self, owner: str, key: str) -> None:
        self._keys.pop((owner, key), None)

    async def purge_keys(self, *, expired_before: datetime) -> int:
        purged = 0
        while self._keys and next(iter(self._keys.values())).created_at < expired_before:
            self._keys.popitem(last=False)
            purged += 1
        return purged

    async def save_response(self, owner: str, response: StoredResponse, *, live_for: float | None = None) -> None:
        response = await self._attachments.kept_response(response)
        self._responses[response.id] = _kept_response(owner, response, response.created_at, live_for)

    async def update_response(
        self,
        owner: str,
        response: StoredResponse,
        *,
        expected: Collection[str] = UNFINISHED_RESPONSES,
        live_for: float | None = None,
        if_lapsed: bool = False,
    ) -> bool:
        kept = self._responses.get(response.id)
        if kept is None or kept.owner != owner or kept.status not in expected or (if_lapsed and not kept.lapsed):
            return False
        response = await self._attachments.kept_response(response)
        self._responses[response.id] = _kept_response(owner, response, kept.created_at, live_for)
        return True

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        kept = self._responses.get(response_id)
        if kept is None or kept.owner != owner:
            raise ResponseNotFoundError(f"no response {response_id!r}")
        body, input_items, stream = orjson.loads(kept.json)
        input_items = await self._attachments.restored_items(input_items)
        return StoredResponse(
            response_id,
            kept.chat_id,
            kept.previous_response_id,
            kept.created_at,
            body,
            input_items,
            stream,
            lapsed=kept.lapsed,
        )

    async def delete_response(self, owner: str, response_id: str) -> None:
        await self.get_response(owner, response_id)
        del self._responses[response_id]

    async def renew_rate_lease(
        self,
        key: str,
        lease: str,
        *,
        spent: Sequence[float],
        want: int,
        limit: int,
        window_seconds: float,
        lease_seconds: float,
    ) -> RateLease:
        now = time.monotonic()
        count = self._rate_counts.setdefault(key, _RateCount())
        ends, _ = count.leased.pop(lease, (now, 0))
        for age in spent:
            insort(count.spent, min(now - age, ends))
        start = now - window_seconds
        del count.spent[: bisect_right(count.spent, start)]
        count.leased = {held: slots for held, slots in count.leased.items() if slots[0] > start}
        granted = max(0, min(want, limit - count.counted()))
        if granted:
            count.leased[lease] = (now + lease_seconds, granted)
            return RateLease(granted)
        if not count.spent and not count.leased:
            del self._rate_counts[key]
        return RateLease(0, None if want == 0 else count.oldest() + window_seconds - now)

    @property
    def broadcast(self) -> Broadcast | None:
        return None  # one process


def _read(items: Sequence[T], lo: int, hi: int, span: KeyRange[Any]) -> Sequence[T]:
    """Up to `span.fetch` of `items[lo:hi]`, from the end `span` reads from, in that order."""
    if span.descending:
        return items[max(lo, hi - span.fetch) : hi][::-1]
    return items[lo : min(hi, lo + span.fetch)]


def _in_micros(key: ActivityKey) -> tuple[int, str]:
    """An activity key as `_OwnerChats.activity` holds it."""
    moment_, chat_id = key
    return _micros(moment_), chat_id


def _micros(moment_: datetime) -> int:
    """An aware datetime as microseconds since the epoch, as a chat's `updated` and its rows keep it."""
    return (moment_ - EPOCH) // MICROSECOND


def _no_chat(chat_id: str) -> ChatNotFoundError:
    return ChatNotFoundError(f"no chat {chat_id!r}")


def _give_back(record: _ChatRecord, number: int) -> None:
    """End the turn of ticket `number` if it holds the chat's: the next live waiter's begins."""
    if record.head != number:
        return
    waiting = record.waiting
    while waiting:
        successor, waiter = waiting.popleft()
        if not waiter.done():  # a cancelled waiter's future is done: it left the queue
            record.head = successor
            waiter.set_result(None)
            return
    record.head, record.waiting = NO_TICKET, None


class _TurnLease:
    """`MemoryStore.turn_lease`: a class rather than a generator-based context manager, since
    every turn enters one, and one on an idle chat must cost no more than a few attribute writes."""

    __slots__ = ("_chat_id", "_number", "_owner", "_question", "_record", "_store")

    def __init__(self, store: MemoryStore, owner: str, chat_id: str, question: str | None) -> None:
        self._store, self._owner, self._chat_id, self._question = store, owner, chat_id, question
        self._record: _ChatRecord | None = None
        self._number = NO_TICKET

    async def __aenter__(self) -> TurnTicket:
        store = self._store
        record = store._record(self._owner, self._chat_id)
        number = store._take_ticket()
        if record.head == NO_TICKET:  # an idle chat: the turn is ours at once, with its question
            record.head = number
            self._record, self._number = record, number
            if self._question is None:
                return TurnTicket(number)
            question = store._append(record, NewMessage(Role.USER, self._question))
            return TurnTicket(number, question, record.system_prompt)
        waiter = asyncio.get_running_loop().create_future()
        if record.waiting is None:
            record.waiting = deque()
        record.waiting.append((number, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                _give_back(record, number)  # made the head, then cancelled before it could begin
            elif record.waiting is not None and (number, waiter) in record.waiting:
                record.waiting.remove((number, waiter))
                record.waiting = record.waiting or None
            raise
        self._record, self._number = record, number
        return TurnTicket(number)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._record is not None:
            _give_back(self._record, self._number)


def _row_of(record: "_ChatRecord", seq: int, message: NewMessage | Message) -> Message:
    """`message` as the chat keeps it at `seq`: its id and creation time in the chat's rows (the
    row for `seq` added by the caller)."""
    record.attached = record.attached or (message.item is not None and BLOBS_KEY in message.item)
    return stored_message(
        record.rows,
        record.id,
        seq,
        message.role,
        message.content,
        model=message.model,
        usage=message.usage,
        status=message.status,
        item=message.item,
        message_id=message.id,
        incomplete_reason=message.incomplete_reason,
    )


def _kept_response(owner: str, response: StoredResponse, created_at: datetime, live_for: float | None) -> _KeptResponse:
    # Its object, input and stream as JSON: one object that the garbage collector never walks (their
    # dicts would be dozens), a fraction of their memory, and a fresh copy for every reader.
    kept = orjson.dumps([response.body, response.input_items, response.stream])
    live_until = None if live_for is None else time.monotonic() + live_for
    return _KeptResponse(
        owner, response.chat_id, response.previous_response_id, created_at, kept, response.status, live_until
    )
