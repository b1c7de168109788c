"""The chat routes: create, list with cursors, get, update, delete, and their problems."""

from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from tests.support.chats import new_chat


async def test_create_chat_answers_201_with_location_and_defaults(offline_client: httpx.AsyncClient) -> None:
    response = await offline_client.post("/chats")
    assert response.status_code == 201
    chat = response.json()
    assert response.headers["location"] == f"/chats/{chat['id']}"
    assert chat["title"] is None
    assert chat["metadata"] == {}
    assert chat["system_prompt"] is None
    assert chat["message_count"] == 0
    created = datetime.fromisoformat(chat["created_at"])
    assert created.tzinfo is not None
    assert chat["updated_at"] == chat["created_at"]


async def test_create_chat_keeps_title_metadata_and_system_prompt(offline_client: httpx.AsyncClient) -> None:
    body = {"title": "Trip", "metadata": {"team": "blue"}, "system_prompt": "Be brief."}
    chat = (await offline_client.post("/chats", json=body)).json()
    fetched = (await offline_client.get(f"/chats/{chat['id']}")).json()
    assert fetched == chat
    assert {k: fetched[k] for k in body} == body


async def test_chat_ids_are_random_and_distinct(offline_client: httpx.AsyncClient) -> None:
    ids = {await new_chat(offline_client) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(chat_id) >= 20 for chat_id in ids)


async def test_unknown_chat_is_a_404_problem(offline_client: httpx.AsyncClient) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await offline_client.request(method, "/chats/chat_missing", json={} if method == "PATCH" else None)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 404
        assert problem["type"].endswith("chat-not-found")
        assert problem["title"]
        assert "chat_missing" in problem["detail"]


async def test_update_changes_only_the_fields_sent(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client, title="Old", metadata={"a": "1"}, system_prompt="Be brief.")
    before = (await offline_client.get(f"/chats/{chat_id}")).json()
    response = await offline_client.patch(f"/chats/{chat_id}", json={"title": "New"})
    assert response.status_code == 200
    after = response.json()
    assert after["title"] == "New"
    assert after["metadata"] == {"a": "1"}
    assert after["system_prompt"] == "Be brief."
    assert after["updated_at"] > before["updated_at"]
    cleared = (await offline_client.patch(f"/chats/{chat_id}", json={"title": None, "metadata": {}})).json()
    assert cleared["title"] is None
    assert cleared["metadata"] == {}
    assert (await offline_client.get(f"/chats/{chat_id}")).json() == cleared


async def test_delete_answers_204_and_later_reads_404(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client)
    await offline_client.post(f"/chats/{chat_id}/messages", json={"content": "hi"})
    response = await offline_client.delete(f"/chats/{chat_id}")
    assert response.status_code == 204
    assert response.content == b""
    assert (await offline_client.get(f"/chats/{chat_id}")).status_code == 404
    assert (await offline_client.get(f"/chats/{chat_id}/messages")).status_code == 404
    assert (await offline_client.delete(f"/chats/{chat_id}")).status_code == 404
    listed = (await offline_client.get("/chats")).json()
    assert chat_id not in [chat["id"] for chat in listed["data"]]


async def _ids(client: httpx.AsyncClient, **params: str | int) -> tuple[list[str], bool]:
    response = await client.get("/chats", params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    ids = [chat["id"] for chat in page["data"]]
    assert page["first_id"] == (ids[0] if ids else None)
    assert page["last_id"] == (ids[-1] if ids else None)
    return ids, page["has_more"]


async def test_chats_page_newest_first_by_cursor(offline_client: httpx.AsyncClient) -> None:
    created = [await new_chat(offline_client) for _ in range(7)]
    newest_first = created[::-1]
    assert await _ids(offline_client) == (newest_first, False)
    first, more = await _ids(offline_client, limit=3)
    assert (first, more) == (newest_first[:3], True)
    second, more = await _ids(offline_client, limit=3, after=first[-1])
    assert (second, more) == (newest_first[3:6], True)
    third, more = await _ids(offline_client, limit=3, after=second[-1])
    assert (third, more) == (newest_first[6:], False)
    back, more = await _ids(offline_client, limit=2, before=third[0])
    assert (back, more) == (newest_first[4:6], True)


async def test_chats_page_oldest_first_with_order_asc(offline_client: httpx.AsyncClient) -> None:
    created = [await new_chat(offline_client) for _ in range(5)]
    assert await _ids(offline_client, order="asc", limit=2) == (created[:2], True)
    assert await _ids(offline_client, order="asc", after=created[1]) == (created[2:], False)
    assert await _ids(offline_client, order="asc", before=created[3]) == (created[:3], False)
    assert await _ids(offline_client, order="asc", after=created[0], before=created[4]) == (created[1:4], False)


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=x", "order=sideways", "after=chat_unknown", "before=chat_unknown", "after="],
)
async def test_bad_list_query_is_a_422_problem(offline_client: httpx.AsyncClient, query: str) -> None:
    response = await offline_client.get(f"/chats?{query}")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 422


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x" * 201},
        {"title": ""},
        {"title": "line\nbreak"},
        {"title": 5},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
        {"metadata": {"k": 1}},
        {"metadata": ["not", "an", "object"]},
        {"system_prompt": "nul\u0000byte"},
        {"unknown_field": True},
        [1, 2],
    ],
)
async def test_invalid_chat_body_is_a_422_problem_and_stores_nothing(
    offline_client: httpx.AsyncClient, body: object
) -> None:
    response = await offline_client.post("/chats", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["status"] == 422
    assert problem["errors"]
    assert {"loc", "msg", "type"} <= problem["errors"][0].keys()
    assert (await offline_client.get("/chats")).json()["data"] == []


async def test_invalid_update_is_a_422_and_changes_nothing(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client, title="Kept")
    response = await offline_client.patch(f"/chats/{chat_id}", json={"title": "x" * 201})
    assert response.status_code == 422
    assert (await offline_client.get(f"/chats/{chat_id}")).json()["title"] == "Kept"


async def test_metadata_at_the_limits_is_accepted(offline_client: httpx.AsyncClient) -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}
    response = await offline_client.post("/chats", json={"title": "t" * 200, "metadata": metadata})
    assert response.status_code == 201
    assert response.json()["metadata"] == metadata


async def test_malformed_json_is_a_422_problem(offline_client: httpx.AsyncClient) -> None:
    response = await offline_client.post("/chats", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"


# A message post takes attachments, and a body as large as they need (tests/api/test_attachments.py).
@pytest.mark.parametrize("path", ["/chats", "/chats/{chat_id}/messages/msg_x/retry"])
async def test_body_over_one_mebibyte_is_a_413_problem(offline_client: httpx.AsyncClient, path: str) -> None:
    chat_id = (await offline_client.post("/chats", json={})).json()["id"]
    url = path.format(chat_id=chat_id)
    big = b'{"content": "' + b"x" * (1024 * 1024) + b'"}'
    response = await offline_client.post(url, content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    chunked = await offline_client.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.json()["status"] == 413
    assert [chat["id"] for chat in (await offline_client.get("/chats")).json()["data"]] == [chat_id]
    assert (await offline_client.get(f"/chats/{chat_id}/messages")).json()["data"] == []


async def test_unknown_route_is_a_404_problem(offline_client: httpx.AsyncClient) -> None:
    response = await offline_client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "request_id": response.headers["x-request-id"],
    }


async def test_wrong_method_is_a_405_naming_every_allowed_method(offline_client: httpx.AsyncClient) -> None:
    response = await offline_client.put("/chats/chat_x")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    assert response.json()["status"] == 405


async def test_health_and_docs_are_served(offline_client: httpx.AsyncClient) -> None:
    assert (await offline_client.get("/healthz")).json() == {"status": "ok"}
    assert (await offline_client.get("/docs")).status_code == 200
    spec = (await offline_client.get("/openapi.json")).json()
    assert {"/chats", "/chats/{chat_id}", "/chats/{chat_id}/messages", "/chats/{chat_id}/summary"} <= set(spec["paths"])
    assert "404" in spec["paths"]["/chats/{chat_id}/messages"]["post"]["responses"]
