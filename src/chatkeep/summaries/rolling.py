"""Folds: a long chat's older messages folded into its rolling summary, off the turn's path.

When a chat outgrows the context budget, the turn's context (context.py) sends its rolling
summary and then the newest messages after what the summary covers, and says when a fold is
wanted: the unfolded messages take more than `fold_at` of the budget, or no longer all fit. A
fold then runs in a task of its own, so no turn waits for it: it folds the oldest unfolded
messages, up to the newest `keep_tokens` worth, into the summary (the previous summary plus
those messages make the next; one LLM call per batch), and stores the summary with the `seq` it
covers. Every message stays stored; only what goes upstream changes.

One fold per chat at a time: in this process a chat has at most one fold task, and across
processes the store's fold hold (`claim_rolling_summary`) admits one holder, whose hold lapses if it dies.
A turn that comes while a fold is behind or has failed falls back to truncation (its summary,
if any, and the newest messages that fit); the next fold catches up. A fold that failed is not
tried again on that chat for RETRY_SECONDS.
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

HOLD_SECONDS = 120.0  # a fold's hold in the store: longer than one LLM call may take
RETRY_SECONDS = 30.0
KEEP_BATCH = 64
INSTRUCTION_TOKENS = 120  # the fold's own instructions and framing


class RollingSummaries:
    def __init__(
        self,
        store: ChatStore,
        summarizer: Summarizer,
        metrics: Metrics,
        *,
        budget: int,
        fold_at: float,
        summary_tokens: int,
    ) -> None:
        self._store = store
        self._summarizer = summarizer
        self._metrics = metrics
        # Messages folded per LLM call: the call, with the previous summary and room for the next,
        # must itself fit the budget (it may be the model's whole context).
        self._batch_tokens = max(budget - 2 * summary_tokens - INSTRUCTION_TOKENS, budget // 4)
        self.fold_at = fold_at  # the share of the budget unfolded messages may take before a turn wants a fold
        # The newest messages a fold leaves as they are: well under fold_at, or every turn would want another fold.
        self._keep_tokens = int(budget * fold_at / 2)
        self._summary_tokens = summary_tokens
        self._folding: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}

    def want(self, owner: str, chat_id: str) -> None:
        """Fold the chat's older messages soon, unless a fold of it runs here or failed lately."""
        if chat_id in self._folding:
            return
        failed_at = self._failed_at.pop(chat_id, None)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            self._failed_at[chat_id] = failed_at
            return
        task = asyncio.create_task(self._fold(owner, chat_id), name=f"chatkeep-fold-{chat_id}")
        self._folding[chat_id] = task
        task.add_done_callback(lambda _: self._folding.pop(chat_id, None))

    async def aclose(self) -> None:
        """Stop the folds still running; each lets go of its hold."""
        for task in self._folding.values():
            task.cancel()
        await asyncio.gather(*self._folding.values(), return_exceptions=True)

    async def _fold(self, owner: str, chat_id: str) -> None:
        try:
            while await self._fold_once(owner, chat_id):
                pass
        except ChatNotFoundError:
            pass  # deleted meanwhile
        except Exception as error:
            if isinstance(error, LLMError):
                log.warning("folding chat %s failed: %s", chat_id, error.detail)
            else:
                log.exception("folding chat %s failed", chat_id)
            self._failed_at[chat_id] = time.monotonic()
            self._metrics.context_folded("failed")

    async def _fold_once(self, owner: str, chat_id: str) -> bool:
        """Fold one batch if the chat has older messages to fold and no one else folds it: whether
        there may be more."""
        if not await self._store.claim_rolling_summary(owner, chat_id, hold_seconds=HOLD_SECONDS):
            return False  # another process folds it, or the chat is gone
        folded = None
        try:
            summary = await self._store.get_rolling_summary(owner, chat_id)
            batch = await self._unfolded(owner, chat_id, summary.up_to_seq if summary is not None else 0)
            if not batch:
                return False
            previous = summary.text if summary is not None else None
            text = await self._summarizer.condense(previous, batch, max_tokens=self._summary_tokens)
            folded = RollingSummary(text, batch[-1].seq)
            self._metrics.context_folded("folded")
            return True
        finally:
            await self._store.end_rolling_summary(owner, chat_id, folded)

    async def _unfolded(self, owner: str, chat_id: str, folded_to: int) -> list[Message]:
        """The oldest messages after `folded_to` to fold now: never the newest `keep_tokens` worth."""
        keep_from = await self._keep_from(owner, chat_id, folded_to)
        if keep_from is None:
            return []
        return await oldest_after(
            self._store, owner, chat_id, after_seq=folded_to, before_seq=keep_from, budget=self._batch_tokens
        )

    async def _keep_from(self, owner: str, chat_id: str, folded_to: int) -> int | None:
        """The seq from which the newest unfolded messages stay as they are (the newest one at
        least); None when they all do."""
        kept = 0
        keep_from: int | None = None
        before: int | None = None
        while True:
            newest = await self._store.recent_messages(
                owner, chat_id, limit=KEEP_BATCH, before_seq=before, after_seq=folded_to
            )
            for message in newest:
                kept += message_tokens(message.content)
                if kept > self._keep_tokens and keep_from is not None:
                    return keep_from
                keep_from = message.seq
            if len(newest) < KEEP_BATCH:
                return None
            before = newest[-1].seq
