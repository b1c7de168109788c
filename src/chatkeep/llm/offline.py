"""The provider used when no model is configured: deterministic, no network, and says so.

It lets a newcomer try the whole API with `make run`. Each reply is labelled as offline, tells
how to connect a real model, and reflects on the conversation it was given (how many turns,
what was asked first), which also makes it a handy probe of the context chatkeep builds.
"""

import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from chatkeep.context import estimate_tokens
from chatkeep.domain import PromptMessage, Usage
from chatkeep.llm.base import NO_OPTIONS, CallOptions, Reply, StreamItem

OFFLINE_MODEL = "chatkeep-offline"
QUOTE_CHARS = 200
_WORDS = re.compile(r"\S+\s*|\s+")
HOW_TO_CONNECT = (
    "To get real answers, restart chatkeep with a model: for Ollama, vLLM, LM Studio or another "
    "OpenAI-compatible server, set its URL (no key needed), e.g. OPENAI_BASE_URL=http://127.0.0.1:11434/v1 "
    "for Ollama, and CHATKEEP_LLM_MODEL to one of its models; for OpenAI, set OPENAI_API_KEY."
)


class OfflineLLM:
    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        asked = [_text(m["content"]) for m in prompt if m["role"] == "user"]
        last = asked[-1] if asked else ""
        lines = [f"[offline reply: no language model is connected] You said: “{_quote(last)}”."]
        if len(asked) > 1:
            lines.append(
                f"This is message {len(asked)} of yours that I can see in this chat; "
                f"your first was: “{_quote(asked[0])}”."
            )
        else:
            lines.append("This is the first message of yours that I can see in this chat.")
        lines.append(HOW_TO_CONNECT)
        content = " ".join(lines)
        usage = Usage(
            prompt_tokens=sum(estimate_tokens(_text(m["content"])) for m in prompt),
            completion_tokens=estimate_tokens(content),
        )
        return Reply(content=content, model=OFFLINE_MODEL, usage=usage)

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[StreamItem, None]:
        reply = await self.complete(prompt, options)
        for word in _WORDS.findall(reply.content):
            yield word
        yield reply


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 1] + "…"


def _text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's words: its text, or its text parts' joined (images and files aside)."""
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if part.get("type") == "text")
    return content or ""
