"""Every object, item and event chatkeep's /v1 answers, validated strictly against the `openai`
SDK's own pydantic types, on every store.

The SDK parses answers without validating them (a missing required field becomes a missing
attribute, found only when a client reads it), so this walk takes the raw JSON of each answer and
validates it with `model_validate(strict=True)`: every field the SDK requires must be there, of
its type. Union types (items, events) are matched by their `type` (and role), as the SDK does.
"""

import asyncio
import types
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types import Model
from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItemList
from openai.types.conversations.conversation_item import ConversationItem
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from openai.types.responses.input_token_count_response import InputTokenCountResponse
from openai.types.responses.response_item import ResponseItem
from pydantic import BaseModel, ValidationError

from tests.support.app import llm_settings, serve
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.sse import events_of

TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


def members(union: Any) -> list[type[BaseModel]]:
    """The model classes of one of the SDK's (annotated) union types."""
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    if typing.get_origin(union) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(union) for member in members(arg)]
    return [union]


def _accepts(model: type[BaseModel], field: str, value: Any) -> bool:
    info = model.model_fields.get(field)
    if info is None:
        return True
    allowed = typing.get_args(info.annotation)
    return typing.get_origin(info.annotation) is not typing.Literal or value in allowed


def strictly(expected: Any, data: dict[str, Any]) -> None:
    """Validate `data` strictly as `expected` (a model, or a union matched by `type` and `role`)."""
    candidates = [
        model
        for model in members(expected)
        if _accepts(model, "type", data.get("type")) and _accepts(model, "role", data.get("role"))
    ]
    assert candidates, f"no SDK type takes {data.get('type')!r}: {data}"
    errors = []
    for model in candidates:
        try:
            model.model_validate(data, strict=True)
            return
        except ValidationError as error:
            errors.append(f"{model.__name__}: {error}")
    pytest.fail("\n".join(errors))


class Walk:
    """chatkeep's raw answers, each validated as the SDK type named."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.checked: set[str] = set()
        self.statuses: set[Any] = set()

    async def call(self, expected: Any, method: str, path: str, **body: Any) -> dict[str, Any]:
        answer = await self.http.request(method, path, json=body or None)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        strictly(expected, data)
        self.checked.add(data.get("object") or data.get("type") or path)
        self.statuses.add(data.get("status"))
        for item in data.get("data", []) if data.get("object") == "list" else []:
            strictly(ConversationItem if "/conversations/" in path else ResponseItem, item)
            self.checked.add(f"item:{item['type']}")
        for item in data["output"] if data.get("object") == "response" else []:
            strictly(ResponseItem, item)
            self.checked.add(f"output:{item['type']}")
        return data

    async def stream(self, **body: Any) -> list[dict[str, Any]]:
        return await self._events("POST", "/v1/responses", {**body, "stream": True})

    async def replay(self, response_id: str) -> list[dict[str, Any]]:
        return await self._events("GET", f"/v1/responses/{response_id}?stream=true", None)

    async def _events(self, method: str, path: str, body: dict[str, Any] | None) -> list[dict[str, Any]]:
        async with self.http.stream(method, path, json=body) as answer:
            events = [event["data"] for event in await events_of(answer.aiter_lines()) if "data" in event]
        for event in events:
            strictly(ResponseStreamEvent, event)
            self.checked.add(event["type"])
            if "response" in event:
                strictly(Response, event["response"])
            if "item" in event:
                strictly(ResponseItem, event["item"])
        return events


async def until_status(walk: Walk, response_id: str, status: str) -> None:
    for _ in range(200):
        if (await walk.call(Response, "GET", f"/v1/responses/{response_id}"))["status"] == status:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"response {response_id} never became {status}")


@pytest.fixture
async def walk(store_url: str, fake_llm: FakeOpenAI) -> AsyncIterator[Walk]:
    async with serve(llm_settings(fake_llm, store=store_url)) as http:
        yield Walk(http)


async def test_every_answer_validates_strictly_as_the_sdk_types_it(walk: Walk, fake_llm: FakeOpenAI) -> None:
    items = [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use metric."}]},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "again"}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
    ]
    conversation = await walk.call(Conversation, "POST", "/v1/conversations", items=items, metadata={"k": "v"})
    conversation_id = conversation["id"]
    await walk.call(Conversation, "GET", f"/v1/conversations/{conversation_id}")
    await walk.call(Conversation, "POST", f"/v1/conversations/{conversation_id}", metadata={"k": "w"})
    added = await walk.call(
        ConversationItemList, "POST", f"/v1/conversations/{conversation_id}/items", items=[items[2]]
    )
    listed = await walk.call(ConversationItemList, "GET", f"/v1/conversations/{conversation_id}/items?limit=100")
    assert len(listed["data"]) == len(items) + 1
    for item in listed["data"]:
        await walk.call(ConversationItem, "GET", f"/v1/conversations/{conversation_id}/items/{item['id']}")
    await walk.call(Conversation, "DELETE", f"/v1/conversations/{conversation_id}/items/{added['data'][0]['id']}")

    answered = await walk.call(
        Response, "POST", "/v1/responses", model="fake-model", input="q", conversation=conversation_id
    )
    await walk.call(Response, "GET", f"/v1/responses/{answered['id']}")
    await walk.call(ResponseItemList, "GET", f"/v1/responses/{answered['id']}/input_items")
    fake_llm.queue(Scripted(content="Checking.", tool_calls=[("lookup", '{"q": 1}')]))
    called = await walk.call(Response, "POST", "/v1/responses", model="fake-model", input="look", tools=[TOOL])
    assert [item["type"] for item in called["output"]] == ["message", "function_call"]
    fake_llm.queue(Scripted(content="cut short here", cut_after=2))
    cut = await walk.stream(model="fake-model", input="long", previous_response_id=called["id"])
    assert cut[-1]["type"] == "response.incomplete"
    fake_llm.queue(Scripted(content="Checking.", tool_calls=[("lookup", '{"q": 2}')], chunk_delay=0.01))
    await walk.stream(model="fake-model", input="look again", tools=[TOOL], conversation=conversation_id)
    fake_llm.queue(*[Scripted(status=500)] * 5)  # more than the retries
    failed = await walk.stream(model="fake-model", input="fail")
    assert failed[-1]["type"] == "response.failed"
    fake_llm.queue(Scripted(content=" ".join(["word"] * 30), chunk_delay=0.05))
    background = await walk.call(Response, "POST", "/v1/responses", model="fake-model", input="slow", background=True)
    assert background["status"] in ("queued", "in_progress")
    await until_status(walk, background["id"], "in_progress")
    cancelled = await walk.call(Response, "POST", f"/v1/responses/{background['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    replayed = await walk.replay(background["id"])
    assert replayed[-1]["response"]["status"] == "cancelled"
    await walk.call(InputTokenCountResponse, "POST", "/v1/responses/input_tokens", model="fake-model", input="count me")
    models = (await walk.http.get("/v1/models")).json()["data"]
    for model in models:
        strictly(Model, model)
    await walk.call(Model, "GET", f"/v1/models/{models[0]['id']}")
    await walk.call(ConversationDeletedResource, "DELETE", f"/v1/conversations/{conversation_id}")

    assert walk.checked >= {
        "conversation",
        "conversation.deleted",
        "list",
        "response",
        "response.input_tokens",
        "model",
        *(f"item:{kind}" for kind in ("message", "function_call", "function_call_output", "reasoning")),
        "output:message",
        "output:function_call",
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",
        "response.failed",
    }
    assert {"queued", "in_progress", "cancelled", "completed"} <= walk.statuses
