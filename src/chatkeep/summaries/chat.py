"""ChatSummaries: a chat's summary for people, cached, and brought up to date in a bounded number of LLM calls.

Exact counts come from the store on every call. The summary text is cached with the `seq` it
covers. When nothing came since, it is answered as it is: no LLM call, no rate slot, `refresh`
or not. Otherwise it is updated, once per chat at a time however many callers ask, in a task of
its own so that a caller who goes away does not waste the LLM calls. An update is one request to
the LLM as far as the owner's rate limit goes (it takes a slot, as a turn does; over the limit
the caller gets the cached summary marked stale, or, with `refresh` or nothing cached, the 429)
and makes at most MAX_SUMMARY_CHUNKS calls, whatever the chat holds. It starts from

- the cached summary, folding into it the messages that came since; or, when the chat's rolling
  summary (rolling.py) covers more of the chat, from that: the rolling summary already says what
  those older messages said, so they are not read again;
- with `refresh`, from the rolling summary, or from the first message when there is none: the
  summary written anew. A start over that cannot reach the newest message within the bound would
  lose ground, so it continues the cached summary instead.

An update that cannot reach the newest message within the bound (a backlog of many long items
appended at once) stores how far it got, stays `stale`, and the next request goes on from there.
"""

import asyncio
import logging
from dataclasses import dataclass, replace

from chatkeep.context import MESSAGE_OVERHEAD_TOKENS, message_tokens, oldest_after
from chatkeep.domain import Message, Summary, SummaryText, utcnow
from chatkeep.errors import LLMError, RateLimitedError
from chatkeep.metrics import Metrics
from chatkeep.rate_limit import RateLimit
from chatkeep.store import ChatStore
from chatkeep.summaries.summarizer import Summarizer, SummaryDraft

log = logging.getLogger(__name__)

MAX_SUMMARY_CHUNKS = 2
"""LLM calls one summary update makes at most, however long the chat. Each call folds one chunk,
the next `budget` tokens of messages (half the context budget; a longer message cut to fit), into
the summary so far. Two because the messages after a rolling summary that keeps up take about the
context budget at most (an update of it is due past `summarize_at` of the budget): a chat whose
rolling summary keeps up is summarized to its newest message in one update, and any backlog
beyond costs two calls a request, not one per chunk of the chat."""


@dataclass(slots=True, frozen=True)
class _Start:
    """What an update builds on: a summary of the messages up to `up_to_seq` (None: nothing yet),
    and the chunks of messages after it to fold in, oldest first."""

    previous: SummaryDraft | None
    up_to_seq: int
    chunks: list[list[Message]]

    def reaches(self, seq: int) -> bool:
        return bool(self.chunks) and self.chunks[-1][-1].seq >= seq


class ChatSummaries:
    def __init__(
        self,
        store: ChatStore,
        summarizer: Summarizer,
        metrics: Metrics,
        *,
        budget: int,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self._store = store
        self._summarizer = summarizer
        self._metrics = metrics
        self._budget = budget  # tokens of messages summarized per LLM call
        self._rate_limit = rate_limit  # the owner's, as turns take it
        self._updating: dict[str, asyncio.Task[SummaryText | None]] = {}

    async def aclose(self) -> None:
        """Wait for updates still running, so none is cut off mid-write."""
        await asyncio.gather(*self._updating.values(), return_exceptions=True)

    async def summary(self, owner: str, chat_id: str, *, refresh: bool = False) -> Summary:
        """Exact counts, and the cached summary brought up to date when messages came since it
        (with `refresh`, written anew: see the module).

        When the LLM fails, the last good summary is served marked stale (or none at all): counts
        never fail because of the LLM. Raises ChatNotFoundError; RateLimitedError when the LLM
        would be called past the owner's rate limit and `refresh` was asked or nothing is cached
        (else the cached summary is served, stale); StoreUnavailableError when the limit cannot
        be counted.
        """
        stats = await self._store.message_stats(owner, chat_id)
        cached = await self._store.get_summary(owner, chat_id)
        if (cached.up_to_seq if cached else 0) < stats.last_seq:
            updated = await self._updated(owner, chat_id, cached, stats.last_seq, refresh=refresh)
            if updated is not None and (cached is None or updated.up_to_seq >= cached.up_to_seq):
                cached = updated
            stats = await self._store.message_stats(owner, chat_id)
        stale = (cached.up_to_seq if cached else 0) < stats.last_seq
        return Summary(chat_id=chat_id, stats=stats, text=cached, stale=stale)

    async def _updated(
        self, owner: str, chat_id: str, cached: SummaryText | None, last_seq: int, *, refresh: bool
    ) -> SummaryText | None:
        """The summary as the chat's update leaves it (joining the one running, which costs no
        slot); None when none was made, or the rate limit turned a caller with a cached one away."""
        task = self._updating.get(chat_id)
        if task is None and self._rate_limit is not None:
            try:
                await self._rate_limit.check(owner)
            except RateLimitedError:
                if refresh or cached is None:
                    raise
                return None
            task = self._updating.get(chat_id)  # one may have started while the slot was taken
        if task is None:
            task = asyncio.create_task(
                self._update(owner, chat_id, cached, last_seq, refresh), name=f"chatkeep-summary-{chat_id}"
            )
            self._updating[chat_id] = task
            task.add_done_callback(lambda _: self._updating.pop(chat_id, None))
        return await asyncio.shield(task)

    async def _update(
        self, owner: str, chat_id: str, cached: SummaryText | None, last_seq: int, refresh: bool
    ) -> SummaryText | None:
        """Fold the chunks after the start into it, one LLM call each, storing each step; the last
        summary made (None when none was: nothing to fold in, or the LLM failed at once)."""
        start = await self._start(owner, chat_id, cached, last_seq, refresh)
        previous = start.previous
        summary = None
        for chunk in start.chunks:
            try:
                text, highlights = await self._summarizer.summarize(previous, chunk)
            except LLMError as error:
                log.warning("summary of chat %s failed: %s", chat_id, error.detail)
                self._metrics.summary_made("failed")
                return summary
            self._metrics.summary_made("made")
            previous = text, highlights
            summary = SummaryText(text, highlights, chunk[-1].seq, utcnow(), through_id=chunk[-1].id)
            await self._store.save_summary(owner, chat_id, summary)
        return summary

    async def _start(
        self, owner: str, chat_id: str, cached: SummaryText | None, last_seq: int, refresh: bool
    ) -> _Start:
        """Where the update starts (see the module), with its chunks read."""
        rolling = await self._store.get_rolling_summary(owner, chat_id)
        if rolling is None:
            anew = await self._chunked(owner, chat_id, None, 0)
        else:
            anew = await self._chunked(owner, chat_id, (rolling.text, []), rolling.up_to_seq)
        if cached is None or (refresh and anew.reaches(last_seq)):
            return anew
        if rolling is not None and rolling.up_to_seq > cached.up_to_seq and anew.chunks:
            # the rolling summary covers what the cached one does and more: its highlights stay candidates
            return _Start((rolling.text, cached.highlights), rolling.up_to_seq, anew.chunks)
        return await self._chunked(owner, chat_id, (cached.summary, cached.highlights), cached.up_to_seq)

    async def _chunked(self, owner: str, chat_id: str, previous: SummaryDraft | None, up_to_seq: int) -> _Start:
        """A start after `up_to_seq`, with the next MAX_SUMMARY_CHUNKS chunks of messages after it."""
        chunks: list[list[Message]] = []
        after_seq = up_to_seq
        while len(chunks) < MAX_SUMMARY_CHUNKS:
            batch = await oldest_after(self._store, owner, chat_id, after_seq=after_seq, budget=self._budget)
            if not batch:
                break
            chunks.append([clipped(message, self._budget) for message in batch])
            after_seq = batch[-1].seq
        return _Start(previous, up_to_seq, chunks)


def clipped(message: Message, tokens: int) -> Message:
    """`message` with its content cut to about `tokens` of it (with the framing of a message),
    so that a message longer than a whole chunk is summarized by its beginning."""
    cost = message_tokens(message.content)
    if cost <= tokens:
        return message
    keep = len(message.content) * max(1, tokens - 2 * MESSAGE_OVERHEAD_TOKENS) // cost
    return replace(message, content=message.content[:keep].rstrip() + "…")
