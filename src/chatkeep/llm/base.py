"""The seam between chatkeep and whatever writes replies: transport only.

An `LLM` turns a prompt into a reply and nothing more. What applies to any model (the circuit
breaker, metrics) wraps one (`breaker.py`, `instrumented.py`); what chatkeep asks of a model
(summaries) is built on `complete` where it is needed (`summaries.py`).
"""

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatkeep.domain import MessageStatus, PromptMessage, Usage


@dataclass(slots=True, frozen=True)
class Reply:
    content: str
    model: str | None
    usage: Usage | None
    status: MessageStatus = MessageStatus.COMPLETED


class LLM(Protocol):
    async def complete(self, prompt: Sequence[PromptMessage]) -> Reply:
        """The assistant's reply to `prompt` (oldest message first).

        Raises an LLMError subclass: LLMTimeoutError once the configured timeout is spent
        (retries included), LLMRateLimitedError, LLMUnavailableError or LLMBadResponseError
        after the configured retries.
        """
        ...

    def stream(self, prompt: Sequence[PromptMessage]) -> AsyncGenerator[str | Reply, None]:
        """The reply to `prompt` as it is written: text deltas, then one final Reply.

        A delta holds whatever text arrived since the last one (one token or many). The final
        Reply's content is the deltas joined. Raises like `complete`; a stream the
        upstream cuts or garbles raises LLMBadResponseError (there is no final Reply then).
        Retries happen only before the first delta.
        """
        ...
