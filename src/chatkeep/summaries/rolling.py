"""Rolling summaries: a long chat's older messages summarized for the model, off the turn's path.

When a chat outgrows the context budget, the turn's context (context.py) sends its rolling
summary and then the newest messages after what the summary covers, and says when an update is
due: the messages after the summary take more than `summarize_at` of the budget, or no longer
all fit. An update then runs in a task of its own, so no turn waits for it: it summarizes the
oldest of those messages, up to the newest `keep_tokens` worth, into the summary (the previous
summary plus those messages make the next; one LLM call per batch), and stores the summary with
the `seq` it covers. Every message stays stored; only what goes upstream changes.

One update per chat at a time: in this process a chat has at most one update task, and across
processes the store's hold (`claim_rolling_summary`) admits one holder, whose hold lapses if it
dies. An update summarizes at most MAX_UPDATE_BATCHES batches, so a turn sets off a bounded
number of LLM calls however far behind the summary is (many long items appended at once). A
turn that comes while an update is behind or has failed falls back to truncation (its summary,
if any, and the newest messages that fit); the next update, which the next turn finding one due
starts, goes on from there. An update that failed is not tried again on that chat for
RETRY_SECONDS.
"""

import asyncio
import logging
import time

from chatkeep.context import message_tokens, oldest_after
from chatkeep.domain import Message, RollingSummary
from chatkeep.errors import ChatNotFoundError, LLMError
from chatkeep.metrics import Metrics
from chatkeep.store import ChatStore
from chatkeep.summaries.summarizer import Summarizer

log = logging.getLogger(__name__)

HOLD_SECONDS = 120.0  # an update's hold in the store: longer than one LLM call may take
RETRY_SECONDS = 30.0
KEEP_BATCH = 64
INSTRUCTION_TOKENS = 120  # the update's own instructions and framing
MAX_UPDATE_BATCHES = 2
"""LLM calls one update makes at most. A chat that keeps up needs no more: an update is due once
the messages after the summary take `summarize_at` of the budget, and it summarizes them down to
half that share, so under half the budget, while a batch takes at least a quarter of it. A
backlog beyond (many long items appended at once) is caught up turn by turn, each turn taking
the owner's rate slot."""


class RollingSummaries:
    def __init__(
        self,
        store: ChatStore,
        summarizer: Summarizer,
        metrics: Metrics,
        *,
        budget: int,
        summarize_at: float,
        summary_tokens: int,
    ) -> None:
        self._store = store
        self._summarizer = summarizer
        self._metrics = metrics
        # Messages summarized per LLM call: the call, with the previous summary and room for the next,
        # must itself fit the budget (it may be the model's whole context).
        self._batch_tokens = max(budget - 2 * summary_tokens - INSTRUCTION_TOKENS, budget // 4)
        # the share of the budget the messages after the summary may take before a turn finds an update due
        self.summarize_at = summarize_at
        # The newest messages an update leaves as they are: well under summarize_at, or every turn would find one due.
        self._keep_tokens = int(budget * summarize_at / 2)
        self._summary_tokens = summary_tokens
        self._updating: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}

    def want(self, owner: str, chat_id: str) -> None:
        """Update the chat's rolling summary soon, unless an update of it runs here or failed lately."""
        if chat_id in self._updating:
            return
        failed_at = self._failed_at.pop(chat_id, None)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            self._failed_at[chat_id] = failed_at
            return
        task = asyncio.create_task(self._update(owner, chat_id), name=f"chatkeep-rolling-summary-{chat_id}")
        self._updating[chat_id] = task
        task.add_done_callback(lambda _: self._updating.pop(chat_id, None))

    async def aclose(self) -> None:
        """Stop the updates still running; each lets go of its hold."""
        for task in self._updating.values():
            task.cancel()
        await asyncio.gather(*self._updating.values(), return_exceptions=True)

    async def _update(self, owner: str, chat_id: str) -> None:
        try:
            for _ in range(MAX_UPDATE_BATCHES):
                if not await self._update_once(owner, chat_id):
                    break
        except ChatNotFoundError:
            pass  # deleted meanwhile
        except Exception as error:
            if isinstance(error, LLMError):
                log.warning("updating the rolling summary of chat %s failed: %s", chat_id, error.detail)
            else:
                log.exception("updating the rolling summary of chat %s failed", chat_id)
            self._failed_at[chat_id] = time.monotonic()
            self._metrics.rolling_summary_updated("failed")

    async def _update_once(self, owner: str, chat_id: str) -> bool:
        """Summarize one batch if the chat has older messages to summarize and no one else does:
        whether there may be more."""
        if not await self._store.claim_rolling_summary(owner, chat_id, hold_seconds=HOLD_SECONDS):
            return False  # another process updates it, or the chat is gone
        updated = None
        try:
            summary = await self._store.get_rolling_summary(owner, chat_id)
            batch = await self._unsummarized(owner, chat_id, summary.up_to_seq if summary is not None else 0)
            if not batch:
                return False
            previous = summary.text if summary is not None else None
            text = await self._summarizer.condense(previous, batch, max_tokens=self._summary_tokens)
            updated = RollingSummary(text, batch[-1].seq, through_id=batch[-1].id)
            self._metrics.rolling_summary_updated("updated")
            return True
        finally:
            await self._store.end_rolling_summary(owner, chat_id, updated)

    async def _unsummarized(self, owner: str, chat_id: str, summarized_to: int) -> list[Message]:
        """The oldest messages after `summarized_to` to summarize now: never the newest `keep_tokens` worth."""
        keep_from = await self._keep_from(owner, chat_id, summarized_to)
        if keep_from is None:
            return []
        return await oldest_after(
            self._store, owner, chat_id, after_seq=summarized_to, before_seq=keep_from, budget=self._batch_tokens
        )

    async def _keep_from(self, owner: str, chat_id: str, summarized_to: int) -> int | None:
        """The seq from which the newest messages after the summary stay as they are (the newest one at
        least); None when they all do."""
        kept = 0
        keep_from: int | None = None
        before: int | None = None
        while True:
            newest = await self._store.recent_messages(
                owner, chat_id, limit=KEEP_BATCH, before_seq=before, after_seq=summarized_to
            )
            for message in newest:
                kept += message_tokens(message.content)
                if kept > self._keep_tokens and keep_from is not None:
                    return keep_from
                keep_from = message.seq
            if len(newest) < KEEP_BATCH:
                return None
            before = newest[-1].seq
