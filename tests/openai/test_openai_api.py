"""OpenAI's Conversations and Responses APIs under /v1, driven by the official `openai` package
against chatkeep on a real socket, over every store, with the fake upstream recording what
chatkeep sent it."""

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI, Scripted, roles_and_contents
from tests.support.openai_sdk import Served, all_items, sdk_for


async def test_conversation_create_retrieve_update_delete(served: Served) -> None:
    sdk = served.sdk
    created = await sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": "hello"}], metadata={"topic": "demo"}
    )
    assert (created.object, created.metadata) == ("conversation", {"topic": "demo"})
    assert (await sdk.conversations.retrieve(created.id)).model_dump() == created.model_dump()
    updated = await sdk.conversations.update(created.id, metadata={"topic": "changed"})
    assert (updated.id, updated.metadata) == (created.id, {"topic": "changed"})
    chat = (await served.http.get(f"/chats/{created.id}")).json()  # a conversation is a chat
    assert (chat["metadata"], chat["message_count"]) == ({"topic": "changed"}, 1)
    deleted = await sdk.conversations.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.conversations.retrieve(created.id)
    assert (missing.value.type, missing.value.code) == ("invalid_request_error", "chat_not_found")


async def test_items_page_in_both_orders_to_the_end_and_read_back_verbatim(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    texts = [f"item {n}" for n in range(25)]
    for batch in (texts[:20], texts[20:]):
        await sdk.conversations.items.create(
            conversation.id, items=[{"type": "message", "role": "user", "content": text} for text in batch]
        )
    call: dict[str, Any] = {"type": "function_call", "call_id": "call_7", "name": "lookup", "arguments": '{"q": 1}'}
    output: dict[str, Any] = {"type": "function_call_output", "call_id": "call_7", "output": "42"}
    reasoning: dict[str, Any] = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]}
    added = await sdk.conversations.items.create(conversation.id, items=[call, output, reasoning])
    assert [item.type for item in added.data] == ["function_call", "function_call_output", "reasoning"]

    oldest_first = await all_items(sdk, conversation.id, order="asc", limit=7)
    newest_first = await all_items(sdk, conversation.id, limit=7)  # desc by default
    assert [item.id for item in newest_first] == [item.id for item in oldest_first][::-1]
    assert [item.content[0].text for item in oldest_first[:25]] == texts
    assert [(item.type, item.role) for item in oldest_first[:1]] == [("message", "user")]
    kept = [item.model_dump(exclude_unset=True) for item in oldest_first[25:]]
    for sent, back, prefix in zip([call, output, reasoning], kept, ["fc_", "fco_", "rs_"], strict=True):
        assert back.pop("id").startswith(prefix)
        assert back == sent | ({} if sent["type"] == "reasoning" else {"status": "completed"})

    one = await sdk.conversations.items.retrieve(oldest_first[3].id, conversation_id=conversation.id)
    assert one.content[0].text == "item 3"
    after_delete = await sdk.conversations.items.delete(oldest_first[3].id, conversation_id=conversation.id)
    assert after_delete.id == conversation.id
    assert "item 3" not in [item.content[0].text for item in (await all_items(sdk, conversation.id))[3:]]
    assert len(await all_items(sdk, conversation.id, order="asc", limit=5)) == 27
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(oldest_first[3].id, conversation_id=conversation.id)


async def test_a_response_in_a_conversation_sees_its_items_and_appends_input_and_output(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "my name is Ada"}])
    first = await sdk.responses.create(
        model="fake-model", input="what is my name?", conversation=conversation.id, instructions="Be brief."
    )
    await sdk.responses.create(model="fake-model", input="and again?", conversation={"id": conversation.id})
    assert (first.status, first.output_text, first.conversation.id) == (
        "completed",
        "echo: what is my name?",
        conversation.id,
    )
    assert first.usage is not None
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert roles_and_contents(served.fake.prompts[0]) == [
        ("system", "Be brief."),
        ("user", "my name is Ada"),
        ("user", "what is my name?"),
    ]
    assert roles_and_contents(served.fake.prompts[1]) == [  # no system prompt: none was asked for
        ("user", "my name is Ada"),
        ("user", "what is my name?"),
        ("assistant", "echo: what is my name?"),
        ("user", "and again?"),
    ]
    items = await all_items(sdk, conversation.id, order="asc")
    assert [(item.role, item.content[0].text) for item in items] == [
        ("user", "my name is Ada"),
        ("user", "what is my name?"),
        ("assistant", "echo: what is my name?"),
        ("user", "and again?"),
        ("assistant", "echo: and again?"),
    ]
    assert items[2].id == first.output[0].id
    kept = await sdk.responses.retrieve(first.id)
    assert kept.model_dump() == first.model_dump()
    inputs = await sdk.responses.input_items.list(first.id)
    assert [item.id for item in inputs.data] == [items[1].id]


async def test_previous_response_id_chains_the_context(served: Served) -> None:
    sdk = served.sdk
    first = await sdk.responses.create(model="fake-model", input="one")
    second = await sdk.responses.create(model="fake-model", input="two", previous_response_id=first.id)
    third = await sdk.responses.create(
        model="fake-model", input=[{"role": "user", "content": "three"}], previous_response_id=second.id
    )
    assert (third.previous_response_id, third.conversation) == (second.id, None)
    assert roles_and_contents(served.fake.prompts[2]) == [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
        ("user", "three"),
    ]
    assert (await sdk.responses.retrieve(third.id)).output_text == "echo: three"
    await sdk.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError):
        await sdk.responses.create(model="fake-model", input="four", previous_response_id=second.id)
    unkept = await sdk.responses.create(model="fake-model", input="not kept", store=False)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(unkept.id)


async def test_responses_stream_with_the_sdk_helpers(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    async with sdk.responses.stream(
        model="fake-model", input="tell me a story", conversation=conversation.id
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "echo: tell me a story"
    assert len(deltas) > 1
    assert (await sdk.responses.retrieve(final.id)).output_text == final.output_text  # kept before `completed`

    events = [event async for event in await sdk.responses.create(model="fake-model", input="again", stream=True)]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1].response.output_text == "echo: again"
    assert events[2].item.id == events[-1].response.output[0].id


async def test_six_concurrent_responses_on_one_conversation_all_succeed_paired(served: Served) -> None:
    sdk = served.sdk
    served.fake.latency = 0.05
    conversation = await sdk.conversations.create()
    answers = await asyncio.gather(
        *(sdk.responses.create(model="fake-model", input=f"q{n}", conversation=conversation.id) for n in range(6))
    )
    assert sorted(answer.output_text for answer in answers) == [f"echo: q{n}" for n in range(6)]
    items = await all_items(sdk, conversation.id, order="asc")
    texts = [item.content[0].text for item in items]
    assert len(texts) == 12
    for question, reply in zip(texts[::2], texts[1::2], strict=True):
        assert reply == f"echo: {question}"
    for n, prompt in enumerate(served.fake.prompts):  # each saw every earlier turn
        assert [content for _, content in roles_and_contents(prompt)] == texts[: 2 * n + 1]


async def test_function_tools_go_upstream_and_their_calls_come_back_as_items(served: Served) -> None:
    sdk = served.sdk
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }
    conversation = await sdk.conversations.create()
    served.fake.queue(Scripted(tool_calls=[("get_weather", '{"city": "Paris"}')]))
    asked = await sdk.responses.create(
        model="fake-model", input="weather in Paris?", conversation=conversation.id, tools=[tool]
    )
    call = asked.output[0]
    assert (call.type, call.name, call.arguments, call.call_id) == (
        "function_call",
        "get_weather",
        '{"city": "Paris"}',
        "call_0",
    )
    assert served.fake.requests[0]["tools"] == [
        {
            "type": "function",
            "function": {k: tool[k] for k in ("name", "description", "parameters", "strict")},
        }
    ]
    served.fake.queue(Scripted(content="It is sunny in Paris."))
    async with sdk.responses.stream(
        model="fake-model",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        conversation=conversation.id,
        tools=[tool],
    ) as stream:
        answered = await stream.get_final_response()
    assert answered.output_text == "It is sunny in Paris."
    prompt = served.fake.prompts[1]
    assert prompt[-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    assert prompt[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"}
    kinds = [item.type for item in await all_items(sdk, conversation.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output", "message"]

    served.fake.queue(Scripted(tool_calls=[("get_weather", '{"city": "Oslo"}')]))
    async with sdk.responses.stream(model="fake-model", input="and Oslo?", tools=[tool]) as stream:
        streamed_call = (await stream.get_final_response()).output[0]
    assert (streamed_call.type, streamed_call.arguments) == ("function_call", '{"city": "Oslo"}')


async def test_errors_raise_the_sdk_exception_classes_and_store_nothing(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    with pytest.raises(openai.BadRequestError) as both:
        await sdk.responses.create(
            model="fake-model", input="x", conversation=conversation.id, previous_response_id="resp_x"
        )
    assert both.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as bad_item:
        await sdk.responses.create(
            model="fake-model",
            input=[{"role": "user", "content": "ok"}, {"role": "wizard", "content": "x"}],
            conversation=conversation.id,
        )
    assert bad_item.value.param == "input[1].role"
    with pytest.raises(openai.BadRequestError) as hosted_tool:
        await sdk.responses.create(model="fake-model", input="x", tools=[{"type": "web_search"}])
    assert hosted_tool.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        await sdk.responses.create(model="fake-model", input="x", temperature=5)
    with pytest.raises(openai.BadRequestError) as nul:
        await sdk.conversations.items.create(conversation.id, items=[{"role": "user", "content": "a\x00b"}])
    assert nul.value.param == "items[0].content"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model="fake-model", input="x", conversation="chat_missing")
    assert await all_items(sdk, conversation.id) == []
    assert served.fake.requests == []
    missing_route = await served.http.get("/v1/nothing-here")
    assert missing_route.status_code == 404
    assert missing_route.json()["error"]["type"] == "invalid_request_error"


async def test_auth_busy_chats_and_upstream_failures_map_to_sdk_errors(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, api_keys="alice=key-alice-0123456789", max_waiting_turns=0)
    async with serve(settings) as http:
        async with sdk_for(http, api_key="wrong") as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.conversations.create()
        async with sdk_for(http, api_key="key-alice-0123456789") as sdk:
            conversation = await sdk.conversations.create()
            fake_llm.queue(Scripted(delay=0.5))
            running = asyncio.create_task(
                sdk.responses.create(model="fake-model", input="slow", conversation=conversation.id)
            )
            await asyncio.sleep(0.2)
            with pytest.raises(openai.RateLimitError) as busy:
                await sdk.responses.create(model="fake-model", input="too soon", conversation=conversation.id)
            assert busy.value.response.headers["retry-after"] == "1"
            await running
            fake_llm.queue(*[Scripted(status=503)] * 3)
            with pytest.raises(openai.InternalServerError):
                await sdk.responses.create(model="fake-model", input="upstream down")


async def test_the_sdk_retries_a_busy_conversation_until_its_turn(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, max_waiting_turns=0)) as http, sdk_for(http, max_retries=5) as sdk:
        conversation = await sdk.conversations.create()
        fake_llm.latency = 0.3
        answers = await asyncio.gather(
            *(sdk.responses.create(model="fake-model", input=f"q{n}", conversation=conversation.id) for n in range(2))
        )
    assert sorted(answer.output_text for answer in answers) == ["echo: q0", "echo: q1"]


async def test_an_idempotency_key_makes_a_response_once(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    ask = {"model": "fake-model", "input": "once", "conversation": conversation.id}
    key = {"Idempotency-Key": "response-key-1"}
    first = await sdk.responses.create(**ask, extra_headers=key)
    again = await sdk.responses.create(**ask, extra_headers=key)
    async with sdk.responses.stream(**ask, extra_headers=key) as stream:
        streamed = await stream.get_final_response()
    assert again.model_dump() == first.model_dump()
    assert streamed.id == first.id
    assert streamed.output_text == first.output_text
    assert len(served.fake.requests) == 1
    assert len(await all_items(sdk, conversation.id)) == 2


async def test_a_client_that_leaves_a_stream_loses_nothing(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    answer = " ".join(["a long answer"] * 10)
    served.fake.queue(Scripted(content=answer, chunk_delay=0.02))
    stream = await sdk.responses.create(model="fake-model", input="go", conversation=conversation.id, stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    for _ in range(100):
        items = await all_items(sdk, conversation.id, order="asc")
        if len(items) == 2:
            break
        await asyncio.sleep(0.05)
    assert [item.role for item in items] == ["user", "assistant"]
    assert items[1].content[0].text == answer


async def test_models_lists_the_configured_models_and_sends_a_chosen_one_upstream(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, llm_model="small", llm_models="large, small")
    async with serve(settings) as http, sdk_for(http) as sdk:
        assert [model.id async for model in sdk.models.list()] == ["small", "large"]
        assert (await sdk.models.retrieve("large")).id == "large"
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("huge")
        await sdk.responses.create(model="large", input="x")
        await sdk.responses.create(model="gpt-unknown", input="y")
    assert [request["model"] for request in fake_llm.requests] == ["large", "small"]


async def test_offline_provider_answers_the_sdk(tmp_path: Path) -> None:
    async with serve(Settings(llm_provider="offline")) as http, sdk_for(http) as sdk:
        first = await sdk.responses.create(model="any", input="remember the word cobalt")
        second = await sdk.responses.create(model="any", input="which word?", previous_response_id=first.id)
    assert "cobalt" in second.output_text


async def test_a_stream_the_model_cuts_short_ends_incomplete_with_its_text(fake_llm: FakeOpenAI) -> None:
    """The SDK's stream gets `response.incomplete` naming the reason, and the text written is kept."""
    fake_llm.queue(Scripted(content="one two three four five", stall_after=3))  # the role, two words, silence
    async with serve(llm_settings(fake_llm, llm_idle_timeout=0.5)) as http, sdk_for(http) as sdk:
        conversation = await sdk.conversations.create()
        events = [
            event
            async for event in await sdk.responses.create(
                model="fake-model", input="tell me", conversation=conversation.id, stream=True
            )
        ]
        final = events[-1]
        assert final.type == "response.incomplete"
        details = final.response.incomplete_details
        assert (final.response.status, details.reason, details.chatkeep_reason) == ("incomplete", None, "timeout")
        assert final.response.output_text == "one two "
        stored = await sdk.responses.retrieve(final.response.id)
        assert (stored.status, stored.output_text) == ("incomplete", "one two ")
        items = await all_items(sdk, conversation.id, order="asc")
        assert [item.content[0].text for item in items] == ["tell me", "one two "]


async def test_integers_beyond_what_an_upstream_takes_are_a_400(served: Served) -> None:
    """10**30 output tokens was a 500 (an integer past 64 bits on its way upstream); nothing is asked or stored."""
    conversation = await served.sdk.conversations.create()
    with pytest.raises(openai.BadRequestError) as refused:
        await served.sdk.responses.create(
            model="fake-model", input="hi", conversation=conversation.id, max_output_tokens=10**30
        )
    assert "max_output_tokens" in str(refused.value.param)
    assert served.fake.requests == []
    assert await all_items(served.sdk, conversation.id) == []


async def test_an_item_of_any_type_over_the_size_limit_is_a_400_naming_it(store_url: str, fake_llm: FakeOpenAI) -> None:
    """A 900 KB item of a type chatkeep does not read was stored verbatim, past CHATKEEP_MAX_MESSAGE_CHARS."""
    async with serve(llm_settings(fake_llm, store=store_url, max_message_chars=1000)) as http, sdk_for(http) as sdk:
        conversation = await sdk.conversations.create()
        small = {"type": "x", "blob": "é" * 900}  # 1,800 bytes: characters are counted
        large = {"type": "x", "blob": "b" * 1000}
        # its text, f(...), within the limit; its JSON not
        call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[" + "1," * 494 + "1]"}
        for items, param in (([small, large], "items[1]"), ([call], "items[0]")):
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.conversations.items.create(conversation.id, items=items)
            assert (refused.value.param, refused.value.type) == (param, "invalid_request_error")
            assert "1000" in refused.value.message
            with pytest.raises(openai.BadRequestError) as at_creation:
                await sdk.conversations.create(items=items)
            assert at_creation.value.param == param
        assert await all_items(sdk, conversation.id) == []
        assert len((await http.get("/chats")).json()["data"]) == 1
        huge = await http.post(
            f"/v1/conversations/{conversation.id}/items", json={"items": [{"type": "x", "blob": "b" * 900_000}]}
        )
        assert (huge.status_code, huge.json()["error"]["param"]) == (400, "items[0]")
        added = await sdk.conversations.items.create(conversation.id, items=[small])
        assert [item.model_dump(exclude_unset=True)["blob"] for item in added.data] == ["é" * 900]
        with pytest.raises(openai.BadRequestError) as as_input:  # a response's input is held to it too
            await sdk.responses.create(model="fake-model", input=[large], conversation=conversation.id)
        assert as_input.value.param == "input[0]"
        assert len(await all_items(sdk, conversation.id)) == 1
        assert fake_llm.requests == []


async def test_a_response_with_several_inputs_fits_a_full_conversation_or_is_refused_whole(
    fake_llm: FakeOpenAI,
) -> None:
    """Room for every input and the reply, counted before anything is stored."""
    async with serve(llm_settings(fake_llm, max_chat_messages=4)) as http, sdk_for(http) as sdk:
        conversation = await sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "one"}])
        three = [{"type": "message", "role": "user", "content": word} for word in ("two", "three", "four")]
        with pytest.raises(openai.RateLimitError) as full:
            await sdk.responses.create(model="fake-model", input=three, conversation=conversation.id)
        assert full.value.code == "chat_full"
        assert len(await all_items(sdk, conversation.id)) == 1
        assert fake_llm.requests == []
        answered = await sdk.responses.create(model="fake-model", input=three[:2], conversation=conversation.id)
        assert answered.output_text == "echo: three"


async def test_the_sdk_does_not_retry_a_quota_that_waiting_cannot_clear(fake_llm: FakeOpenAI) -> None:
    sent: list[str] = []

    async def count(request: httpx2.Request) -> None:
        sent.append(request.url.path)

    async with (
        serve(llm_settings(fake_llm, max_chat_messages=2)) as http,
        httpx2.AsyncClient(event_hooks={"request": [count]}) as transport,  # the SDK's HTTP client
        AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key="sk-x", max_retries=2, http_client=transport) as sdk,
    ):
        conversation = await sdk.conversations.create()
        await sdk.responses.create(model="fake-model", input="one", conversation=conversation.id)
        sent.clear()
        with pytest.raises(openai.RateLimitError):
            await sdk.responses.create(model="fake-model", input="two", conversation=conversation.id)
        assert sent == ["/v1/responses"]
