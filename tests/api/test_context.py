"""What the LLM is sent for turns over HTTP: asserted on the requests the fake OpenAI server received."""

import asyncio
from typing import Any

import httpx

from chatkeep.config import DEFAULT_SYSTEM_PROMPT
from chatkeep.context import IMAGE_TOKENS, MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat, post
from tests.support.fake_openai import FakeOpenAI, roles_and_contents
from tests.support.images import PNG, data_url

PNG_URL = data_url(PNG)


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


async def test_images_take_their_place_in_the_token_budget(fake_llm: FakeOpenAI) -> None:
    """An image costs what the most a model of the GPT-4o kind counts for one: older messages give
    way to it as to text, so the prompt stays within the budget however many images a chat holds."""
    settings = llm_settings(fake_llm, context_tokens=2_000, system_prompt="S", rolling_summaries=False)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        await post(client, chat_id, "first")
        for words in ("second", "third"):
            posted = await client.post(f"/chats/{chat_id}/messages", json={"content": words, "images": [PNG_URL]})
            assert posted.status_code == 201, posted.text
    sent = fake_llm.prompts[-1]
    assert [(m["role"], text_of(m)[:6]) for m in sent] == [("system", "S"), ("assistant", "echo: "), ("user", "third")]
    images = sum(len(m["content"]) - 1 for m in sent if isinstance(m["content"], list))
    text = sum(estimate_tokens(text_of(m)) + MESSAGE_OVERHEAD_TOKENS for m in sent)
    assert images == 1
    assert text + images * IMAGE_TOKENS <= 2_000


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else content[0]["text"]
