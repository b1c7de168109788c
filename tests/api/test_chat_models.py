"""A chat's model: chosen from the models served, asked upstream by its turns, named by its replies;
and chats listed by last activity."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.app import llm_settings, serve
from tests.support.chats import messages_of, new_chat, post
from tests.support.fake_openai import MODEL, FakeOpenAI, Scripted
from tests.support.sse import events_of

DEFAULT, BIG, SMALL = "fake-model", "big-model", "small-model"


@pytest.fixture
async def models_client(fake_llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep serving three models, its upstream answering as the model it was asked for."""
    fake_llm.reported_model = lambda body: body["model"]
    async with serve(llm_settings(fake_llm, llm_model=DEFAULT, llm_models=f"{BIG}, {SMALL}")) as client:
        yield client


def assert_model_refused(response: httpx.Response, sent: str) -> None:
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("model-not-served")
    assert [issue["loc"] for issue in problem["errors"]] == [["body", "model"]]
    assert all(repr(name) in problem["detail"] for name in (DEFAULT, BIG, SMALL))
    assert repr(sent) in problem["detail"]
    assert sent not in (DEFAULT, BIG, SMALL)


async def test_the_models_served_are_listed_the_default_first(models_client: httpx.AsyncClient) -> None:
    response = await models_client.get("/models")
    assert response.status_code == 200
    assert response.json() == {"data": [{"id": DEFAULT}, {"id": BIG}, {"id": SMALL}], "default": DEFAULT}


async def test_a_chat_keeps_the_model_it_names_and_null_is_the_default(models_client: httpx.AsyncClient) -> None:
    created = (await models_client.post("/chats", json={"model": BIG})).json()
    assert created["model"] == BIG
    assert (await models_client.get(f"/chats/{created['id']}")).json()["model"] == BIG
    assert (await models_client.post("/chats")).json()["model"] is None
    changed = await models_client.patch(f"/chats/{created['id']}", json={"model": SMALL})
    assert changed.status_code == 200
    assert changed.json()["model"] == SMALL
    assert (await models_client.patch(f"/chats/{created['id']}", json={"title": "t"})).json()["model"] == SMALL
    assert (await models_client.patch(f"/chats/{created['id']}", json={"model": None})).json()["model"] is None


async def test_a_model_not_served_is_a_422_naming_the_field_and_nothing_is_stored(
    models_client: httpx.AsyncClient,
) -> None:
    for sent in ("gpt-unknown", "BIG-MODEL", " big-model"):
        assert_model_refused(await models_client.post("/chats", json={"title": "x", "model": sent}), sent)
    assert (await models_client.get("/chats")).json()["data"] == []
    chat_id = await new_chat(models_client, model=BIG)
    before = (await models_client.get(f"/chats/{chat_id}")).json()
    refused = await models_client.patch(f"/chats/{chat_id}", json={"title": "renamed", "model": "gpt-unknown"})
    assert_model_refused(refused, "gpt-unknown")
    assert (await models_client.get(f"/chats/{chat_id}")).json() == before
    for wrong in (3, "", ["big-model"]):
        assert (await models_client.post("/chats", json={"model": wrong})).status_code == 422


async def test_a_turn_asks_its_chats_model_and_the_reply_says_which_answered(
    models_client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chosen = await new_chat(models_client, model=BIG)
    default = await new_chat(models_client)
    assert (await post(models_client, chosen, "hi")).json()["assistant_message"]["model"] == BIG
    assert (await post(models_client, default, "hi")).json()["assistant_message"]["model"] == DEFAULT
    assert [request["model"] for request in fake_llm.requests] == [BIG, DEFAULT]
    await models_client.patch(f"/chats/{chosen}", json={"model": SMALL})
    await post(models_client, chosen, "again")
    assert fake_llm.requests[-1]["model"] == SMALL
    assert [m["model"] for m in await messages_of(models_client, chosen)] == [None, BIG, None, SMALL]


async def test_a_streamed_reply_names_the_model_asked_when_the_upstream_names_none(
    models_client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.reported_model = lambda body: None
    chat_id = await new_chat(models_client, model=SMALL)
    request = {"content": "stream it", "stream": True}
    async with models_client.stream("POST", f"/chats/{chat_id}/messages", json=request) as response:
        events = await events_of(response.aiter_lines())
    assert fake_llm.requests[-1]["model"] == SMALL
    assert events[-1]["data"]["model"] == SMALL
    assert (await messages_of(models_client, chat_id))[-1]["model"] == SMALL
    plain = await post(models_client, chat_id, "plain")
    assert plain.json()["assistant_message"]["model"] == SMALL


async def test_a_retried_reply_asks_the_chats_model_too(models_client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(models_client, model=BIG)
    fake_llm.queue(*[Scripted(status=400, json_body={"error": {"message": "no"}})])
    failed = await post(models_client, chat_id, "fails once")
    assert failed.status_code == 502
    question = failed.json()["user_message_id"]
    retried = await models_client.post(f"/chats/{chat_id}/messages/{question}/retry")
    assert retried.status_code == 201, retried.text
    assert retried.json()["assistant_message"]["model"] == BIG
    assert [request["model"] for request in fake_llm.requests] == [BIG, BIG]


async def test_a_stopped_reply_names_the_model_asked(models_client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(models_client, model=SMALL)
    fake_llm.queue(Scripted(content="one two three four five six", chunk_delay=0.2))
    request = {"content": "slowly", "stream": True}
    async with models_client.stream("POST", f"/chats/{chat_id}/messages", json=request) as response:
        lines = response.aiter_lines()
        question: dict[str, Any] | None = None
        async for line in lines:
            if line.startswith("data:") and question is None:
                question = json.loads(line[5:])
            if line.startswith("event: delta"):
                break
        assert question is not None
        stopped = await models_client.post(f"/chats/{chat_id}/messages/{question['id']}/cancel")
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["status"], stopped.json()["model"]) == ("incomplete", SMALL)


async def v1_response(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/responses", json={"input": "hi", **body})
    assert response.status_code == 200, response.text
    answered: dict[str, Any] = response.json()
    return answered


async def test_a_v1_response_asks_the_model_named_else_the_conversations_else_the_default(
    models_client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(models_client, model=BIG)
    assert (await v1_response(models_client, model=SMALL, conversation=chat_id))["model"] == SMALL
    assert (await v1_response(models_client, model=DEFAULT, conversation=chat_id))["model"] == DEFAULT
    assert (await v1_response(models_client, model="not-served", conversation=chat_id))["model"] == BIG
    assert (await v1_response(models_client, model="not-served"))["model"] == DEFAULT
    assert [request["model"] for request in fake_llm.requests] == [SMALL, DEFAULT, BIG, DEFAULT]
    assert MODEL == DEFAULT


async def listed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/chats", params={"order_by": "updated_at", **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_chats_list_by_last_activity_with_cursors_that_stay_put(
    models_client: httpx.AsyncClient,
) -> None:
    ids = [await new_chat(models_client, title=str(n)) for n in range(4)]
    await asyncio.sleep(0.002)
    await post(models_client, ids[0], "the oldest chat speaks")
    first = await listed(models_client, limit=2)
    assert [chat["id"] for chat in first["data"]] == [ids[0], ids[3]]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[3], True)
    assert first["last_cursor"].startswith(f"{ids[3]}.")
    await post(models_client, ids[3], "the last listed chat moves up")
    rest = await listed(models_client, after=first["last_cursor"])
    assert [chat["id"] for chat in rest["data"]] == [ids[2], ids[1]]
    by_creation = (await models_client.get("/chats", params={"limit": 2})).json()
    assert [chat["id"] for chat in by_creation["data"]] == [ids[3], ids[2]]
    assert (by_creation["first_cursor"], by_creation["last_cursor"]) == (ids[3], ids[2])


async def test_a_bad_order_by_or_cursor_is_a_422(models_client: httpx.AsyncClient) -> None:
    await new_chat(models_client)
    assert (await models_client.get("/chats", params={"order_by": "title"})).status_code == 422
    for cursor in ("conv_nope", "conv_nope.x", "conv_nope.99999999999999999999", "."):
        response = await models_client.get("/chats", params={"order_by": "updated_at", "after": cursor})
        assert response.status_code == 422, cursor
        assert response.headers["content-type"] == "application/problem+json"
