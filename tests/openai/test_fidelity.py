"""Where chatkeep's /v1 once differed from OpenAI's in ways SDK users hit: prompts the caller never
wrote, items read back in another shape, missing usage fields, error codes recovery code keys on,
id prefixes and item references. Driven by the official `openai` SDK on every store."""

from typing import Any

import openai
import pytest

from chatkeep.context import prompt_tokens
from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI, Scripted, roles_and_contents
from tests.support.openai_sdk import Served, all_items, sdk_for


async def test_no_system_prompt_goes_upstream_that_the_caller_did_not_write(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create(
        items=[{"type": "message", "role": "system", "content": "Answer in French."}]
    )
    await sdk.responses.create(model="fake-model", input="hello", conversation=conversation.id)
    chained = await sdk.responses.create(model="fake-model", input="one")
    await sdk.responses.create(model="fake-model", input="two", previous_response_id=chained.id)
    assert roles_and_contents(served.fake.prompts[0]) == [("system", "Answer in French."), ("user", "hello")]
    assert roles_and_contents(served.fake.prompts[1]) == [("user", "one")]
    assert [role for role, _ in roles_and_contents(served.fake.prompts[2])] == ["user", "assistant", "user"]


async def test_system_and_developer_items_read_back_as_typed_lists_of_parts(served: Served) -> None:
    sdk = served.sdk
    sent: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer in French."},  # no type: a message, as OpenAI reads it
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "hi", "status": "completed"},
    ]
    conversation = await sdk.conversations.create(items=sent)
    listed = (await served.http.get(f"/v1/conversations/{conversation.id}/items?order=asc")).json()["data"]
    assert [(item["type"], item["role"], item["content"]) for item in listed] == [
        ("message", "system", [{"type": "input_text", "text": "Answer in French."}]),
        ("message", "developer", [{"type": "input_text", "text": "Be brief."}]),
        ("message", "user", [{"type": "input_text", "text": "hi"}]),
    ]
    one = (await served.http.get(f"/v1/conversations/{conversation.id}/items/{listed[0]['id']}")).json()
    assert one == listed[0]


async def test_usage_has_every_field_the_sdk_types(served: Served) -> None:
    answer = (await served.http.post("/v1/responses", json={"model": "fake-model", "input": "hi"})).json()
    assert answer["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert answer["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


async def test_an_unknown_previous_response_is_a_400_that_recovery_code_recognises(served: Served) -> None:
    sdk = served.sdk
    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk.responses.create(model="fake-model", input="x", previous_response_id="resp_missing")
    assert (unknown.value.code, unknown.value.param) == ("previous_response_not_found", "previous_response_id")
    first = await sdk.responses.create(model="fake-model", input="one")
    await sdk.responses.delete(first.id)
    with pytest.raises(openai.BadRequestError) as deleted:
        await sdk.responses.create(model="fake-model", input="two", previous_response_id=first.id)
    assert deleted.value.code == "previous_response_not_found"
    assert served.fake.requests[1:] == []


async def test_an_unknown_after_cursor_is_a_400_naming_the_parameter(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as items:
        await sdk.conversations.items.list(conversation.id, after="msg_missing")
    assert items.value.param == "after"
    answered = await sdk.responses.create(model="fake-model", input="hi")
    with pytest.raises(openai.BadRequestError) as inputs:
        await sdk.responses.input_items.list(answered.id, after="msg_missing")
    assert inputs.value.param == "after"


async def test_every_object_has_openais_id_prefix_one_id_across_both_apis(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    assert conversation.id.startswith("conv_")
    native = (await served.http.post("/chats", json={})).json()
    assert native["id"].startswith("conv_")
    assert (await sdk.conversations.retrieve(native["id"])).id == native["id"]

    served.fake.queue(Scripted(tool_calls=[("lookup", '{"q": 1}')]))
    called = await sdk.responses.create(
        model="fake-model",
        input="look it up",
        conversation=conversation.id,
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    )
    added = await sdk.conversations.items.create(
        conversation.id,
        items=[
            {"type": "function_call_output", "call_id": called.output[0].call_id, "output": "42"},
            {"type": "reasoning", "summary": []},
            {"role": "user", "content": "thanks"},
        ],
    )
    items = await all_items(sdk, conversation.id, order="asc")
    assert [item.id.split("_")[0] for item in items] == ["msg", "fc", "fco", "rs", "msg"]
    assert called.output[0].id == items[1].id
    assert [item.id for item in added.data] == [item.id for item in items[2:]]
    assert not any("." in item.id for item in items)
    native_messages = (await served.http.get(f"/chats/{conversation.id}/messages?order=asc")).json()["data"]
    assert [message["id"] for message in native_messages] == [item.id for item in items]


async def test_item_references_bring_the_named_item_to_the_model(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create(
        items=[{"role": "user", "content": "the code is 1234"}, {"role": "user", "content": "unrelated"}]
    )
    first_item = (await all_items(sdk, conversation.id, order="asc"))[0]
    await sdk.responses.create(
        model="fake-model",
        conversation=conversation.id,
        input=[{"type": "item_reference", "id": first_item.id}, {"role": "user", "content": "what is the code?"}],
    )
    assert roles_and_contents(served.fake.prompts[0])[-2:] == [
        ("user", "the code is 1234"),
        ("user", "what is the code?"),
    ]

    earlier = await sdk.responses.create(model="fake-model", input="say something")
    follow_up = await sdk.responses.create(
        model="fake-model",
        previous_response_id=earlier.id,
        input=[{"type": "item_reference", "id": earlier.output[0].id}, {"role": "user", "content": "again?"}],
    )
    assert roles_and_contents(served.fake.prompts[2])[-2:] == [("assistant", "echo: say something"), ("user", "again?")]
    assert follow_up.status == "completed"

    with pytest.raises(openai.BadRequestError) as unknown:
        await sdk.responses.create(
            model="fake-model", conversation=conversation.id, input=[{"type": "item_reference", "id": "msg_nope"}]
        )
    assert unknown.value.param == "input[0].id"
    assert len(served.fake.requests) == 3

    copied = await sdk.conversations.items.create(
        conversation.id, items=[{"type": "item_reference", "id": first_item.id}]
    )
    assert (copied.data[0].content[0].text, copied.data[0].id != first_item.id) == ("the code is 1234", True)
    with pytest.raises(openai.BadRequestError) as nothing_to_refer_to:
        await sdk.conversations.create(items=[{"type": "item_reference", "id": first_item.id}])
    assert nothing_to_refer_to.value.param == "items[0].id"


WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


async def test_a_streamed_tool_call_streams_its_arguments_before_the_call_completes(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    served.fake.queue(Scripted(tool_calls=[("get_weather", '{"city": "Paris"}')], chunk_delay=0.05))
    stream = await sdk.responses.create(
        model="fake-model", input="weather?", conversation=conversation.id, tools=[WEATHER_TOOL], stream=True
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, first, second = events[2:5]
    assert (added.item.type, added.item.status, added.item.name, added.item.arguments) == (
        "function_call",
        "in_progress",
        "get_weather",
        "",
    )
    assert first.delta + second.delta == '{"city": "Paris"}'
    assert {first.item_id, second.item_id, events[-2].item.id} == {added.item.id}
    stored = (await all_items(sdk, conversation.id, order="asc"))[-1]
    assert (stored.id, stored.arguments) == (added.item.id, '{"city": "Paris"}')
    assert stored.id.startswith("fc_")
    assert [event.sequence_number for event in events] == list(range(len(events)))


async def test_text_then_two_calls_stream_as_three_output_items_in_order(served: Served) -> None:
    served.fake.queue(Scripted(content="Let me check.", tool_calls=[("a", '{"n": 1}'), ("b", '{"n": 2}')]))
    stream = await served.sdk.responses.create(model="fake-model", input="go", tools=[WEATHER_TOOL], stream=True)
    events = [event async for event in stream]
    added = [(event.output_index, event.item.type) for event in events if event.type == "response.output_item.added"]
    done = [(event.output_index, event.item.type) for event in events if event.type == "response.output_item.done"]
    assert added == done == [(0, "message"), (1, "function_call"), (2, "function_call")]
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    arguments: dict[int, str] = {}
    for event in events:
        if event.type == "response.function_call_arguments.delta":
            arguments[event.output_index] = arguments.get(event.output_index, "") + event.delta
    assert arguments == {1: '{"n": 1}', 2: '{"n": 2}'}


async def test_input_tokens_counts_the_prompt_the_response_then_sends(store_url: str, fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, store=store_url, context_tokens=300, rolling_summaries=False)
    async with serve(settings) as http, sdk_for(http) as sdk:
        conversation = await sdk.conversations.create(
            items=[{"role": "user", "content": f"note {n}: " + "word " * 20} for n in range(20)]
        )
        for asked in (
            {"conversation": conversation.id, "instructions": "Be brief."},
            {"previous_response_id": (await sdk.responses.create(model="fake-model", input="one")).id},
        ):
            counted = await sdk.responses.input_tokens.count(model="fake-model", input="what did I note?", **asked)
            assert counted.object == "response.input_tokens"
            await sdk.responses.create(model="fake-model", input="what did I note?", **asked)
            assert counted.input_tokens == prompt_tokens(fake_llm.requests[-1]["messages"])
        assert len(fake_llm.prompts[0]) < 22, "the conversation was cut to the budget, and counted so"
        whole = await sdk.responses.input_tokens.count(model="fake-model", conversation=conversation.id)
        assert whole.input_tokens > 0
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.input_tokens.count(model="fake-model", input="x", conversation="conv_missing")
        with pytest.raises(openai.BadRequestError) as unknown:
            await sdk.responses.input_tokens.count(model="fake-model", input="x", previous_response_id="resp_x")
        assert unknown.value.code == "previous_response_not_found"
