"""The seam between chatkeep and whatever writes replies."""

from collections.abc import AsyncIterator, Sequence
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

    def stream(self, prompt: Sequence[PromptMessage]) -> AsyncIterator[str | Reply]:
        """The reply to `prompt` as it is written: text deltas, then one final Reply.

        The final Reply's content is the deltas joined. Raises like `complete`; a stream the
        upstream cuts or garbles raises LLMBadResponseError (there is no final Reply then).
        Retries happen only before the first delta.
        """
        ...

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        """A summary and highlights covering `previous` plus `messages`. Raises LLMError like `complete`."""
        ...
