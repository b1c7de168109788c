"""Background responses (`background: true`) through the official `openai` SDK, on every store:
answered at once and made on; read back at every stage; their events replayed and followed
after any sequence number; cancelled, queued or running; refused as OpenAI refuses them."""

import openai
import pytest

from tests.support.fake_openai import Scripted
from tests.support.openai_sdk import Served, all_items, until_response

SLOW_WORDS = " ".join(f"w{n}" for n in range(40))


def slow_reply(served: Served, *, chunk_delay: float = 0.05) -> None:
    served.fake.queue(Scripted(content=SLOW_WORDS, chunk_delay=chunk_delay))


async def test_a_background_response_answers_at_once_and_is_read_at_every_stage(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    slow_reply(served)
    started = await sdk.responses.create(model="fake-model", input="go", conversation=conversation.id, background=True)
    assert (started.status, started.background, started.output) == ("queued", True, [])
    midway = await until_response(sdk, started.id, lambda r: r.status == "in_progress" and r.output_text)
    assert SLOW_WORDS.startswith(midway.output_text)
    assert len(midway.output_text) < len(SLOW_WORDS)
    assert midway.output[0].status == "in_progress"
    final = await until_response(sdk, started.id, lambda r: r.status != "in_progress")
    assert (final.status, final.background, final.output_text) == ("completed", True, SLOW_WORDS)
    assert final.output[0].id == midway.output[0].id
    assert final.usage is not None
    items = await all_items(sdk, conversation.id, order="asc")
    assert [(item.role, item.content[0].text) for item in items] == [("user", "go"), ("assistant", SLOW_WORDS)]
    assert [item.id for item in (await sdk.responses.input_items.list(final.id)).data] == [items[0].id]


async def test_a_chained_background_response_is_made_on_no_chat(served: Served) -> None:
    sdk = served.sdk
    first = await sdk.responses.create(model="fake-model", input="one", background=True)
    first = await until_response(sdk, first.id, lambda r: r.status == "completed")
    second = await sdk.responses.create(model="fake-model", input="two", previous_response_id=first.id, background=True)
    second = await until_response(sdk, second.id, lambda r: r.status == "completed")
    assert (first.output_text, second.output_text) == ("echo: one", "echo: two")
    assert [message["content"] for message in served.fake.prompts[1]] == ["one", "echo: one", "two"]


async def test_a_stream_after_any_sequence_number_is_the_tail_of_the_whole(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    slow_reply(served, chunk_delay=0.02)
    stream = await sdk.responses.create(
        model="fake-model", input="go", conversation=conversation.id, background=True, stream=True
    )
    live = [event async for event in stream]
    assert live[0].type == "response.created"
    assert live[0].response.background is True
    assert [event.sequence_number for event in live] == list(range(len(live)))
    assert live[-1].type == "response.completed"
    assert live[-1].response.output_text == SLOW_WORDS
    whole = [event.model_dump() for event in live]
    response_id = live[-1].response.id
    replayed = [event.model_dump() async for event in await sdk.responses.retrieve(response_id, stream=True)]
    assert replayed == whole
    for after in (0, 1, 7, len(whole) - 2, len(whole) - 1):
        tail = await sdk.responses.retrieve(response_id, stream=True, starting_after=after)
        assert [event.model_dump() async for event in tail] == whole[after + 1 :]


async def test_a_running_response_is_followed_from_the_start_or_after_n(served: Served) -> None:
    sdk = served.sdk
    slow_reply(served)
    started = await sdk.responses.create(model="fake-model", input="go", background=True)
    await until_response(sdk, started.id, lambda r: r.output_text)
    followers = [
        sdk.responses.retrieve(started.id, stream=True),
        sdk.responses.retrieve(started.id, stream=True, starting_after=5),
    ]
    whole, tail = [[event.model_dump() async for event in await follower] for follower in followers]
    assert whole[-1]["type"] == "response.completed"
    assert tail == whole[6:]
    again = [event.model_dump() async for event in await sdk.responses.retrieve(started.id, stream=True)]
    assert again == whole


async def test_a_dropped_stream_leaves_the_response_to_finish(served: Served) -> None:
    sdk = served.sdk
    slow_reply(served, chunk_delay=0.02)
    stream = await sdk.responses.create(model="fake-model", input="go", background=True, stream=True)
    seen = []
    async for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    final = await until_response(sdk, seen[0].response.id, lambda r: r.status == "completed")
    assert final.output_text == SLOW_WORDS


async def test_cancelling_a_running_response_keeps_what_it_wrote(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    slow_reply(served)
    started = await sdk.responses.create(model="fake-model", input="go", conversation=conversation.id, background=True)
    await until_response(sdk, started.id, lambda r: len(r.output_text) > 10)
    cancelled = await sdk.responses.cancel(started.id)
    assert (cancelled.status, cancelled.background, cancelled.incomplete_details) == ("cancelled", True, None)
    assert 10 < len(cancelled.output_text) < len(SLOW_WORDS)
    assert SLOW_WORDS.startswith(cancelled.output_text)
    assert (await sdk.responses.retrieve(started.id)).model_dump() == cancelled.model_dump()
    assert (await sdk.responses.cancel(started.id)).model_dump() == cancelled.model_dump()  # an ended one, as it ended
    items = await all_items(sdk, conversation.id, order="asc")
    assert [item.content[0].text for item in items] == ["go", cancelled.output_text]
    assert items[1].status == "incomplete"
    events = [event async for event in await sdk.responses.retrieve(started.id, stream=True)]
    assert (events[-1].type, events[-1].response.status) == ("response.incomplete", "cancelled")


async def test_cancelling_a_queued_response_runs_nothing_of_it(served: Served) -> None:
    sdk = served.sdk
    conversation = await sdk.conversations.create()
    slow_reply(served)
    ask = {"model": "fake-model", "conversation": conversation.id, "background": True}
    first = await sdk.responses.create(input="first", **ask)
    queued = await sdk.responses.create(input="second", **ask)
    await until_response(sdk, first.id, lambda r: r.output_text)
    assert (await sdk.responses.retrieve(queued.id)).status == "queued"
    cancelled = await sdk.responses.cancel(queued.id)
    assert (cancelled.status, cancelled.output) == ("cancelled", [])
    await until_response(sdk, first.id, lambda r: r.status == "completed")
    assert (await sdk.responses.retrieve(queued.id)).status == "cancelled"
    items = await all_items(sdk, conversation.id, order="asc")
    assert [item.content[0].text for item in items] == ["first", SLOW_WORDS]
    assert len(served.fake.requests) == 1
    events = [event async for event in await sdk.responses.retrieve(queued.id, stream=True)]
    assert [event.type for event in events] == ["response.created", "response.in_progress", "response.incomplete"]


async def test_background_responses_are_refused_and_answered_as_openai_does(served: Served) -> None:
    sdk = served.sdk
    with pytest.raises(openai.BadRequestError) as unkept:
        await sdk.responses.create(model="fake-model", input="x", background=True, store=False)
    assert unkept.value.param == "background"
    assert served.fake.requests == []
    plain = await sdk.responses.create(model="fake-model", input="not in the background")
    with pytest.raises(openai.BadRequestError) as not_streamable:
        await sdk.responses.retrieve(plain.id, stream=True)
    assert not_streamable.value.param == "stream"
    with pytest.raises(openai.BadRequestError):
        await sdk.responses.cancel(plain.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.responses.cancel("resp_nothing")
    assert unknown.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve("resp_nothing", stream=True)
    unstored = await sdk.responses.create(model="fake-model", input="not kept", store=False)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(unstored.id)
    refused = await served.http.post(
        "/v1/responses", json={"model": "fake-model", "input": "x", "background": True, "conversation": "chat_none"}
    )
    assert refused.status_code == 404
    assert (await served.http.get("/v1/responses/resp_x?stream=true&starting_after=abc")).status_code == 400
