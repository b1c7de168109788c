"""The OpenAI Agents SDK with chatkeep as its backend: an agent on `OpenAIResponsesModel` whose
client is pointed at chatkeep, with its memory in an `OpenAIConversationsSession` kept by
chatkeep, over every store. The fake upstream records what the model was really asked."""

from collections.abc import AsyncIterator

import pytest
from agents import Agent, OpenAIConversationsSession, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI, Scripted, roles_and_contents

set_tracing_disabled(True)  # traces would be sent to OpenAI: no network here


@pytest.fixture
async def sdk(store_url: str, fake_llm: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    async with (
        serve(llm_settings(fake_llm, store=store_url)) as http,
        AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key="sk-anything", max_retries=0) as client,
    ):
        yield client


async def test_a_session_remembers_the_first_run_in_the_second(sdk: AsyncOpenAI, fake_llm: FakeOpenAI) -> None:
    agent = Agent(name="helper", instructions="Be brief.", model=OpenAIResponsesModel("fake-model", sdk))
    session = OpenAIConversationsSession(openai_client=sdk)
    first = await Runner.run(agent, "My name is Ada.", session=session)
    second = await Runner.run(agent, "What is my name?", session=session)
    assert (first.final_output, second.final_output) == ("echo: My name is Ada.", "echo: What is my name?")
    assert roles_and_contents(fake_llm.prompts[1]) == [
        ("system", "Be brief."),
        ("user", "My name is Ada."),
        ("assistant", "echo: My name is Ada."),
        ("user", "What is my name?"),
    ]
    items = await session.get_items()
    assert [(item["role"], item["content"][0]["text"]) for item in items] == [  # type: ignore[typeddict-item,index]
        ("user", "My name is Ada."),
        ("assistant", "echo: My name is Ada."),
        ("user", "What is my name?"),
        ("assistant", "echo: What is my name?"),
    ]


async def test_a_run_calls_a_function_tool_through_the_upstream(sdk: AsyncOpenAI, fake_llm: FakeOpenAI) -> None:
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    agent = Agent(name="weather", tools=[get_weather], model=OpenAIResponsesModel("fake-model", sdk))
    session = OpenAIConversationsSession(openai_client=sdk)
    fake_llm.queue(Scripted(tool_calls=[("get_weather", '{"city": "Paris"}')]), Scripted(content="It is sunny."))
    result = await Runner.run(agent, "Weather in Paris?", session=session)
    assert (result.final_output, asked) == ("It is sunny.", ["Paris"])
    assert fake_llm.requests[0]["tools"][0]["function"]["name"] == "get_weather"
    assert fake_llm.prompts[1][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny in Paris"},
    ]
    kinds = [item.get("type", "message") for item in await session.get_items()]
    assert kinds == ["message", "function_call", "function_call_output", "message"]


async def test_a_streamed_run_with_a_session(sdk: AsyncOpenAI, fake_llm: FakeOpenAI) -> None:
    agent = Agent(name="streamer", model=OpenAIResponsesModel("fake-model", sdk))
    session = OpenAIConversationsSession(openai_client=sdk)
    run = Runner.run_streamed(agent, "stream this please", session=session)
    deltas = [
        event.data.delta
        async for event in run.stream_events()
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == run.final_output == "echo: stream this please"
    assert len(await session.get_items()) == 2


async def test_a_streamed_run_sees_tool_call_arguments_arrive_before_the_call_completes(
    sdk: AsyncOpenAI, fake_llm: FakeOpenAI
) -> None:
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    agent = Agent(name="weather", tools=[get_weather], model=OpenAIResponsesModel("fake-model", sdk))
    fake_llm.queue(
        Scripted(tool_calls=[("get_weather", '{"city": "Paris"}')], chunk_delay=0.05), Scripted(content="Sunny.")
    )
    run = Runner.run_streamed(agent, "Weather in Paris?", session=OpenAIConversationsSession(openai_client=sdk))
    seen: list[str] = []
    arguments = ""
    async for event in run.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.function_call_arguments.delta":
            seen.append("delta")
            arguments += event.data.delta
        elif event.type == "raw_response_event" and event.data.type == "response.output_item.done":
            seen.append(f"done:{event.data.item.type}")
        elif event.type == "run_item_stream_event" and event.name == "tool_called":
            seen.append("tool_called")
    assert seen[:4] == ["delta", "delta", "done:function_call", "tool_called"]
    assert (arguments, ran, run.final_output) == ('{"city": "Paris"}', ["Paris"], "Sunny.")
