"""The seam between chatkeep and whatever writes replies: transport only.

An `LLM` turns a prompt into a reply and nothing more. What applies to any model (the circuit
breaker, metrics) wraps one (`breaker.py`, `instrumented.py`); what chatkeep asks of a model
(summaries) is built on `complete` where it is needed (`summaries.py`).
"""

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatkeep.domain import IncompleteReason, MessageStatus, PromptMessage, Usage


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A function the model asks the caller to run: its call id, name and JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A piece of a tool call as the model streams it: the call's place in the reply (`index`),
    its id and name (known from its first piece on), and the next bit of its JSON arguments."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True, frozen=True)
class Reply:
    content: str
    model: str | None
    usage: Usage | None
    status: MessageStatus = MessageStatus.COMPLETED  # incomplete: cut short (the token limit, a stop)
    tool_calls: tuple[ToolCall, ...] = ()
    incomplete_reason: IncompleteReason | None = None


@dataclass(slots=True, frozen=True)
class CallOptions:
    """What a request may ask of the model beyond its prompt, as Chat Completions names it.

    `tools` are function tools in the Chat Completions shape; `model` replaces the configured one.
    None leaves a knob to the model's default.
    """

    model: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    response_format: dict[str, Any] | None = None  # JSON mode or a JSON schema the reply must follow


NO_OPTIONS = CallOptions()

StreamItem = str | ToolCallDelta | Reply  # what `LLM.stream` yields


class LLM(Protocol):
    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        """The assistant's reply to `prompt` (oldest message first): text, tool calls, or both.

        Raises an LLMError subclass: LLMTimeoutError once the configured timeout is spent
        (retries included), LLMRateLimitedError, LLMUnavailableError or LLMBadResponseError
        after the configured retries.
        """
        ...

    def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator["StreamItem", None]:
        """The reply to `prompt` as it is written: text deltas and tool call pieces, then one final Reply.

        A delta holds whatever text arrived since the last one (one token or many); a
        ToolCallDelta, the arguments of one call that arrived since its last piece. The final
        Reply's content is the deltas joined, its tool calls the pieces joined. Raises like `complete`; a stream the
        upstream cuts or garbles raises LLMBadResponseError (there is no final Reply then).
        Retries happen only before the first delta.
        """
        ...
