"""`SqlStore`: the store SQLite and PostgreSQL share, written once over each database's `Driver`.

Both databases hold the same tables and answer the same statements, so everything a store call
does beyond its statements (ids, timestamps, turning rows into objects, turn tickets, the
messages kept for turns' contexts, the question stored with its ticket) is the same for both,
and is here. A call that runs several statements is a plan (`statements.Plan`), which the driver
runs as one call: one job on SQLite's thread, one pooled connection on PostgreSQL. A driver adds
only what its concurrency guarantee rests on: how an append takes its seq under a turn's fence,
how a ticket is taken and given back, how an Idempotency-Key is claimed and a rate slot counted.
An id or a cursor that cannot be one chatkeep handed out (`rows.could_be_id`: a NUL in it, say)
is not found before a database is asked: a missing chat or response at once, a missing message
or cursor by asking for NOWHERE in its place.
"""

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from chatkeep.domain import (
    DELETED_ITEM,
    UNFINISHED_RESPONSES,
    Chat,
    ChatChanges,
    ChatCopy,
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
from chatkeep.search import SearchHit, SearchKey, SearchPage, marked_parts
from chatkeep.store.blobs import Attachments, BlobStore, appended_as_sent, needs_restoring
from chatkeep.store.paging import ActivityKey, KeyRange, activity_range, key_range, page_rows
from chatkeep.store.protocols import Broadcast, RateLease, TurnTicket
from chatkeep.store.sql.blobs import SqlBlobs
from chatkeep.store.sql.branches import path_through, siblings_from_rows
from chatkeep.store.sql.migrations import Migration, check_schema
from chatkeep.store.sql.recent import RecentMessages
from chatkeep.store.sql.rows import (
    ROLES,
    Appended,
    NewRow,
    Row,
    chat_from_row,
    check_message,
    claim_from_row,
    copied_branch_row,
    copied_chat_row,
    copied_message_row,
    could_be_id,
    findable,
    joined_keys_from_rows,
    joined_message_from_row,
    joined_messages_from_rows,
    joined_summary_from_row,
    message_row,
    off_branch_from_rows,
    response_from_row,
    response_update_values,
    response_values,
    stats_from_row,
    stored_messages,
    to_json,
    update_chat_values,
)
from chatkeep.store.sql.statements import Plan, execute, execute_each, fetch, fetchrow, only, paged, rowcount
from chatkeep.store.sql.tickets import LAPSED_DETAIL, TicketRows, Tickets


class Driver(TicketRows, Protocol):
    """What one database does its own way, for `SqlStore`."""

    migrations: Sequence[Migration]

    search_in_transaction: bool  # the search plan sets options of its own transaction
    id_clash: type[Exception]  # what an insert of an id a row holds already raises

    def search(self, owner: str, terms: Sequence[str], limit: int, after: SearchKey | None) -> Plan[list[Row]]:
        """The plan of a page of `limit` search hits (store/sql/search.py), as rows of (chat id,
        title, message id, seq, role, created_at, score, snippet with its matches marked)."""
        ...

    @property
    def broadcast(self) -> Broadcast | None: ...

    async def catch_up_search(self) -> None:
        """Bring the search index up to every message stored, where the database indexes lazily."""
        ...

    def moment(self, value: Any) -> datetime:
        """A timestamp column's value as a datetime (`stamp` turns one back)."""
        ...

    async def applied_migrations(self) -> set[str]:
        """The names of the migrations the database has. Raises StoreUnavailableError when it does not answer."""
        ...

    async def append(
        self, owner: str, chat_id: str, messages: Sequence[NewRow], ticket: int | None, *, ends_turn: bool
    ) -> Appended:
        """`ChatStore.append_messages` of `messages` in the database, `ticket` its number; with
        `ends_turn`, the ticket goes back in the same transaction where the database can (`gave_back`)."""
        ...

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, now: Any, expired_before: Any, abandoned_before: Any
    ) -> tuple[bool, Row | None]:
        """`ChatStore.claim_key`, its moments stamped: whether it claimed, and the record (KEY_COLUMNS) as it was."""
        ...

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
        """`ChatStore.renew_rate_lease`, in one transaction under the database's lock on `key`."""
        ...


class SqlStore:
    def __init__(
        self, driver: Driver, tickets: Tickets, recent: RecentMessages, blobs: BlobStore | None = None
    ) -> None:
        self._driver = driver
        self._run = driver.run
        self._stamp = driver.stamp
        self._moment = driver.moment
        self._sql = driver.sql
        self._tickets = tickets
        self._recent = recent  # the newest messages of the chats this process takes turns on
        # attachments' bytes, once per content: in the `blobs` table unless given another place
        self._attachments = Attachments(blobs or SqlBlobs(driver))

    def wake(self, chat_id: str) -> None:
        """Another process gave back a ticket of the chat: its waiters here look again."""
        self._tickets.wake(chat_id)

    async def check_ready(self) -> None:
        check_schema(await self._driver.applied_migrations(), self._driver.migrations)

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
        now = utcnow()
        chat = Chat(new_id("conv"), title, dict(metadata), system_prompt, now, now, len(messages), model)
        new = [(message.id or new_id("msg"), message) for message in messages]
        await self._run(self._create_chat(owner, chat, new), write=bool(new))
        return chat

    def _create_chat(self, owner: str, chat: Chat, new: list[NewRow]) -> Plan[None]:
        chat_id, stamp = chat.id, self._stamp(chat.created_at)
        users = sum(message.role is Role.USER for _, message in new)
        last_at = stamp if new else None
        metadata = to_json(chat.metadata)
        row = (chat_id, owner, chat.title, metadata, chat.system_prompt, stamp, len(new), users, last_at, chat.model)
        yield execute(self._sql.insert_chat, *row)
        if new:
            rows = [message_row(message, chat_id, seq, stamp) for seq, message in enumerate(new, start=1)]
            yield execute_each(self._sql.insert_message, rows)

    async def insert_chats(self, owner: str, chats: Sequence[ChatCopy]) -> None:
        kept = [await self._kept_copy(copy) for copy in chats]
        try:
            await self._run(self._insert_chats(owner, kept), write=True)
        except self._driver.id_clash as clash:  # an id inserted meanwhile by another writer (PostgreSQL)
            raise IdTakenError(None) from clash

    async def _kept_copy(self, copy: ChatCopy) -> ChatCopy:
        """`copy` with the attachments of its messages, on every branch, kept in the blob store."""
        messages = await self._attachments.kept(copy.messages)
        if not copy.off_branch:
            return replace(copy, messages=messages)
        off = await self._attachments.kept([kept.message for kept in copy.off_branch])
        off_branch = [replace(kept, message=message) for kept, message in zip(copy.off_branch, off, strict=True)]
        return replace(copy, messages=messages, off_branch=off_branch)

    def _insert_chats(self, owner: str, copies: Sequence[ChatCopy]) -> Plan[None]:
        """One write transaction: the ids checked free, then every chat and its messages inserted.
        (On PostgreSQL a concurrent insert of the same id still fails the insert itself, with the
        unique violation `insert_chats` answers as IdTakenError; the transaction rolls back.)"""
        chat_ids = to_json([copy.chat.id for copy in copies])
        message_ids = to_json(
            [message.id for copy in copies for message in copy.messages]
            + [kept.message.id for copy in copies for kept in copy.off_branch]
        )
        for query, ids in (
            (self._sql.taken_chat_id, chat_ids),
            (self._sql.taken_message_id, message_ids),
            (self._sql.taken_branch_message_id, message_ids),
        ):
            taken = yield fetchrow(query, ids)
            if taken is not None:
                raise IdTakenError(taken[0])
        for copy in copies:
            yield execute(self._sql.import_chat, *copied_chat_row(owner, copy, self._stamp))
            if copy.messages:
                rows = [copied_message_row(message, self._stamp(message.created_at)) for message in copy.messages]
                yield execute_each(self._sql.insert_message, rows)
            if copy.off_branch:
                kept = [copied_branch_row(k, self._stamp(k.message.created_at)) for k in copy.off_branch]
                yield execute_each(self._sql.insert_branch_message, kept)

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        _check_chat(chat_id)
        return await self._run(self._chat(owner, chat_id))

    def _chat(self, owner: str, chat_id: str) -> Plan[Chat]:
        found = yield fetchrow(self._sql.select_chat, chat_id, owner)
        if found is None:
            raise _no_chat(chat_id)
        return chat_from_row(found, self._moment)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        return await self._run(self._chat_page(owner, page))

    def _chat_page(self, owner: str, page: PageRequest) -> Plan[Page[Chat]]:
        if page.order_by == "updated_at":
            return (yield from self._chat_page_by_activity(owner, page))
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = yield fetch(self._sql.chat_cursors, owner, *_cursors(page))
            keys = {row[0]: row[1] for row in cursors}
        span = key_range(page, keys, "chat")
        found = yield fetch(paged(self._sql.chat_page, span), owner, span.above, span.below, span.fetch)
        chats, has_more = page_rows(found, page, span)
        return Page([chat_from_row(row, self._moment) for row in chats], has_more)

    def _chat_page_by_activity(self, owner: str, page: PageRequest) -> Plan[Page[Chat]]:
        keys: dict[str, ActivityKey] = {}
        if page.after is not None or page.before is not None:
            cursors = yield fetch(self._sql.chat_activity_cursors, owner, *_cursors(page))
            keys = {row[0]: (self._moment(row[1]), row[0]) for row in cursors}
        span = activity_range(page, keys)
        (above, above_id), (below, below_id) = span.above, span.below
        bounds = (self._stamp(above), above_id, self._stamp(below), below_id)
        found = yield fetch(paged(self._sql.chat_activity_page, span), owner, *bounds, span.fetch)
        chats, has_more = page_rows(found, page, span)
        return Page([chat_from_row(row, self._moment) for row in chats], has_more)

    async def count_chats(self, owner: str) -> int:
        found = await self._run(only(fetchrow(self._sql.count_chats, owner)))
        return int(found[0])

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        _check_chat(chat_id)
        values = update_chat_values(chat_id, owner, changes, self._stamp(utcnow()))
        found = await self._run(only(fetchrow(self._sql.update_chat, *values)))
        if found is None:
            raise _no_chat(chat_id)
        return chat_from_row(found, self._moment)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        _check_chat(chat_id)
        if await self._run(only(fetchrow(self._sql.delete_chat, chat_id, owner))) is None:
            raise _no_chat(chat_id)
        self._recent.forget(chat_id)
        self._tickets.wake(chat_id)  # its waiters here find their tickets gone with it

    def turn_lease(
        self, owner: str, chat_id: str, *, question: str | None = None
    ) -> AbstractAsyncContextManager[TurnTicket]:
        return self._tickets.hold(owner, chat_id, question)

    async def append_message(
        self,
        owner: str,
        chat_id: str,
        message: NewMessage,
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> Message:
        stored, _ = await self._append(owner, chat_id, [message], ticket, ends_turn)
        return stored[0]

    async def append_messages(
        self,
        owner: str,
        chat_id: str,
        messages: Sequence[NewMessage],
        *,
        ticket: TurnTicket | None = None,
        ends_turn: bool = False,
    ) -> tuple[list[Message], str | None]:
        return await self._append(owner, chat_id, messages, ticket, ends_turn)

    async def append_question(
        self, owner: str, chat_id: str, content: str, *, ticket: TurnTicket | None = None
    ) -> tuple[Message, str | None]:
        stored, system_prompt = await self._append(owner, chat_id, [NewMessage(Role.USER, content)], ticket, False)
        return stored[0], system_prompt

    async def _append(
        self, owner: str, chat_id: str, messages: Sequence[NewMessage], ticket: TurnTicket | None, ends_turn: bool
    ) -> tuple[list[Message], str | None]:
        _check_chat(chat_id)
        sent = messages
        if any(message.item is not None for message in messages):
            messages = await self._attachments.kept(messages)
        new = [(message.id or new_id("msg"), message) for message in messages]
        number = None if ticket is None else ticket.number
        ending = ends_turn and number is not None
        appended = await self._driver.append(owner, chat_id, new, number, ends_turn=ending)
        if number is not None and ending:
            if appended.gave_back:
                self._tickets.given_back(number)
            else:
                await self._tickets.give_back(chat_id, number)
        stored = stored_messages(new, chat_id, appended)
        self._recent.appended(owner, chat_id, stored, revision=appended.revision, ticket=number)
        if messages is not sent:
            stored = appended_as_sent(stored, sent)
        return stored, appended.system_prompt

    async def forget_message(self, owner: str, chat_id: str, message_id: str) -> None:
        _check_chat(chat_id)
        await self._run(self._forget(owner, chat_id, message_id), write=True)
        self._recent.forget(chat_id)

    def _forget(self, owner: str, chat_id: str, message_id: str) -> Plan[None]:
        found = yield fetchrow(self._sql.forget_message, chat_id, owner, findable(message_id))
        check_message(found, chat_id, message_id)
        yield execute(self._sql.forgotten_message, chat_id, message_id, to_json(DELETED_ITEM))
        yield execute(self._sql.revise_chat, chat_id)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        _check_chat(chat_id)
        return await self._restored_page(await self._run(self._message_page(owner, chat_id, page)))

    def _message_page(self, owner: str, chat_id: str, page: PageRequest) -> Plan[Page[Message]]:
        keys: dict[str, int] = {}
        if page.after is not None or page.before is not None:
            cursors = yield fetch(self._sql.message_cursors, chat_id, owner, *_cursors(page))
            keys = joined_keys_from_rows(cursors, chat_id)
        span = key_range(page, keys, "message")
        window = yield from self._window(owner, chat_id, span)
        return Page(*page_rows(window, page, span))

    async def _restored_page(self, page: Page[Message]) -> Page[Message]:
        return Page(await self._attachments.restored(page.data), page.has_more) if needs_restoring(page.data) else page

    def _window(self, owner: str, chat_id: str, span: KeyRange[int]) -> Plan[list[Message]]:
        query = paged(self._sql.message_page, span)
        found = yield fetch(query, chat_id, owner, span.above, span.below, span.fetch)
        return joined_messages_from_rows(found, self._moment, chat_id)

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
        _check_chat(chat_id)
        window = await self._recent.recent_messages(
            owner,
            chat_id,
            lambda span: self._run(self._window(owner, chat_id, span)),
            limit=limit,
            before_seq=before_seq,
            after_seq=after_seq,
            ticket=None if ticket is None else ticket.number,
        )
        return await self._attachments.restored(window) if needs_restoring(window) else window

    async def message_stats(self, owner: str, chat_id: str) -> MessageStats:
        _check_chat(chat_id)
        found = await self._run(only(fetchrow(self._sql.select_stats, chat_id, owner)))
        if found is None:
            raise _no_chat(chat_id)
        return stats_from_row(found, self._moment)

    async def get_message(self, owner: str, chat_id: str, message_id: str) -> Message:
        _check_chat(chat_id)
        found = await self._run(only(fetchrow(self._sql.select_message, chat_id, owner, findable(message_id))))
        (message,) = await self._attachments.restored(
            [joined_message_from_row(found, self._moment, chat_id, message_id)]
        )
        return message

    async def fork_at(self, owner: str, chat_id: str, seq: int, *, ticket: TurnTicket | None = None) -> None:
        _check_chat(chat_id)
        number = None if ticket is None else ticket.number
        await self._run(self._fork(owner, chat_id, seq, number), write=True)
        self._recent.forget(chat_id)

    def _fork(self, owner: str, chat_id: str, seq: int, ticket: int | None) -> Plan[None]:
        count, changes = yield from self._branching(owner, chat_id, ticket)
        if not 1 <= seq <= count + 1:
            raise ValueError(f"seq {seq} is not in 1 to {count + 1}, the chat's last seq + 1")
        if seq <= count:
            users = yield from self._take_off(chat_id, seq, changes + 1)
            yield from self._branch_changed(chat_id, seq, seq - 1, -users)

    def _branching(self, owner: str, chat_id: str, ticket: int | None) -> Plan[tuple[int, int]]:
        """The chat's message count and count of branch changes, read (and locked) for a branch
        write: only while `ticket`, when given, heads the chat."""
        found = yield fetchrow(self._sql.branching_chat, chat_id, owner)
        if found is None:
            raise _no_chat(chat_id)
        if ticket is not None and (yield fetchrow(self._sql.head_ticket, chat_id))[0] != ticket:
            raise TurnLapsedError(LAPSED_DETAIL)
        return int(found[0]), int(found[1])

    def _take_off(self, chat_id: str, seq: int, left_at: int) -> Plan[int]:
        """Move the current branch's messages from `seq` on off it; how many were the user's."""
        users = (yield fetchrow(self._sql.users_from, chat_id, seq))[0]
        yield execute(self._sql.take_off, chat_id, seq, left_at)
        yield execute(self._sql.delete_from, chat_id, seq)
        return int(users)

    def _branch_changed(self, chat_id: str, parted_at: int, count: int, users: int) -> Plan[Chat]:
        """The chat's counts once its current branch parted at `parted_at` and holds `count`
        messages, `users` more of them the user's; its summaries covering `parted_at` dropped."""
        now = self._stamp(utcnow())
        found = yield fetchrow(self._sql.branch_changed, chat_id, count, users, now)
        yield execute(self._sql.drop_summary_from, chat_id, parted_at)
        yield execute(self._sql.drop_rolling_summary_from, chat_id, parted_at)
        return chat_from_row(found, self._moment)

    async def switch_branch(
        self, owner: str, chat_id: str, message_id: str, *, ticket: TurnTicket | None = None
    ) -> Chat:
        _check_chat(chat_id)
        number = None if ticket is None else ticket.number
        chat = await self._run(self._switch(owner, chat_id, findable(message_id), number), write=True)
        if chat is None:
            raise MessageNotFoundError(f"no message {message_id!r} in chat {chat_id!r}")
        self._recent.forget(chat_id)
        return chat

    def _switch(self, owner: str, chat_id: str, message_id: str, ticket: int | None) -> Plan[Chat | None]:
        count, changes = yield from self._branching(owner, chat_id, ticket)
        if (yield fetchrow(self._sql.current_message, chat_id, message_id)) is not None:
            return (yield from self._chat(owner, chat_id))  # on the current branch already
        path = path_through(message_id, (yield fetch(self._sql.branch_nodes, chat_id)))
        if path is None:
            return None
        parted_at = path[0].seq
        users = 0
        if parted_at <= count:
            users = -(yield from self._take_off(chat_id, parted_at, changes + 1))
        ids = to_json([node.id for node in path])
        yield execute(self._sql.bring_on, chat_id, ids)
        yield execute(self._sql.delete_brought_on, chat_id, ids)
        users += sum(node.role == Role.USER.value for node in path)
        return (yield from self._branch_changed(chat_id, parted_at, parted_at - 1 + len(path), users))

    async def siblings(self, owner: str, chat_id: str, messages: Sequence[Message]) -> dict[str, Siblings]:
        _check_chat(chat_id)
        return await self._run(self._siblings(owner, chat_id, messages))

    def _siblings(self, owner: str, chat_id: str, messages: Sequence[Message]) -> Plan[dict[str, Siblings]]:
        found = yield fetchrow(self._sql.chat_branch_changes, chat_id, owner)
        if found is None:
            raise _no_chat(chat_id)
        if found[0] == 0 or not messages:
            return {}  # never branched
        first, last = min(m.seq for m in messages), max(m.seq for m in messages)
        off_branch = yield fetch(self._sql.off_branch_between, chat_id, first, last)
        if not off_branch:
            return {}
        current = yield fetch(self._sql.current_between, chat_id, first - 1, last)
        return siblings_from_rows(messages, current, off_branch, self._moment)

    async def off_branch_messages(self, owner: str, chat_id: str) -> list[OffBranchMessage]:
        _check_chat(chat_id)
        rows = await self._run(only(fetch(self._sql.off_branch_messages, chat_id, owner)))
        kept = off_branch_from_rows(rows, self._moment, chat_id)
        if not needs_restoring([k.message for k in kept]):
            return kept
        messages = await self._attachments.restored([k.message for k in kept])
        return [replace(k, message=message) for k, message in zip(kept, messages, strict=True)]

    async def search_messages(
        self, owner: str, terms: Sequence[str], *, limit: int, after: SearchKey | None = None
    ) -> SearchPage:
        await self._driver.catch_up_search()
        plan = self._driver.search(owner, terms, limit + 1, after)
        found = await self._run(plan, write=self._driver.search_in_transaction)
        hits = [self._hit(row) for row in found[:limit]]
        return SearchPage(hits, len(found) > limit)

    def _hit(self, row: Row) -> SearchHit:
        chat_id, title, message_id, seq, role, created_at, score, snippet = row
        return SearchHit(
            chat_id, title, message_id, seq, ROLES[role], self._moment(created_at), marked_parts(snippet), float(score)
        )

    async def get_summary(self, owner: str, chat_id: str) -> SummaryText | None:
        _check_chat(chat_id)
        found = await self._run(only(fetchrow(self._sql.select_summary, chat_id, owner)))
        return joined_summary_from_row(found, self._moment, chat_id)

    async def save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> None:
        _check_chat(chat_id)
        await self._run(self._save_summary(owner, chat_id, summary))

    def _save_summary(self, owner: str, chat_id: str, summary: SummaryText) -> Plan[None]:
        values = (
            summary.summary,
            to_json(summary.highlights),
            summary.up_to_seq,
            self._stamp(summary.created_at),
            summary.through_id,
        )
        if (yield fetchrow(self._sql.save_summary, chat_id, owner, *values)) is None:
            yield from self._chat(owner, chat_id)  # not saved: the chat is missing, or its cached summary covers more

    async def get_rolling_summary(self, owner: str, chat_id: str) -> RollingSummary | None:
        _check_chat(chat_id)
        found = await self._run(only(fetchrow(self._sql.select_rolling_summary, chat_id, owner)))
        if found is None:
            raise _no_chat(chat_id)
        return None if found[0] is None else RollingSummary(found[0], found[1])

    async def claim_rolling_summary(self, owner: str, chat_id: str, *, hold_seconds: float) -> bool:
        if not could_be_id(chat_id):
            return False  # as for any chat that is not there
        return await self._run(self._claim_rolling_summary(owner, chat_id, hold_seconds))

    def _claim_rolling_summary(self, owner: str, chat_id: str, hold_seconds: float) -> Plan[bool]:
        try:
            return (yield fetchrow(self._sql.claim_rolling_summary, chat_id, owner, hold_seconds)) is not None
        except ChatNotFoundError:  # deleted while we wrote
            return False

    async def end_rolling_summary(self, owner: str, chat_id: str, summary: RollingSummary | None) -> None:
        if not could_be_id(chat_id):
            return  # no chat, no hold to end
        kept = (summary.up_to_seq, summary.text, summary.through_id) if summary is not None else (0, "", None)
        await self._run(only(execute(self._sql.end_rolling_summary, chat_id, owner, *kept)))

    async def claim_key(
        self, owner: str, key: str, fingerprint: str, *, expired_before: datetime, abandoned_before: datetime
    ) -> KeyClaim:
        abandoned_before = self._tickets.abandoned_before(owner, key, abandoned_before)
        claimed, previous = await self._driver.claim_key(
            owner,
            key,
            fingerprint,
            now=self._stamp(utcnow()),
            expired_before=self._stamp(expired_before),
            abandoned_before=self._stamp(abandoned_before),
        )
        return claim_from_row(claimed, previous, self._moment, expired_before)

    async def update_key(
        self,
        owner: str,
        key: str,
        *,
        state: KeyState,
        result: str | None = None,
        user_message_id: str | None = None,
    ) -> None:
        values = (owner, key, state.value, result, user_message_id, self._stamp(utcnow()))
        await self._run(only(execute(self._sql.update_key, *values)))

    def keep_key_alive(self, owner: str, key: str) -> None:
        self._tickets.keep_key_alive(owner, key)

    def let_key_lapse(self, owner: str, key: str) -> None:
        self._tickets.let_key_lapse(owner, key)

    async def release_key(self, owner: str, key: str) -> None:
        await self._run(only(execute(self._sql.release_key, owner, key)))

    async def purge_keys(self, *, expired_before: datetime) -> int:
        purged: int = await self._run(only(rowcount(self._sql.purge_keys, self._stamp(expired_before))))
        return purged

    async def save_response(self, owner: str, response: StoredResponse, *, live_for: float | None = None) -> None:
        response = await self._attachments.kept_response(response)
        values = response_values(owner, response, self._stamp(response.created_at), live_for)
        await self._run(only(execute(self._sql.insert_response, *values)))

    async def update_response(
        self,
        owner: str,
        response: StoredResponse,
        *,
        expected: Collection[str] = UNFINISHED_RESPONSES,
        live_for: float | None = None,
        if_lapsed: bool = False,
    ) -> bool:
        if not could_be_id(response.id):
            return False
        response = await self._attachments.kept_response(response)
        values = response_update_values(owner, response, expected, live_for, if_lapsed)
        return await self._run(only(fetchrow(self._sql.update_response, *values))) is not None

    async def get_response(self, owner: str, response_id: str) -> StoredResponse:
        if not could_be_id(response_id):
            raise _no_response(response_id)
        found = await self._run(only(fetchrow(self._sql.select_response, response_id, owner)))
        response = response_from_row(found, self._moment, response_id)
        return replace(response, input_items=await self._attachments.restored_items(response.input_items))

    async def delete_response(self, owner: str, response_id: str) -> None:
        if (
            not could_be_id(response_id)
            or await self._run(only(fetchrow(self._sql.delete_response, response_id, owner))) is None
        ):
            raise _no_response(response_id)

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
        return await self._driver.renew_rate_lease(
            key,
            lease,
            spent=spent,
            want=want,
            limit=limit,
            window_seconds=window_seconds,
            lease_seconds=lease_seconds,
        )

    @property
    def broadcast(self) -> Broadcast | None:
        return self._driver.broadcast


def _no_chat(chat_id: str) -> ChatNotFoundError:
    return ChatNotFoundError(f"no chat {chat_id!r}")


def _no_response(response_id: str) -> ResponseNotFoundError:
    return ResponseNotFoundError(f"no response {response_id!r}")


def _check_chat(chat_id: str) -> None:
    """Raise ChatNotFoundError, without asking the database, for a chat id that cannot be one."""
    if not could_be_id(chat_id):
        raise _no_chat(chat_id)


def _cursors(page: PageRequest) -> tuple[str, str]:
    """The page's cursors as a lookup asks for them: NOWHERE for one absent or that cannot be an id."""
    return findable(page.after or ""), findable(page.before or "")


@asynccontextmanager
async def sql_store(
    driver: Driver, *, lease_seconds: float, poll_seconds: tuple[float, float], blobs: BlobStore | None = None
) -> AsyncIterator[SqlStore]:
    """The store over `driver`, its turn tickets' heartbeat running for the block; attachments'
    bytes in `blobs` (a directory), else in the database's `blobs` table."""
    recent = RecentMessages()
    async with Tickets(driver, recent, lease_seconds=lease_seconds, poll_seconds=poll_seconds) as tickets:
        yield SqlStore(driver, tickets, recent, blobs)
