"""The context builder on its own, over the memory store: how little of a chat it reads, what it sends
(verbatim, or the rolling summary and the messages after it), and when a chat is due a summary."""

from typing import Any

from chatkeep.context import (
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    build_context,
    estimate_tokens,
    prompt_tokens,
)
from chatkeep.domain import Message, NewMessage, PromptMessage, Role, RollingSummary
from chatkeep.store import MemoryStore, TurnTicket

OWNER = "default"


class CountingStore(MemoryStore):
    """The memory store, counting how many messages the context builder reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0

    async def recent_messages(
        self,
        owner: str,
        chat_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        after_seq: int = 0,
        ticket: TurnTicket | None = None,
    ) -> list[Message]:
        window = await super().recent_messages(owner, chat_id, limit=limit, before_seq=before_seq, after_seq=after_seq)
        self.read += len(window)
        return window


async def test_context_reads_the_window_not_the_history() -> None:
    store = CountingStore()
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None)
    for n in range(5000):
        role = Role.USER if n % 2 == 0 else Role.ASSISTANT
        await store.append_message(OWNER, chat.id, NewMessage(role, f"message number {n} " + "pad " * 20))
    prompt = (await build_context(store, OWNER, chat.id, system_prompt="S", budget=1000)).prompt
    assert str(prompt[-1]["content"]).startswith("message number 4999")
    window = len(prompt) - 1
    assert 10 < window < 50
    assert store.read <= window + 32  # the first batch may overshoot the window, never the history


async def chat_of(store: MemoryStore, count: int) -> str:
    """A chat of `count` messages of 10 tokens each (6 of text, 4 of framing)."""
    chat = await store.create_chat(OWNER, title=None, metadata={}, system_prompt=None)
    for n in range(count):
        await store.append_message(
            OWNER, chat.id, NewMessage(Role.USER if n % 2 == 0 else Role.ASSISTANT, f"message {n:05d} padded")
        )
    return chat.id


async def test_a_chat_that_fits_goes_verbatim_and_is_due_a_summary_once_crowded() -> None:
    store = MemoryStore()
    for count, wanted in ((70, False), (80, True)):  # 10 tokens a message, of a budget of 1,000
        chat_id = await chat_of(store, count)
        context = await build_context(store, OWNER, chat_id, system_prompt="", budget=1000, summarize_at=0.75)
        assert [m["content"] for m in context.prompt] == [f"message {n:05d} padded" for n in range(count)]
        assert context.summary_due is wanted
    await store.claim_rolling_summary(OWNER, chat_id, hold_seconds=60)
    await store.end_rolling_summary(OWNER, chat_id, RollingSummary("what the first 40 said", 40))
    context = await build_context(store, OWNER, chat_id, system_prompt="", budget=1000, summarize_at=0.75)
    assert len(context.prompt) == 80  # whole: what fits is sent as it is, not summarized
    assert context.summary_due is False  # the 40 messages take less than 75%


async def test_a_chat_over_budget_sends_its_summary_then_the_messages_after_it() -> None:
    store = MemoryStore()
    chat_id = await chat_of(store, 200)
    await store.claim_rolling_summary(OWNER, chat_id, hold_seconds=60)
    await store.end_rolling_summary(OWNER, chat_id, RollingSummary("what the first 150 said", 150))
    context = await build_context(store, OWNER, chat_id, system_prompt="S", budget=1000, summarize_at=0.75)
    assert context.prompt[0] == {"role": "system", "content": "S"}
    assert str(context.prompt[1]["content"]).endswith("(its first 150 messages, not shown):\nwhat the first 150 said")
    assert [m["content"] for m in context.prompt[2:]] == [f"message {n:05d} padded" for n in range(150, 200)]
    assert context.summary_due is False  # 50 messages after the summary: half the budget
    with_reply = await build_context(
        store, OWNER, chat_id, system_prompt="S", budget=1000, reply_tokens=500, summarize_at=0.75
    )
    tail = [m["content"] for m in with_reply.prompt[2:]]
    assert tail == [f"message {n:05d} padded" for n in range(154, 200)]  # fewer: room left for the reply
    assert with_reply.summary_due is True  # the messages after the summary no longer all fit


async def test_without_a_summary_a_chat_over_budget_is_truncated_and_due_one() -> None:
    store = MemoryStore()
    chat_id = await chat_of(store, 200)
    context = await build_context(store, OWNER, chat_id, system_prompt="", budget=1000, summarize_at=0.75)
    assert [m["content"] for m in context.prompt] == [f"message {n:05d} padded" for n in range(100, 200)]
    assert context.summary_due is True


async def test_estimate_counts_non_ascii_text_generously() -> None:
    assert estimate_tokens("hello world, this is plain text") == 8
    assert estimate_tokens("日本語のテキスト") >= len("日本語のテキスト")
    assert estimate_tokens("") == 1


def test_a_prompt_prices_its_images_by_their_detail() -> None:
    image = "data:image/png;base64,AAAA"
    asked: list[PromptMessage] = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, *image_parts(image, "low", "high", None)]}
    ]
    text = estimate_tokens("look") + MESSAGE_OVERHEAD_TOKENS
    assert prompt_tokens(asked) == text + LOW_DETAIL_IMAGE_TOKENS + 2 * IMAGE_TOKENS
    assert prompt_tokens([{"role": "user", "content": "look"}]) == text


def image_parts(url: str, *details: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for detail in details:
        image = {"url": url} if detail is None else {"url": url, "detail": detail}
        parts.append({"type": "image_url", "image_url": image})
    return parts
