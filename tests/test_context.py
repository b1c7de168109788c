"""What the LLM is sent: asserted on the requests the fake OpenAI server received."""

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from chatkeep.config import DEFAULT_SYSTEM_PROMPT
from chatkeep.context import MESSAGE_OVERHEAD_TOKENS, build_context, estimate_tokens
from chatkeep.domain import Message, NewMessage, Role, RollingSummary
from chatkeep.store import MemoryStore, TurnTicket
from tests.conftest import llm_settings, new_chat, post, serve
from tests.fake_openai import FakeOpenAI

OWNER = "default"


def roles_and_contents(prompt: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in prompt]


async def test_follow_up_carries_every_earlier_turn(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(client, system_prompt="You are terse.")
    await post(client, chat_id, "My name is Ada.")
    await post(client, chat_id, "What is my name?")
    assert roles_and_contents(fake_llm.prompts[1]) == [
        ("system", "You are terse."),
        ("user", "My name is Ada."),
        ("assistant", "echo: My name is Ada."),
        ("user", "What is my name?"),
    ]


async def test_request_names_the_model_and_sends_the_key(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    await post(client, await new_chat(client), "hi")
    assert fake_llm.requests[0]["model"] == "gpt-4o-mini"
    assert fake_llm.headers[0]["Authorization"] == "Bearer sk-test"


async def test_chats_never_see_each_other(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    first, second = await new_chat(client), await new_chat(client)
    await post(client, first, "secret of chat one")
    await post(client, second, "hello from chat two")
    sent = fake_llm.prompts[1]
    assert all("secret" not in m["content"] for m in sent)
    assert roles_and_contents(sent)[1:] == [("user", "hello from chat two")]


async def test_system_prompt_default_custom_and_none(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, system_prompt="House rules.")) as client:
        await post(client, await new_chat(client), "a")
        await post(client, await new_chat(client, system_prompt="Own rules."), "b")
        await post(client, await new_chat(client, system_prompt=""), "c")
        patched = await new_chat(client)
        await client.patch(f"/chats/{patched}", json={"system_prompt": "Patched rules."})
        await post(client, patched, "d")
    assert fake_llm.prompts[0][0] == {"role": "system", "content": "House rules."}
    assert fake_llm.prompts[1][0] == {"role": "system", "content": "Own rules."}
    assert fake_llm.prompts[2] == [{"role": "user", "content": "c"}]
    assert fake_llm.prompts[3][0] == {"role": "system", "content": "Patched rules."}


async def test_a_turn_that_waited_uses_the_chat_as_it_is_when_it_runs(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.latency = 0.3
    chat_id = await new_chat(client, system_prompt="Old rules.")
    first = asyncio.create_task(post(client, chat_id, "first"))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(post(client, chat_id, "second"))
    await asyncio.sleep(0.05)
    assert (await client.patch(f"/chats/{chat_id}", json={"system_prompt": "New rules."})).status_code == 200
    assert [(await first).status_code, (await waiting).status_code] == [201, 201]
    assert [prompt[0]["content"] for prompt in fake_llm.prompts] == ["Old rules.", "New rules."]


async def test_default_system_prompt_is_a_helpful_assistant(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    await post(client, await new_chat(client), "hi")
    assert fake_llm.prompts[0][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}


async def test_without_rolling_summaries_the_oldest_turns_give_way_when_over_the_token_budget(
    fake_llm: FakeOpenAI,
) -> None:
    words = "word " * 100  # 500 ASCII characters: about 126 tokens with framing
    settings = llm_settings(fake_llm, context_tokens=600, system_prompt="S", rolling_summaries=False)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        for n in range(6):
            await post(client, chat_id, f"{n} {words}")
    last = fake_llm.prompts[-1]
    assert last[0] == {"role": "system", "content": "S"}
    contents = [m["content"] for m in last[1:]]
    assert contents[-1].startswith("5 ")
    assert len(contents) < 11  # older turns were dropped...
    assert contents == [m["content"] for m in _tail_of_chat(fake_llm, len(contents))]  # ...from the oldest end
    tokens = sum(estimate_tokens(c) + MESSAGE_OVERHEAD_TOKENS for c in contents)
    assert tokens <= 600


def _tail_of_chat(fake: FakeOpenAI, n: int) -> list[dict[str, Any]]:
    """The chat's last n messages as the fake saw them: its questions and its echo answers."""
    history: list[dict[str, Any]] = []
    for prompt in fake.prompts:
        history.append(prompt[-1])
        history.append({"role": "assistant", "content": "echo: " + prompt[-1]["content"]})
    return history[:-1][-n:]


async def test_newest_message_is_sent_whole_even_over_budget(fake_llm: FakeOpenAI) -> None:
    huge = "x" * 8000
    settings = llm_settings(fake_llm, context_tokens=256, system_prompt="S", rolling_summaries=False)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        await post(client, chat_id, "short one")
        await post(client, chat_id, huge)
    assert fake_llm.prompts[-1] == [{"role": "system", "content": "S"}, {"role": "user", "content": huge}]


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
