"""GET /search over each store, its problems, and GET /chats?q= pointing to it."""

import secrets
from typing import Any

import httpx
import pytest

from chatkeep.config import Settings
from tests.support.app import serve
from tests.support.chats import new_chat, post

ALICE_KEY, BOB_KEY = secrets.token_hex(16), secrets.token_hex(16)
KEYS = f"alice={ALICE_KEY}, bob={BOB_KEY}"


def as_owner(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def snippet_text(hit: dict[str, Any]) -> str:
    return "".join(part["text"] for part in hit["snippet"])


async def test_search_answers_hits_with_their_chat_and_pages_by_cursor(store_url: str) -> None:
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        chat_id = await new_chat(client, title="Italy")
        for n in range(5):
            assert (await post(client, chat_id, f"Plan day {n} in <b>Rome</b> & around")).status_code == 201
        first = (await client.get("/search", params={"q": "ROME plan", "limit": 3})).json()
        assert first["has_more"] is True
        hits, page = list(first["data"]), first
        while page["next_cursor"] is not None:
            params = {"q": "ROME plan", "limit": 3, "after": page["next_cursor"]}
            page = (await client.get("/search", params=params)).json()
            hits += page["data"]
        assert page["has_more"] is False
        assert len({found["message_id"] for found in hits}) == len(hits)
        assert sorted(found["seq"] for found in hits if found["role"] == "user") == [1, 3, 5, 7, 9]
        hit = next(found for found in hits if found["role"] == "user")
        assert set(hit) == {"chat_id", "chat_title", "message_id", "seq", "role", "created_at", "snippet"}
        assert (hit["chat_id"], hit["chat_title"], hit["role"]) == (chat_id, "Italy", "user")
        assert {part["text"] for part in hit["snippet"] if part["match"]} == {"Plan", "Rome"}
        assert "<b>" in snippet_text(hit)  # the message's own text, as text: the page draws it so


async def test_search_is_owner_scoped() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS)) as client:
        chat = (await client.post("/chats", headers=as_owner(BOB_KEY))).json()["id"]
        body = {"content": "the vault code is 1234"}
        assert (await client.post(f"/chats/{chat}/messages", json=body, headers=as_owner(BOB_KEY))).status_code == 201
        mine = (await client.get("/search", params={"q": "vault"}, headers=as_owner(ALICE_KEY))).json()
        theirs = (await client.get("/search", params={"q": "vault"}, headers=as_owner(BOB_KEY))).json()
        assert mine["data"] == []
        assert {hit["chat_id"] for hit in theirs["data"]} == {chat}
        assert (await client.get("/search", params={"q": "vault"})).status_code == 401


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "at least one word"),
        ({"q": "!!! -- ** () \"\" ''"}, "at least one word"),
        ({"q": "x" * 201}, "q"),
        ({"q": " ".join(f"w{n}" for n in range(13))}, "at most 12 words"),
        ({"q": "y" * 65}, "at most 64 characters"),
        ({"q": "rome", "limit": 0}, "limit"),
        ({"q": "rome", "limit": 51}, "limit"),
        ({"q": "rome", "after": "not-a-cursor"}, "not one a search handed out"),
        ({"q": "rome", "after": "WzEsMl0"}, "not one a search handed out"),  # base64 of [1,2]
    ],
)
async def test_searches_that_cannot_run_are_422_problems(
    offline_client: httpx.AsyncClient, params: dict[str, Any], detail: str
) -> None:
    response = await offline_client.get("/search", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.text


async def test_a_cursor_of_another_search_is_a_422(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client)
    for _ in range(3):
        await post(offline_client, chat_id, "rome and paris")
    cursor = (await offline_client.get("/search", params={"q": "rome", "limit": 1})).json()["next_cursor"]
    response = await offline_client.get("/search", params={"q": "paris", "after": cursor})
    assert response.status_code == 422
    assert "another search" in response.json()["detail"]


@pytest.mark.parametrize(
    "query", ['"', "NEAR(", "a AND OR NOT b", "rome*", "col:rome", "!rome & (paris | <->)", "'; DROP TABLE chats; --"]
)
async def test_operator_looking_queries_are_searched_as_words(sql_store_url: str, query: str) -> None:
    async with serve(Settings(store=sql_store_url, llm_provider="offline")) as client:
        chat_id = await new_chat(client)
        await post(client, chat_id, "rome or paris, a and b, not c; drop table chats")
        response = await client.get("/search", params={"q": query})
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            assert response.json()["type"] == "urn:chatkeep:problem:invalid-search"
        assert (await client.get(f"/chats/{chat_id}")).status_code == 200


async def test_listing_chats_with_q_points_to_search(offline_client: httpx.AsyncClient) -> None:
    await new_chat(offline_client, title="Rome")
    response = await offline_client.get("/chats", params={"q": "Rome"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "/search?q=" in response.json()["detail"]
    assert (await offline_client.get("/chats")).status_code == 200


async def test_search_is_in_the_openapi_document(offline_client: httpx.AsyncClient) -> None:
    spec = (await offline_client.get("/openapi.json")).json()
    operation = spec["paths"]["/search"]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} == {"q", "limit", "after"}
    assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert "SearchResultsOut" in str(operation["responses"]["200"])
