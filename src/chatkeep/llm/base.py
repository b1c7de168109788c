"""The seam between chatkeep and whatever writes replies."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chatkeep.domain import Message, PromptMessage, Usage
from chatkeep.summaries import SummaryDraft


@dataclass(slots=True, frozen=True)
class Reply:
    content: str
    model: str | None
    usage: Usage | None


class LLM(Protocol):
    async def complete(self, prompt: Sequence[PromptMessage]) -> Reply:
        """The assistant's reply to `prompt` (oldest message first).

        Raises an LLMError subclass: LLMTimeoutError once the configured timeout is spent
        (retries included), LLMRateLimitedError, LLMUnavailableError or LLMBadResponseError
        after the configured retries.
        """
        ...

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        """A summary and highlights covering `previous` plus `messages`. Raises LLMError like `complete`."""
        ...
