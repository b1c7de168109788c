"""ChatSummaries: a chat's summary for people, kept up to date by summarizing its new messages into the cached one.

Exact counts come from the store on every call; the text is refreshed only when messages came
since (or when asked to start over), once per chat at a time however many callers ask, in a
task of its own so that a caller who goes away does not waste the LLM call.
"""

import asyncio
import logging

from chatkeep.context import oldest_after
from chatkeep.domain import Summary, SummaryText, utcnow
from chatkeep.errors import LLMError
from chatkeep.metrics import Metrics
from chatkeep.store import ChatStore
from chatkeep.summaries.summarizer import Summarizer

log = logging.getLogger(__name__)


class ChatSummaries:
    def __init__(self, store: ChatStore, summarizer: Summarizer, metrics: Metrics, *, budget: int) -> None:
        self._store = store
        self._summarizer = summarizer
        self._metrics = metrics
        self._budget = budget  # tokens of messages summarized per LLM call
        self._refreshing: dict[str, asyncio.Task[SummaryText | None]] = {}

    async def aclose(self) -> None:
        """Wait for refreshes still running, so none is cut off mid-write."""
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def summary(self, owner: str, chat_id: str, *, refresh: bool = False) -> Summary:
        """Exact counts, and the cached summary brought up to date when stale or asked to.

        When the LLM fails, the last good summary is served marked stale (or none at all):
        counts never fail because of the LLM. Raises ChatNotFoundError.
        """
        stats = await self._store.message_stats(owner, chat_id)
        cached = await self._store.get_summary(owner, chat_id)
        if stats.last_seq and (refresh or cached is None or cached.up_to_seq < stats.last_seq):
            cached = await self._refreshed(owner, chat_id, None if refresh else cached) or cached
            stats = await self._store.message_stats(owner, chat_id)
        stale = (cached.up_to_seq if cached else 0) < stats.last_seq
        return Summary(chat_id=chat_id, stats=stats, text=cached, stale=stale)

    async def _refreshed(self, owner: str, chat_id: str, start: SummaryText | None) -> SummaryText | None:
        task = self._refreshing.get(chat_id)
        if task is None:
            task = asyncio.create_task(self._refresh(owner, chat_id, start))
            self._refreshing[chat_id] = task
            task.add_done_callback(lambda _: self._refreshing.pop(chat_id, None))
        return await asyncio.shield(task)

    async def _refresh(self, owner: str, chat_id: str, start: SummaryText | None) -> SummaryText | None:
        """Fold the messages after `start` into it, batch by batch; None when the LLM failed at once."""
        summary = start
        while True:
            after_seq = summary.up_to_seq if summary else 0
            batch = await oldest_after(self._store, owner, chat_id, after_seq=after_seq, budget=self._budget)
            if not batch:
                return summary
            previous = (summary.summary, summary.highlights) if summary else None
            try:
                text, highlights = await self._summarizer.summarize(previous, batch)
            except LLMError as error:
                log.warning("summary of chat %s failed: %s", chat_id, error.detail)
                self._metrics.summary_made("failed")
                return summary
            self._metrics.summary_made("made")
            summary = SummaryText(text, highlights, up_to_seq=batch[-1].seq, created_at=utcnow())
            await self._store.save_summary(owner, chat_id, summary)
