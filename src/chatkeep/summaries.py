"""How a chat is summarized: by the LLM in one plain completion, or extractively without one.

Summaries are folded incrementally: the previous summary plus the messages that came after it
make the next one, so refreshing a long chat costs one call per new batch, not per history.
`Summarizer` is the strategy the `SummaryKeeper` is given: `LLMSummarizer` asks the model
(any `LLM`: summaries are not part of that seam), `ExtractiveSummarizer` serves the offline
provider.
"""

import re
from collections.abc import Sequence
from typing import Protocol

import orjson

from chatkeep.domain import Message, PromptMessage, Role
from chatkeep.errors import LLMBadResponseError
from chatkeep.llm import LLM

MIN_HIGHLIGHTS = 3
MAX_HIGHLIGHTS = 5
HIGHLIGHT_CHARS = 160
SUMMARY_CHARS = 2000

INSTRUCTIONS = f"""You summarize conversations between a user and an AI assistant.
Answer with one JSON object and nothing else, of this form:
{{"summary": "<2 to 4 sentences on what the conversation is about and what was settled>",
"highlights": ["<{MIN_HIGHLIGHTS} to {MAX_HIGHLIGHTS} key points, each under {HIGHLIGHT_CHARS} characters>"]}}
When a previous summary is given, fold the new messages into it: the result covers the whole conversation."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")

SummaryDraft = tuple[str, list[str]]


class Summarizer(Protocol):
    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        """A summary and highlights covering `previous` plus `messages`. Raises LLMError."""
        ...


class LLMSummarizer:
    def __init__(self, llm: LLM) -> None:
        self._llm = llm

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        reply = await self._llm.complete(summary_prompt(previous, messages))
        return parse_summary(reply.content)


class ExtractiveSummarizer:
    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        return extractive_summary(previous, messages)


def summary_prompt(previous: SummaryDraft | None, messages: Sequence[Message]) -> list[PromptMessage]:
    """The prompt asking for a summary of `previous` (if any) extended by `messages`."""
    parts = []
    if previous is not None:
        text, highlights = previous
        parts.append("Previous summary:\n" + text)
        parts.append("Previous highlights:\n" + "\n".join(f"- {h}" for h in highlights))
    transcript = "\n".join(f"{m.role.value}: {m.content}" for m in messages)
    parts.append(("New messages:\n" if previous else "Conversation:\n") + transcript)
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_summary(answer: str) -> SummaryDraft:
    """Read the model's JSON answer, tolerating prose or code fences around the object.

    Raises LLMBadResponseError when no usable summary is in the answer.
    """
    start, end = answer.find("{"), answer.rfind("}")
    try:
        data = orjson.loads(answer[start : end + 1]) if 0 <= start < end else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), str) or not data["summary"].strip():
        raise LLMBadResponseError("the LLM's summary was not the JSON object it was asked for")
    raw_highlights = data.get("highlights")
    highlights = [
        _clip(h.strip(), HIGHLIGHT_CHARS)
        for h in (raw_highlights if isinstance(raw_highlights, list) else [])
        if isinstance(h, str) and h.strip()
    ]
    return _clip(data["summary"].strip(), SUMMARY_CHARS), highlights[:MAX_HIGHLIGHTS]


def extractive_summary(previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
    """A summary made without a model: the user's most informative sentences, in order.

    Candidates are the first sentence of each user message plus the previous highlights; the
    ones with the most distinct words win, so folding batch by batch gives the same result as
    summarizing everything at once (up to ties).
    """
    candidates = list(previous[1]) if previous else []
    candidates += [_first_sentence(m.content) for m in messages if m.role is Role.USER]
    unique = list(dict.fromkeys(c for c in candidates if c))
    ranked = sorted(range(len(unique)), key=lambda i: (-len(set(_WORD.findall(unique[i].lower()))), i))
    highlights = [unique[i] for i in sorted(ranked[:MAX_HIGHLIGHTS])]
    if not highlights:
        return "No user messages yet.", []
    topics = "; ".join(f"“{h}”" for h in highlights[:2])
    return f"Offline extractive summary (no language model is connected). The user asked about {topics}.", highlights


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    return _clip(_SENTENCE_END.split(line, maxsplit=1)[0], HIGHLIGHT_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
