"""The turn over HTTP: what is answered, what is stored, and what a bad post leaves behind."""

import httpx
import pytest

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat, post
from tests.support.fake_openai import MODEL, FakeOpenAI


async def test_turn_answers_both_messages_with_consecutive_seqs(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    response = await post(client, chat_id, "What is 2 + 2?")
    assert response.status_code == 201
    turn = response.json()
    user, assistant = turn["user_message"], turn["assistant_message"]
    assert (user["seq"], user["role"], user["content"]) == (1, "user", "What is 2 + 2?")
    assert (assistant["seq"], assistant["role"], assistant["content"]) == (2, "assistant", "echo: What is 2 + 2?")
    assert user["chat_id"] == assistant["chat_id"] == chat_id
    assert assistant["model"] == MODEL
    assert assistant["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    assert user["model"] is None
    assert user["usage"] is None
    assert user["id"] != assistant["id"]
    assert user["created_at"] <= assistant["created_at"]
    chat = (await client.get(f"/chats/{chat_id}")).json()
    assert chat["message_count"] == 2
    assert chat["updated_at"] == assistant["created_at"]


async def test_messages_list_in_seq_order_by_cursor(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    for n in range(4):
        await post(client, chat_id, f"question {n}")
    everything = (await client.get(f"/chats/{chat_id}/messages")).json()
    assert [m["seq"] for m in everything["data"]] == list(range(1, 9))
    assert everything["has_more"] is False
    ids = [m["id"] for m in everything["data"]]

    page = (await client.get(f"/chats/{chat_id}/messages", params={"limit": 3, "after": ids[2]})).json()
    assert [m["id"] for m in page["data"]] == ids[3:6]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[3], ids[5], True)

    newest = (await client.get(f"/chats/{chat_id}/messages", params={"limit": 2, "order": "desc"})).json()
    assert [m["seq"] for m in newest["data"]] == [8, 7]
    older = (await client.get(f"/chats/{chat_id}/messages", params={"order": "desc", "after": ids[6]})).json()
    assert [m["seq"] for m in older["data"]] == [6, 5, 4, 3, 2, 1]
    before = (await client.get(f"/chats/{chat_id}/messages", params={"limit": 2, "before": ids[4]})).json()
    assert ([m["seq"] for m in before["data"]], before["has_more"]) == ([3, 4], True)


async def test_message_cursor_from_another_chat_is_a_422(client: httpx.AsyncClient) -> None:
    first, second = await new_chat(client), await new_chat(client)
    message_id = (await post(client, first, "hi")).json()["user_message"]["id"]
    response = await client.get(f"/chats/{second}/messages", params={"after": message_id})
    assert response.status_code == 422
    assert response.json()["type"].endswith("invalid-cursor")


async def test_post_to_unknown_chat_is_a_404_and_calls_no_llm(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    response = await post(client, "chat_missing", "hello?")
    assert response.status_code == 404
    assert response.json()["type"].endswith("chat-not-found")
    assert fake_llm.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"content": ""},
        {"content": "   \n\t "},
        {"content": "nul \u0000 byte"},
        {"content": 42},
        {"content": None},
        {},
        {"content": "ok", "extra": 1},
        {"content": "ok", "stream": "maybe"},
        "just a string",
    ],
)
async def test_invalid_message_is_a_422_and_stores_nothing(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI, body: object
) -> None:
    chat_id = await new_chat(client)
    response = await client.post(f"/chats/{chat_id}/messages", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"]
    assert (await client.get(f"/chats/{chat_id}/messages")).json()["data"] == []
    assert fake_llm.requests == []


async def test_lone_surrogate_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(client)
    raw = b'{"content": "broken \\ud800 text"}'
    response = await client.post(
        f"/chats/{chat_id}/messages", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert (await client.get(f"/chats/{chat_id}/messages")).json()["data"] == []


async def test_content_over_the_configured_limit_is_a_422(fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, max_message_chars=10)) as client:
        chat_id = await new_chat(client)
        assert (await post(client, chat_id, "x" * 10)).status_code == 201
        response = await post(client, chat_id, "x" * 11)
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "content"]
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 2


async def test_offline_provider_answers_without_network_and_says_so() -> None:
    async with serve(Settings(llm_provider="offline")) as client:
        chat_id = await new_chat(client)
        first = (await post(client, chat_id, "Where is Lisbon?")).json()["assistant_message"]
        second = (await post(client, chat_id, "And Porto?")).json()["assistant_message"]
    assert first["model"] == second["model"] == "chatkeep-offline"
    assert "offline" in first["content"]
    assert "OPENAI_API_KEY" in first["content"]
    assert "Where is Lisbon?" in first["content"]
    assert "message 2" in second["content"]
    assert "Where is Lisbon?" in second["content"]
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


async def test_offline_provider_is_deterministic() -> None:
    replies = []
    for _ in range(2):
        async with serve(Settings(llm_provider="offline")) as client:
            chat_id = await new_chat(client)
            replies.append((await post(client, chat_id, "Same question")).json()["assistant_message"]["content"])
    assert replies[0] == replies[1]
