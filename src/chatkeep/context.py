"""What goes to the LLM for a turn: the system prompt, the rolling summary of a chat too long for
the budget (summaries/rolling.py), then the newest messages that fit, in the Chat Completions
shape (function calls as tool calls, their outputs as tool messages, a user message's images and
files as content parts beside its text).

The window is found by walking back from the newest message in batches sized by how many more
messages are likely to fit, so a turn reads O(window) messages, never O(history). Tokens are
estimated offline (see `estimate_tokens`) so nothing has to be downloaded at run time; the
estimate errs on the generous side so the budget is kept.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chatkeep.attachments import has_attachments
from chatkeep.domain import Message, PromptMessage, Role, RollingSummary
from chatkeep.store import ChatStore, TurnTicket

# Chat Completions frames every message with a few tokens (role, separators): OpenAI's cookbook
# counts 3 per message plus the reply primer; 4 is a safe round figure.
MESSAGE_OVERHEAD_TOKENS = 4
# An image at "low" detail costs 85 tokens; at "high" or "auto" (the API's default) a GPT-4o-class
# model counts 85 plus 170 for each 512-pixel tile of the image scaled to fit 2048x2048 and then to
# 768 pixels on its shorter side: at most 8 tiles, 1,445 tokens. The estimate counts that most, as
# it errs generous on text, rather than read each image's size on every turn.
LOW_DETAIL_IMAGE_TOKENS = 85
IMAGE_TOKENS = 1_445
FIRST_BATCH = 32
MAX_BATCH = 1024


def estimate_tokens(text: str) -> int:
    """An offline token estimate for BPE tokenizers of the GPT family (cl100k, o200k).

    ASCII text averages about 4 characters per token (OpenAI's rule of thumb; English prose
    measures 4.2-4.6), so we count 4 to stay on the safe side. Other scripts cost about one
    token per character (CJK) down to one per two bytes (accented Latin, Cyrillic); counting a
    token per 3 UTF-8 bytes lands at one per CJK character and over-counts the rest.
    """
    if text.isascii():
        return len(text) // 4 + 1
    return len(text.encode()) // 3 + 1


def message_tokens(content: str) -> int:
    return estimate_tokens(content) + MESSAGE_OVERHEAD_TOKENS


def image_tokens(detail: object) -> int:
    """What an image at `detail` takes of the budget (see IMAGE_TOKENS)."""
    return LOW_DETAIL_IMAGE_TOKENS if detail == "low" else IMAGE_TOKENS


def attachment_tokens(item: dict[str, Any] | None) -> int:
    """What a stored message's images add to its text's tokens: none unless it is an item with images."""
    content = item.get("content") if item is not None else None
    if not isinstance(content, list):
        return 0
    return sum(
        image_tokens(part.get("detail"))
        for part in content
        if isinstance(part, dict) and part.get("type") == "input_image"
    )


def prompt_tokens(prompt: Sequence[PromptMessage]) -> int:
    """The tokens of a prompt as the context builder prices its messages: the text of each (a tool
    call as `name(arguments)`, the words it is stored with), its images, and each message's framing."""
    total = 0
    for message in prompt:
        content: Any = message.get("content")
        if isinstance(content, list):  # content parts: their text counts, and their images
            parts = [part for part in content if isinstance(part, dict)]
            total += sum(image_tokens(_detail(part)) for part in parts if part.get("type") == "image_url")
            content = "\n".join(str(part.get("text", "")) for part in parts)
        calls = [call["function"] for call in message.get("tool_calls", [])]
        text = "\n".join([content or "", *(f"{call['name']}({call['arguments']})" for call in calls)])
        total += message_tokens(text)
    return total


def _detail(part: dict[str, Any]) -> object:
    image = part.get("image_url")
    return image.get("detail") if isinstance(image, dict) else None


class AnyMessage(Protocol):
    """A message as stored or about to be: `Message` and `NewMessage` both are."""

    @property
    def role(self) -> Role: ...

    @property
    def content(self) -> str: ...

    @property
    def item(self) -> dict[str, Any] | None: ...


@dataclass(slots=True, frozen=True)
class Context:
    prompt: list[PromptMessage]
    summary_due: bool = False  # the older messages crowd the budget: time to update the rolling summary


async def build_context(
    store: ChatStore,
    owner: str,
    chat_id: str,
    *,
    system_prompt: str,
    budget: int,
    reply_tokens: int = 0,
    summarize_at: float | None = None,
    ticket: TurnTicket | None = None,
) -> Context:
    """The prompt for the chat's next reply, oldest first, within `budget` tokens with room for
    `reply_tokens` of reply.

    The newest message is always kept whole, even over budget (it is what must be answered);
    older ones are added while they fit, and the walk stops at the first that does not, so the
    context is always a contiguous tail of the chat. Each message is read once, in the same pass
    that prices it: this is the part of a turn that grows with the chat. A chat that does not
    fit has its rolling summary sent before that tail, when it has one and `summarize_at` is
    set: then the tail starts after what the summary covers, and an update of the summary is due
    once the messages after it take more than `summarize_at` of the budget or no longer all fit. The turn
    holding `ticket` passes it, so the store may answer from the messages it keeps.
    """
    available = budget - reply_tokens - (message_tokens(system_prompt) if system_prompt else 0)
    newest_first, room = await _newest_that_fit(store, owner, chat_id, available, ticket)
    fits = not newest_first or newest_first[-1].seq == 1
    if summarize_at is None or (fits and room >= (1 - summarize_at) * available):
        return Context(_prompt(system_prompt, newest_first))
    summary = await store.get_rolling_summary(owner, chat_id)
    window, summary_due = _window_after_summary(newest_first, summary, available, summarize_at)
    if fits:  # crowded but whole: sent verbatim, while the update makes room for what comes next
        return Context(_prompt(system_prompt, newest_first), summary_due)
    return Context(_prompt(system_prompt, window, summary_note(summary) if summary else None), summary_due)


async def _newest_that_fit(
    store: ChatStore, owner: str, chat_id: str, budget: int, ticket: TurnTicket | None
) -> tuple[list[Message], int]:
    """The chat's newest messages that fit `budget`, newest first (the newest at least), and
    the tokens left."""
    remaining = budget
    newest_first: list[Message] = []
    before_seq: int | None = None
    batch = FIRST_BATCH
    while remaining > 0 or not newest_first:
        older = await store.recent_messages(owner, chat_id, limit=batch, before_seq=before_seq, ticket=ticket)
        for message in older:
            text = message.content
            # estimate_tokens inlined for ASCII: this runs for every message of every turn's window
            cost = (len(text) // 4 + 1 if text.isascii() else estimate_tokens(text)) + MESSAGE_OVERHEAD_TOKENS
            if message.item is not None:
                cost += attachment_tokens(message.item)
            if cost > remaining and newest_first:
                return newest_first, remaining
            newest_first.append(message)
            remaining -= cost
        if len(older) < batch:
            break
        before_seq = older[-1].seq
        batch = _next_batch(remaining, spent=budget - remaining, count=len(newest_first))
    return newest_first, remaining


def _window_after_summary(
    newest_first: list[Message], summary: RollingSummary | None, available: int, summarize_at: float
) -> tuple[list[Message], bool]:
    """The newest messages after what the rolling summary covers that fit beside it, newest
    first, and whether an update of the summary is due: they take more than `summarize_at` of
    the budget, or no longer all fit."""
    summarized_to = summary.up_to_seq if summary is not None else 0
    room = available - (message_tokens(summary_note(summary)) if summary is not None else 0)
    window: list[Message] = []
    for message in newest_first:
        cost = message_tokens(message.content) + attachment_tokens(message.item)
        if message.seq <= summarized_to or (window and cost > room):
            break
        window.append(message)
        room -= cost
    behind = not window or window[-1].seq > summarized_to + 1
    return window, behind or room < (1 - summarize_at) * available


def summary_note(summary: RollingSummary) -> str:
    """The rolling summary as the model reads it, before the messages that follow it."""
    return f"Summary of the earlier conversation (its first {summary.up_to_seq} messages, not shown):\n{summary.text}"


def _prompt(system_prompt: str, newest_first: list[Message], note: str | None = None) -> list[PromptMessage]:
    prompt: list[PromptMessage] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if note is not None:
        prompt.append({"role": "system", "content": note})
    window = newest_first[::-1]
    if any(message.item is not None for message in window):
        prompt += prompt_from_messages(window)  # conversation items: function calls and their outputs...
    else:
        prompt += [{"role": message.role, "content": message.content} for message in window]
    return prompt


def prompt_from_messages(window: Sequence[AnyMessage]) -> list[PromptMessage]:
    """The Chat Completions messages of a window of stored messages, oldest first.

    A function call goes with the assistant message before it (or in one of its own) as a tool
    call, its output as a tool message. A call whose output is not in the window, or an output
    whose call is not, is left out: the API refuses either alone. Reasoning and other kinds the
    Chat Completions API cannot take are left out too.
    """
    answered = {m.item.get("call_id") for m in window if m.item and m.item.get("type") == "function_call_output"}
    called = {m.item.get("call_id") for m in window if m.item and m.item.get("type") == "function_call"}
    prompt: list[PromptMessage] = []
    for message in window:
        item = message.item
        if item is None:
            prompt.append({"role": message.role, "content": message.content})
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role == "user" and has_attachments(item):
                prompt.append({"role": "user", "content": chat_parts(item["content"])})
            else:
                prompt.append(
                    {"role": "system" if role in ("system", "developer") else message.role, "content": message.content}
                )
        elif kind == "function_call" and item["call_id"] in answered:
            _add_call(prompt, item)
        elif kind == "function_call_output" and item["call_id"] in called:
            prompt.append({"role": "tool", "tool_call_id": item["call_id"], "content": message.content})
    return prompt


def chat_parts(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user message's content parts in the Chat Completions shape, in their order: text as text,
    an input_image as an image_url part, an input_file as a file part (what the API accepted)."""
    return [_chat_part(part) for part in parts]


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        return {"type": "file", "file": {"file_data": part["file_data"], "filename": part.get("filename")}}
    text = part.get("text")
    return {"type": "text", "text": text if isinstance(text, str) else f"[{kind}]"}


def _add_call(prompt: list[PromptMessage], item: dict[str, Any]) -> None:
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = prompt[-1] if prompt else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        prompt.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _next_batch(remaining: int, *, spent: int, count: int) -> int:
    """How many more messages are likely to fit, judging by the average cost so far (plus one)."""
    average = max(1, spent // count)
    return max(1, min(MAX_BATCH, remaining // average + 1))


OLDEST_BATCH = 256


async def oldest_after(
    store: ChatStore, owner: str, chat_id: str, *, after_seq: int, budget: int, before_seq: int | None = None
) -> list[Message]:
    """The oldest messages with after_seq < seq < before_seq that fit `budget` tokens (at least one).

    Seqs are gap-free, so the OLDEST_BATCH after `after_seq` are read by their range.
    """
    below = after_seq + OLDEST_BATCH + 1
    if before_seq is not None:
        below = min(below, before_seq)
    window = await store.recent_messages(owner, chat_id, limit=OLDEST_BATCH, before_seq=below, after_seq=after_seq)
    batch: list[Message] = []
    for message in reversed(window):
        budget -= message_tokens(message.content)
        if batch and budget < 0:
            break
        batch.append(message)
    return batch
