"""Images and files under /v1, driven by the official `openai` package against chatkeep on a real
socket, over every store: they reach the upstream as Chat Completions parts, are kept once per
content, read back as sent, and what cannot be honoured is refused naming the part, storing nothing."""

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI, Scripted, error_body
from tests.support.images import JPEG, OTHER_PNG, PDF, PNG, b64, data_url, sql_rows

IMAGE_URL = "https://images.example.com/cat.png"


@dataclass
class Served:
    sdk: Any  # an AsyncOpenAI, typed loosely as in test_openai_api.py
    http: httpx.AsyncClient
    fake: FakeOpenAI
    store_url: str


@pytest.fixture
async def served(store_url: str, fake_llm: FakeOpenAI) -> AsyncIterator[Served]:
    async with serve(llm_settings(fake_llm, store=store_url)) as http, _sdk(http) as sdk:
        yield Served(sdk, http, fake_llm, store_url)


def _sdk(http: httpx.AsyncClient) -> Any:
    return AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key="sk-anything", max_retries=0)


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def text(words: str) -> dict[str, Any]:
    return {"type": "input_text", "text": words}


def image(url: str, detail: str = "auto") -> dict[str, Any]:
    return {"type": "input_image", "image_url": url, "detail": detail}


def pdf(file_data: str) -> dict[str, Any]:
    return {"type": "input_file", "filename": "notes.pdf", "file_data": file_data}


ASKED = user(
    text("What is in"),
    image(data_url(PNG), "high"),
    text("and in"),
    image(IMAGE_URL),
    pdf(data_url(PDF, "application/pdf")),
)
# ASKED as the upstream must receive it: Chat Completions parts, in the message's order
SENT = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": data_url(PNG), "detail": "high"}},
        {"type": "text", "text": "and in"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "auto"}},
        {"type": "file", "file": {"file_data": data_url(PDF, "application/pdf"), "filename": "notes.pdf"}},
    ],
}


async def items_of(served: Served, conversation_id: str) -> list[dict[str, Any]]:
    page = await served.http.get(f"/v1/conversations/{conversation_id}/items", params={"order": "asc"})
    assert page.status_code == 200
    items: list[dict[str, Any]] = page.json()["data"]
    return items


async def test_images_and_files_reach_the_upstream_as_parts_in_a_conversation(served: Served) -> None:
    conversation = await served.sdk.conversations.create()
    await served.sdk.responses.create(model="gpt-4o-mini", conversation=conversation.id, input=[ASKED])
    assert served.fake.requests[-1]["messages"][-1] == SENT
    # the next response's context is built from the stored items: the attachments go again, as they were
    await served.sdk.responses.create(model="gpt-4o-mini", conversation=conversation.id, input="And now?")
    prompt = served.fake.requests[-1]["messages"]
    assert [message["role"] for message in prompt] == ["user", "assistant", "user"]
    assert prompt[0] == SENT


async def test_images_reach_the_upstream_again_in_a_chain_of_responses(served: Served) -> None:
    first = await served.sdk.responses.create(model="gpt-4o-mini", input=[ASKED])
    assert served.fake.requests[-1]["messages"][-1] == SENT
    await served.sdk.responses.create(model="gpt-4o-mini", previous_response_id=first.id, input="And now?")
    assert served.fake.requests[-1]["messages"][0] == SENT


async def test_items_read_back_as_sent(served: Served) -> None:
    bare = pdf(b64(PDF))  # a file's bare base64, as OpenAI also takes it
    conversation = await served.sdk.conversations.create(items=[ASKED, user(text("bare"), bare)])
    listed = await items_of(served, conversation.id)
    assert [item["content"] for item in listed] == [ASKED["content"], [text("bare"), bare]]
    one = await served.http.get(f"/v1/conversations/{conversation.id}/items/{listed[0]['id']}")
    assert one.json()["content"] == ASKED["content"]
    items = await served.sdk.conversations.items.list(conversation.id, order="asc")
    assert items.data[0].content[1].image_url == data_url(PNG)  # as the SDK reads it
    # the conversation is a chat: its native messages list their images
    messages = (await served.http.get(f"/chats/{conversation.id}/messages")).json()["data"]
    assert [message.get("images") for message in messages] == [[data_url(PNG), IMAGE_URL], None]

    response = await served.sdk.responses.create(model="gpt-4o-mini", input=[ASKED])
    inputs = (await served.http.get(f"/v1/responses/{response.id}/input_items")).json()["data"]
    assert [item["content"] for item in inputs] == [ASKED["content"]]
    retrieved = await served.sdk.responses.retrieve(response.id)
    assert retrieved.output_text == response.output_text


async def send_one_image_three_times(settings: Settings, fake_llm: FakeOpenAI) -> None:
    """The same image in a conversation's first items, in items appended, and in a response's input."""
    async with serve(settings) as http, _sdk(http) as sdk:
        conversation = await sdk.conversations.create(items=[user(text("one"), image(data_url(PNG)))])
        await sdk.conversations.items.create(conversation.id, items=[user(text("two"), image(data_url(PNG)))])
        await sdk.responses.create(model="gpt-4o-mini", input=[user(text("three"), image(data_url(PNG)))])
        listed = (await http.get(f"/v1/conversations/{conversation.id}/items", params={"order": "asc"})).json()
        assert [item["content"][1]["image_url"] for item in listed["data"]] == [data_url(PNG)] * 2
        assert len(fake_llm.requests) == 1
        sent = fake_llm.requests[0]["messages"][-1]["content"][1]
        assert sent["image_url"] == {"url": data_url(PNG), "detail": "auto"}


async def test_an_image_sent_twice_is_kept_once_in_the_database(sql_store_url: str, fake_llm: FakeOpenAI) -> None:
    await send_one_image_three_times(llm_settings(fake_llm, store=sql_store_url), fake_llm)
    digest = hashlib.sha256(PNG).hexdigest()
    assert await sql_rows(sql_store_url, "SELECT sha256, size FROM blobs") == [(digest, len(PNG))]
    rows = await sql_rows(sql_store_url, "SELECT item FROM messages UNION ALL SELECT input FROM responses")
    assert len(rows) == 3  # the rows reference the blob rather than hold its bytes
    assert not any(b64(PNG) in str(row[0]) for row in rows)
    assert all(digest in str(row[0]) for row in rows)


async def test_an_image_sent_twice_is_kept_once_in_a_blob_directory(
    store_url: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    await send_one_image_three_times(llm_settings(fake_llm, store=store_url, blob_dir=str(blob_dir)), fake_llm)
    digest = hashlib.sha256(PNG).hexdigest()
    assert sorted(path.name for path in blob_dir.iterdir()) == [digest]
    assert (blob_dir / digest).read_bytes() == PNG


REFUSED = [
    (image(data_url(PNG)) | {"file_id": "file-abc"}, "input[0].content[1].file_id", "Files API"),
    ({"type": "input_image", "file_id": "file-abc", "detail": "auto"}, "input[0].content[1].file_id", "Files API"),
    ({"type": "input_file", "file_id": "file-abc"}, "input[0].content[1].file_id", "Files API"),
    (
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        "input[0].content[1].file_url",
        "no form for a file by URL",
    ),
    (image("http://169.254.169.254/latest/meta-data/"), "input[0].content[1].image_url", "https://"),
    (image("file:///etc/passwd"), "input[0].content[1].image_url", "https://"),
    (image("https://"), "input[0].content[1].image_url", "https://"),
    (image("data:image/png;base64,!!!!"), "input[0].content[1].image_url", "base64"),
    (image("data:image/png;base64," + b64(PNG)[:-2] + "A"), "input[0].content[1].image_url", "base64"),
    (image(data_url(b"hello", "text/plain")), "input[0].content[1].image_url", "image/png"),
    (image(data_url(JPEG)), "input[0].content[1].image_url", "not a image/png image"),
    (image(data_url(PNG), "maximal"), "input[0].content[1].detail", "detail"),
    ({"type": "input_file", "file_data": b64(PDF)}, "input[0].content[1].filename", "filename"),
    ({"type": "input_file", "filename": "x.pdf", "file_data": "%%%"}, "input[0].content[1].file_data", "base64"),
    ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "input[0].content[1].type", "text"),
]


@pytest.mark.parametrize(("part", "param", "says"), REFUSED)
async def test_what_cannot_be_honoured_is_refused_naming_the_part_and_nothing_is_stored(
    served: Served, part: dict[str, Any], param: str, says: str
) -> None:
    conversation = await served.sdk.conversations.create()
    with pytest.raises(openai.BadRequestError) as refused:
        await served.sdk.responses.create(
            model="gpt-4o-mini", conversation=conversation.id, input=[user(text("look"), part)]
        )
    assert (refused.value.status_code, refused.value.param) == (400, param)
    assert says in refused.value.message
    with pytest.raises(openai.BadRequestError):
        await served.sdk.conversations.items.create(conversation.id, items=[user(text("look"), part)])
    assert await items_of(served, conversation.id) == []
    assert served.fake.requests == []
    await _no_blobs(served.store_url)


async def test_an_attachment_outside_a_user_message_is_refused(served: Served) -> None:
    said = {"type": "message", "role": "system", "content": [text("see"), image(data_url(PNG))]}
    with pytest.raises(openai.BadRequestError) as refused:
        await served.sdk.conversations.create(items=[user(text("hi")), said])
    assert refused.value.param == "items[1].content[1]"
    assert "only a user message" in refused.value.message


async def test_an_image_in_a_function_calls_output_is_refused(served: Served) -> None:
    output = {"type": "function_call_output", "call_id": "call_1", "output": [text("a cat"), image(data_url(PNG))]}
    with pytest.raises(openai.BadRequestError) as refused:
        await served.sdk.responses.create(model="gpt-4o-mini", input=[output])
    assert refused.value.param == "input[0].output[1]"
    assert "takes text alone" in refused.value.message


async def _no_blobs(store_url: str) -> None:
    if store_url != "memory://":
        assert await sql_rows(store_url, "SELECT sha256 FROM blobs") == []


async def test_oversize_attachments_are_refused_with_413_naming_the_part(store_url: str, fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(
        fake_llm, store=store_url, max_attachment_bytes=len(PNG), max_request_attachment_bytes=len(PNG) + 10
    )
    async with serve(settings) as http, _sdk(http) as sdk:
        conversation = await sdk.conversations.create()
        one_too_large = user(text("big"), image(data_url(PNG + b"\x00")))
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.responses.create(model="gpt-4o-mini", conversation=conversation.id, input=[one_too_large])
        assert (refused.value.status_code, _param(refused.value)) == (413, "input[0].content[1].image_url")
        assert f"at most {len(PNG)} bytes" in refused.value.message
        two_together = [user(text("a"), image(data_url(PNG))), user(text("b"), image(data_url(OTHER_PNG)))]
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.conversations.items.create(conversation.id, items=two_together)
        assert (refused.value.status_code, _param(refused.value)) == (413, "items[1].content[1].image_url")
        assert (await http.get(f"/v1/conversations/{conversation.id}/items")).json()["data"] == []
        fits = await sdk.responses.create(model="gpt-4o-mini", input=[user(text("fits"), image(data_url(PNG)))])
        assert fits.status == "completed"
    assert len(fake_llm.requests) == 1


def _param(error: openai.APIStatusError) -> Any:
    body: Any = error.body
    return body["param"]


async def test_a_text_only_model_refusing_an_image_is_a_400_naming_the_model(served: Served) -> None:
    conversation = await served.sdk.conversations.create()
    refusal = error_body("this model does not support image inputs", "invalid_request_error")
    served.fake.queue(Scripted(status=400, json_body=refusal))
    with pytest.raises(openai.BadRequestError) as refused:
        await served.sdk.responses.create(
            model="gpt-4o-mini", conversation=conversation.id, input=[user(text("see"), image(data_url(PNG)))]
        )
    assert refused.value.code == "llm_input_refused"
    assert "model 'gpt-4o-mini' does not accept image input" in refused.value.message
    # as any failed reply: the question stays stored, a later response answers after it
    assert [item["role"] for item in await items_of(served, conversation.id)] == ["user"]
    # a refusal of a prompt without attachments is the upstream's failing, as before
    served.fake.queue(Scripted(status=400, json_body=error_body("no", "invalid_request_error")))
    with pytest.raises(openai.InternalServerError) as failed:
        await served.sdk.responses.create(model="gpt-4o-mini", input="plain words")
    assert failed.value.status_code == 502


async def test_a_streamed_response_with_an_image_sends_it_and_reads_back(served: Served) -> None:
    conversation = await served.sdk.conversations.create()
    stream = await served.sdk.responses.create(
        model="gpt-4o-mini", conversation=conversation.id, input=[ASKED], stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.completed"
    assert served.fake.requests[-1]["messages"][-1] == SENT
    assert (await items_of(served, conversation.id))[0]["content"] == ASKED["content"]
