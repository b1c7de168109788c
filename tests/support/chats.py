"""Chats and turns over chatkeep's native HTTP API, and what a chat reads back as."""

import asyncio
from typing import Any

import httpx


async def new_chat(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/chats", json=body)
    assert response.status_code == 201, response.text
    chat_id: str = response.json()["id"]
    return chat_id


async def post(client: httpx.AsyncClient, chat_id: str, content: str) -> httpx.Response:
    return await client.post(f"/chats/{chat_id}/messages", json={"content": content})


async def post_after(client: httpx.AsyncClient, chat_id: str, content: str, delay: float) -> httpx.Response:
    """`post`, `delay` seconds from now: turns started together arrive in a known order."""
    await asyncio.sleep(delay)
    return await post(client, chat_id, content)


async def chat_with_turns(client: httpx.AsyncClient, *questions: str, **body: Any) -> str:
    """A new chat (`body` its fields) with each question posted, and answered, in turn."""
    chat_id = await new_chat(client, **body)
    for question in questions:
        posted = await post(client, chat_id, question)
        assert posted.status_code == 201, posted.text
    return chat_id


async def chat_with(client: httpx.AsyncClient, title: str, *questions: str) -> str:
    """A new chat titled `title` with each question posted, and answered, in turn."""
    return await chat_with_turns(client, *questions, title=title)


def keyed(key: str) -> dict[str, str]:
    """The headers of a request sent with `key` as its Idempotency-Key."""
    return {"Idempotency-Key": key}


async def message_page(client: httpx.AsyncClient, chat_id: str, **params: Any) -> dict[str, Any]:
    """A page of a chat's messages: the first 100 unless `params` say otherwise."""
    response = await client.get(f"/chats/{chat_id}/messages", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def messages_of(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    """A chat's first 100 messages."""
    messages: list[dict[str, Any]] = (await message_page(client, chat_id))["data"]
    return messages


async def all_messages(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    """Every message of a chat, page after page."""
    messages: list[dict[str, Any]] = []
    while True:
        page = await message_page(client, chat_id, **({"after": messages[-1]["id"]} if messages else {}))
        messages += page["data"]
        if not page["has_more"]:
            return messages


def assert_paired(messages: list[dict[str, Any]]) -> None:
    """user, assistant, user, assistant...: each reply answers the question right before it."""
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert answer["content"] == f"echo: {question['content']}"


def as_owner(key: str) -> dict[str, str]:
    """The headers of a request made with `key`, the API key of its owner."""
    return {"Authorization": f"Bearer {key}"}
