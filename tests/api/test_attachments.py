"""Images on the native API: a message post's `images` reach the model as image parts after its
text, are stored with the message and listed back in its JSON; a bad image is a problem naming
it, with nothing stored; the routes that take attachments take bodies as large as they need,
and no other route more than before."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.app import llm_settings, serve
from tests.support.chats import messages_of, new_chat
from tests.support.fake_openai import FakeOpenAI, Scripted, error_body
from tests.support.images import JPEG, OTHER_PNG, PNG, b64, data_url
from tests.support.sse import events_of

IMAGE_URL = "https://images.example.com/cat.png"
MEDIA_PROBLEM = "application/problem+json"


@pytest.fixture
async def http(store_url: str, fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(llm_settings(fake_llm, store=store_url)) as client:
        yield client


def asked(words: str, *images: str) -> dict[str, Any]:
    """The user message the upstream must be sent: the words, then each image."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": words}]
    parts += [{"type": "image_url", "image_url": {"url": url, "detail": "auto"}} for url in images]
    return {"role": "user", "content": parts}


async def test_a_posted_image_reaches_the_model_and_is_listed_back(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(http)
    images = [data_url(PNG), IMAGE_URL]
    posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "What is this?", "images": images})
    assert posted.status_code == 201, posted.text
    question = posted.json()["user_message"]
    assert (question["content"], question["images"]) == ("What is this?", images)
    assert fake_llm.requests[-1]["messages"][-1] == asked("What is this?", *images)
    listed = await messages_of(http, chat_id)
    assert [message.get("images", []) for message in listed] == [images, []]
    # the next turn's context is read from the store: the image goes again
    await http.post(f"/chats/{chat_id}/messages", json={"content": "And now?"})
    assert fake_llm.requests[-1]["messages"][1] == asked("What is this?", *images)


async def test_a_streamed_post_with_an_image(http: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(http)
    body = {"content": "Describe it", "images": [data_url(OTHER_PNG)], "stream": True}
    async with http.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
        assert response.status_code == 200
        events = await events_of(response.aiter_lines())
    first, last = events[0], events[-1]
    assert (first["event"], first["data"]["images"]) == ("user_message", [data_url(OTHER_PNG)])
    assert last["event"] == "assistant_message"
    assert fake_llm.requests[-1]["messages"][-1] == asked("Describe it", data_url(OTHER_PNG))


BAD_IMAGES = [
    ("data:image/png;base64,!!!!", 400, "base64"),
    ("data:image/png;base64," + b64(PNG).replace("=", ""), 400, "base64"),
    (data_url(JPEG), 400, "not a image/png image"),
    (data_url(b"<svg/>", "image/svg+xml"), 422, "pattern"),
    ("http://169.254.169.254/latest/meta-data/", 422, "pattern"),
    ("file:///etc/passwd", 422, "pattern"),
    ("https://", 400, "https://"),
]


@pytest.mark.parametrize(("image", "status", "says"), BAD_IMAGES)
async def test_a_bad_image_is_a_problem_naming_it_and_nothing_is_stored(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI, image: str, status: int, says: str
) -> None:
    chat_id = await new_chat(http)
    posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "look", "images": [IMAGE_URL, image]})
    assert (posted.status_code, posted.headers["content-type"]) == (status, MEDIA_PROBLEM)
    problem = posted.json()
    if status == 400:
        assert problem["param"] == "images[1]"
    else:
        assert problem["errors"][0]["loc"] == ["body", "images", 1]
    assert says in str(problem)
    assert await messages_of(http, chat_id) == []
    assert fake_llm.requests == []


async def test_oversize_images_are_a_413_naming_them(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, max_attachment_bytes=len(PNG), max_request_attachment_bytes=len(PNG) + 1)
    async with serve(settings) as http:
        chat_id = await new_chat(http)
        for images, param in (([data_url(PNG + b"\x00")], "images[0]"), ([data_url(PNG)] * 2, "images[1]")):
            posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "big", "images": images})
            assert (posted.status_code, posted.json()["param"]) == (413, param)
        assert await messages_of(http, chat_id) == []


async def test_routes_with_attachments_take_larger_bodies_and_no_other_does(fake_llm: FakeOpenAI) -> None:
    large = data_url(PNG + bytes(1_500_000))  # over the 1 MiB every other route takes
    async with serve(llm_settings(fake_llm)) as http:
        chat_id = await new_chat(http)
        posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "large", "images": [large]})
        assert posted.status_code == 201, posted.text[:300]
        assert (await messages_of(http, chat_id))[0]["images"] == [large]
        spaced = b"{" + b" " * 1_100_000 + b"}"  # JSON over 1 MiB: still too large on any other route
        too_large = await http.patch(f"/chats/{chat_id}", content=spaced, headers={"content-type": "application/json"})
        assert too_large.status_code == 413
    small = llm_settings(fake_llm, max_request_attachment_bytes=1000)
    async with serve(small) as http:
        chat_id = await new_chat(http)
        posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "large", "images": [large]})
        assert posted.status_code == 413
        assert "request body is over the limit" in posted.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(40):
                yield b" " * 65536

        chunked = await http.post(
            f"/chats/{chat_id}/messages", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert await messages_of(http, chat_id) == []


async def test_a_question_with_an_image_whose_reply_failed_is_retried_with_it(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(http)
    fake_llm.queue(*[Scripted(status=503)] * 3)  # every try of the first call fails
    failed = await http.post(f"/chats/{chat_id}/messages", json={"content": "see", "images": [data_url(PNG)]})
    assert failed.status_code == 502
    question_id = failed.json()["user_message_id"]
    retried = await http.post(f"/chats/{chat_id}/messages/{question_id}/retry")
    assert retried.status_code == 201, retried.text
    assert retried.json()["user_message"]["images"] == [data_url(PNG)]
    assert fake_llm.requests[-1]["messages"][-1] == asked("see", data_url(PNG))


async def test_a_text_only_model_refusing_an_image_is_a_400_naming_the_model(
    http: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(http)
    fake_llm.queue(Scripted(status=400, json_body=error_body("image input is not supported", "invalid_request_error")))
    posted = await http.post(f"/chats/{chat_id}/messages", json={"content": "see", "images": [data_url(PNG)]})
    problem = posted.json()
    assert (posted.status_code, problem["type"]) == (400, "urn:chatkeep:problem:llm-input-refused")
    assert "model 'gpt-4o-mini' does not accept image input" in problem["detail"]
    stored = await messages_of(http, chat_id)  # as any failed reply: the question stays, named
    assert [message["id"] for message in stored] == [problem["user_message_id"]]
