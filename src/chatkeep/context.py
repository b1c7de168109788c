"""What goes to the LLM for a turn: the system prompt, then the newest messages that fit.

The window is found by walking back from the newest message in batches sized by how many more
messages are likely to fit, so a turn reads O(window) messages, never O(history). Tokens are
estimated offline (see `estimate_tokens`) so nothing has to be downloaded at run time; the
estimate errs on the generous side so the budget is kept.
"""

from chatkeep.domain import Message, PromptMessage
from chatkeep.items import prompt_from_messages
from chatkeep.store import ChatStore

# Chat Completions frames every message with a few tokens (role, separators): OpenAI's cookbook
# counts 3 per message plus the reply primer; 4 is a safe round figure.
MESSAGE_OVERHEAD_TOKENS = 4
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


async def build_context(
    store: ChatStore, owner: str, chat_id: str, *, system_prompt: str, budget: int
) -> list[PromptMessage]:
    """The prompt for the chat's next reply, oldest first.

    The newest message is always kept whole, even over budget (it is what must be answered);
    older ones are added while they fit, and the walk stops at the first that does not, so the
    context is always a contiguous tail of the chat. Each message is read once, in the same pass
    that prices it: this is the part of a turn that grows with the chat.
    """
    remaining = budget - (message_tokens(system_prompt) if system_prompt else 0)
    newest_first: list[Message] = []
    before_seq: int | None = None
    batch = FIRST_BATCH
    while remaining > 0 or not newest_first:
        older = await store.recent_messages(owner, chat_id, limit=batch, before_seq=before_seq)
        for message in older:
            text = message.content
            # estimate_tokens inlined for ASCII: this runs for every message of every turn's window
            cost = (len(text) // 4 + 1 if text.isascii() else estimate_tokens(text)) + MESSAGE_OVERHEAD_TOKENS
            if cost > remaining and newest_first:
                return _prompt(system_prompt, newest_first)
            newest_first.append(message)
            remaining -= cost
        if len(older) < batch:
            break
        before_seq = older[-1].seq
        batch = _next_batch(remaining, spent=budget - remaining, count=len(newest_first))
    return _prompt(system_prompt, newest_first)


def _prompt(system_prompt: str, newest_first: list[Message]) -> list[PromptMessage]:
    prompt: list[PromptMessage] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    window = newest_first[::-1]
    if any(message.item is not None for message in window):
        prompt += prompt_from_messages(window)  # conversation items: function calls and their outputs...
    else:
        prompt += [{"role": message.role, "content": message.content} for message in window]
    return prompt


def _next_batch(remaining: int, *, spent: int, count: int) -> int:
    """How many more messages are likely to fit, judging by the average cost so far (plus one)."""
    average = max(1, spent // count)
    return max(1, min(MAX_BATCH, remaining // average + 1))
