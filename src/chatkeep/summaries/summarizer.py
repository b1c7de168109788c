"""How a chat is summarized: by the LLM, or extractively without one.

Two kinds of summary, made the same way (the previous one plus the messages after it make the
next, so a long chat costs one call per new batch, not per history):
- a chat's summary for people (`summarize`): a few sentences and highlights, asked of the model
  as JSON with `response_format` (a JSON schema, else JSON mode, else plain words, as far as the
  upstream accepts); an answer in prose is kept as the summary, with extractive highlights;
- a chat's rolling summary for the model (`condense`, rolling.py): plain text that keeps every
  fact, sent upstream in place of the messages it covers.
`Summarizer` is the strategy: `LLMSummarizer` asks the model (any `LLM`: summaries are not part
of that seam), `ExtractiveSummarizer` serves the offline provider.
"""

import re
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from chatkeep.domain import Message, PromptMessage, Role
from chatkeep.errors import LLMBadResponseError, LLMRejectedError
from chatkeep.llm import LLM
from chatkeep.llm.base import CallOptions

MIN_HIGHLIGHTS = 3
MAX_HIGHLIGHTS = 5
HIGHLIGHT_CHARS = 160
SUMMARY_CHARS = 2000

INSTRUCTIONS = f"""You summarize conversations between a user and an AI assistant.
Answer with one JSON object and nothing else, of this form:
{{"summary": "<2 to 4 sentences on what the conversation is about and what was settled>",
"highlights": ["<{MIN_HIGHLIGHTS} to {MAX_HIGHLIGHTS} key points, each under {HIGHLIGHT_CHARS} characters>"]}}
When a previous summary is given, fold the new messages into it: the result covers the whole conversation."""

CONDENSE_INSTRUCTIONS = """You keep the running summary of a conversation between a user and an AI assistant,
which the assistant reads in place of the older messages. Fold the new messages into the previous summary (if any).
Keep every fact, name, number, date, preference, decision and open question either side stated, briefly;
drop greetings and filler. Answer with the summary alone, in plain text, at most {words} words."""

# What the chat summary's JSON answer must look like, for upstreams that take a schema.
SUMMARY_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string"}, "highlights": {"type": "array", "items": {"type": "string"}}},
    "required": ["summary", "highlights"],
    "additionalProperties": False,
}
# Asked in this order; an upstream that refuses one (a 400) is asked the next from then on.
RESPONSE_FORMATS: tuple[dict[str, Any] | None, ...] = (
    {"type": "json_schema", "json_schema": {"name": "chat_summary", "schema": SUMMARY_SCHEMA, "strict": True}},
    {"type": "json_object"},
    None,
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")

SummaryDraft = tuple[str, list[str]]


class Summarizer(Protocol):
    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        """A summary and highlights covering `previous` plus `messages`. Raises LLMError."""
        ...

    async def condense(self, previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
        """The rolling summary covering `previous` plus `messages`, within about `max_tokens`. Raises LLMError."""
        ...


class LLMSummarizer:
    def __init__(self, llm: LLM) -> None:
        self._llm = llm
        self._format = 0  # the first of RESPONSE_FORMATS the upstream has not refused

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        prompt = summary_prompt(previous, messages)
        while True:
            response_format = RESPONSE_FORMATS[self._format]
            try:
                reply = await self._llm.complete(prompt, CallOptions(response_format=response_format))
            except LLMRejectedError:
                if response_format is None:
                    raise
                self._format += 1  # this upstream takes no such format: ask the next from now on
                continue
            return summary_from_answer(reply.content, previous, messages)

    async def condense(self, previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
        words = max_tokens * 3 // 4
        instructions = CONDENSE_INSTRUCTIONS.format(words=words)
        parts = [f"Previous summary:\n{previous}"] if previous else []
        parts.append("New messages:\n" + _transcript(messages))
        prompt: list[PromptMessage] = [
            {"role": "system", "content": instructions},
            {"role": "user", "content": "\n\n".join(parts)},
        ]
        reply = await self._llm.complete(prompt, CallOptions(max_tokens=max_tokens))
        text = reply.content.strip()
        if not text:
            raise LLMBadResponseError("the LLM answered an empty summary")
        return _clip(text, max_tokens * 4)


class ExtractiveSummarizer:
    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        return extractive_summary(previous, messages)

    async def condense(self, previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
        return extractive_condensed(previous, messages, max_tokens=max_tokens)


def summary_prompt(previous: SummaryDraft | None, messages: Sequence[Message]) -> list[PromptMessage]:
    """The prompt asking for a summary of `previous` (if any) extended by `messages`."""
    parts = []
    if previous is not None:
        text, highlights = previous
        parts.append("Previous summary:\n" + text)
        if highlights:  # none when the previous summary is the chat's rolling summary, anew
            parts.append("Previous highlights:\n" + "\n".join(f"- {h}" for h in highlights))
    parts.append(("New messages:\n" if previous else "Conversation:\n") + _transcript(messages))
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


def summary_from_answer(answer: str, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
    """The model's JSON summary; or, when it answered in prose, that prose as the summary with
    highlights taken extractively. Raises LLMBadResponseError only for an empty answer."""
    try:
        return parse_summary(answer)
    except LLMBadResponseError:
        prose = " ".join(answer.split())
        if not prose:
            raise
        return _clip(prose, SUMMARY_CHARS), extractive_summary(previous, messages)[1]


def extractive_condensed(previous: str | None, messages: Sequence[Message], *, max_tokens: int) -> str:
    """A rolling summary made without a model: each user message's first sentence, in order.

    When they outgrow `max_tokens`, the oldest lines after the first few give way, so the
    conversation's opening and its latest turns stay.
    """
    lines = previous.splitlines() if previous else []
    lines += [f"- {_first_sentence(m.content)}" for m in messages if m.role is Role.USER and m.content.strip()]
    limit = max_tokens * 4
    while sum(len(line) + 1 for line in lines) > limit and len(lines) > 4:
        del lines[3]
    return _clip("\n".join(lines), limit)


def extractive_summary(previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
    """A summary made without a model: the user's most informative sentences, in order.

    Candidates are the first sentence of each user message plus the previous highlights (or,
    from a rolling summary, its lines); the ones with the most distinct words win, so summarizing
    batch by batch gives the same result as summarizing everything at once (up to ties).
    """
    candidates = list(previous[1]) if previous else []
    if previous and not candidates:  # a rolling summary made offline: a line per user message
        candidates = [line[2:] for line in previous[0].splitlines() if line.startswith("- ")]
    candidates += [_first_sentence(m.content) for m in messages if m.role is Role.USER]
    unique = list(dict.fromkeys(c for c in candidates if c))
    ranked = sorted(range(len(unique)), key=lambda i: (-len(set(_WORD.findall(unique[i].lower()))), i))
    highlights = [unique[i] for i in sorted(ranked[:MAX_HIGHLIGHTS])]
    if not highlights:
        return "No user messages yet.", []
    topics = "; ".join(f"“{h}”" for h in highlights[:2])
    return f"Offline extractive summary (no language model is connected). The user asked about {topics}.", highlights


def _transcript(messages: Sequence[Message]) -> str:
    return "\n".join(f"{m.role.value}: {m.content}" for m in messages)


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    return _clip(_SENTENCE_END.split(line, maxsplit=1)[0], HIGHLIGHT_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
