"""What a careless or hostile client can send: always a clear 4xx problem, never a 5xx, nothing stored."""

import httpx
import pytest

from chatkeep.config import Settings
from chatkeep.store import MemoryStore
from chatkeep.turns.events import event_number
from tests.support.app import serve
from tests.support.chats import new_chat
from tests.support.sse import events_of

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's recursion
        b'{"content": ' + b"9" * 5000 + b"}",  # an integer too long to convert
        b'{"content": 1e999999}',  # a float that overflows
        b'{"content": "\xff\xfe not utf-8"}',
        b'{"content": "unterminated',
        b"",
        b"null",
    ],
    ids=["deep-nesting", "huge-integer", "huge-float", "invalid-utf8", "truncated", "empty", "null"],
)
async def test_unparseable_or_wrong_bodies_are_422(offline_client: httpx.AsyncClient, raw: bytes) -> None:
    chat_id = await new_chat(offline_client)
    response = await offline_client.post(f"/chats/{chat_id}/messages", content=raw, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 422
    assert (await offline_client.get(f"/chats/{chat_id}")).json()["message_count"] == 0


async def test_a_deeply_nested_chat_body_is_422_and_stores_no_chat(offline_client: httpx.AsyncClient) -> None:
    raw = b'{"metadata": {"k": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    response = await offline_client.post("/chats", content=raw, headers=JSON)
    assert response.status_code == 422
    assert (await offline_client.get("/chats")).json()["data"] == []


async def test_ten_thousand_metadata_keys_are_refused(offline_client: httpx.AsyncClient) -> None:
    metadata = {f"key{n}": "v" for n in range(10_000)}
    response = await offline_client.post("/chats", json={"metadata": metadata})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "metadata"]
    assert (await offline_client.get("/chats")).json()["data"] == []


@pytest.mark.parametrize("field", ["title", "metadata-key"])
async def test_control_characters_are_refused_in_single_line_fields(
    offline_client: httpx.AsyncClient, field: str
) -> None:
    body = {"title": "bell\x07"} if field == "title" else {"metadata": {"esc\x1b": "v"}}
    response = await offline_client.post("/chats", json=body)
    assert response.status_code == 422
    assert (await offline_client.get("/chats")).json()["data"] == []


@pytest.mark.parametrize(
    "title",
    ["\u202eexe.txt", "two\u2028lines", "two\u2029paragraphs", "c1\x85next-line", "\u2066isolated\u2069", "rlm\u200f"],
    ids=["rtl-override", "line-separator", "paragraph-separator", "c1-control", "isolate", "rlm"],
)
async def test_titles_that_would_spoof_the_chat_list_are_refused(offline_client: httpx.AsyncClient, title: str) -> None:
    created = await offline_client.post("/chats", json={"title": title})
    assert created.status_code == 422, created.text
    chat_id = await new_chat(offline_client, title="plain")
    renamed = await offline_client.patch(f"/chats/{chat_id}", json={"title": title})
    assert renamed.status_code == 422, renamed.text
    assert [chat["title"] for chat in (await offline_client.get("/chats")).json()["data"]] == ["plain"]


async def test_titles_in_any_script_are_kept(offline_client: httpx.AsyncClient) -> None:
    titles = ["שלום עולם", "مرحبا", "日本語のタイトル", "emoji 👩‍💻 with a joiner"]
    for title in titles:
        assert (await offline_client.post("/chats", json={"title": title})).status_code == 201
    assert sorted(chat["title"] for chat in (await offline_client.get("/chats")).json()["data"]) == sorted(titles)


async def test_control_characters_in_content_round_trip(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client)
    content = "colours \x1b[31mred\x1b[0m, a bell \x07, tabs\tand\r\nnew lines"
    response = await offline_client.post(f"/chats/{chat_id}/messages", json={"content": content})
    assert response.status_code == 201
    stored = (await offline_client.get(f"/chats/{chat_id}/messages")).json()["data"][0]
    assert stored["content"] == content


@pytest.mark.parametrize(
    "body", [{"content": "nul\x00"}, {"content": "ok"} | {"stream": None}], ids=["nul", "null-stream"]
)
async def test_nul_and_null_fields_are_refused(offline_client: httpx.AsyncClient, body: dict[str, object]) -> None:
    chat_id = await new_chat(offline_client)
    response = await offline_client.post(f"/chats/{chat_id}/messages", json=body)
    assert response.status_code == 422
    assert (await offline_client.get(f"/chats/{chat_id}")).json()["message_count"] == 0


@pytest.mark.parametrize(
    "query",
    ["limit=99999999999999999999999", "limit=-1", "limit=1.5", "order=DESC", f"after={'x' * 101}", "after=%00"],
)
async def test_hostile_queries_are_422(offline_client: httpx.AsyncClient, query: str) -> None:
    response = await offline_client.get(f"/chats?{query}")
    assert response.status_code == 422
    assert response.json()["status"] == 422


async def test_non_json_content_type_is_415(offline_client: httpx.AsyncClient) -> None:
    chat_id = await new_chat(offline_client)
    response = await offline_client.post(
        f"/chats/{chat_id}/messages", content=b'{"content": "hi"}', headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415  # tests/api/test_cross_site.py has the rest of it


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/chats", "GET, POST"),
        ("DELETE", "/chats/chat_x/messages", "GET, POST"),
        ("POST", "/chats/chat_x/summary", "GET"),
        ("PATCH", "/healthz", "GET"),
    ],
)
async def test_wrong_methods_are_405_with_allow(
    offline_client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await offline_client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/chat", "/chats/a/b/c/d", "/%00", "/chats/x/messages/y/z"])
async def test_unknown_routes_are_404_problems(offline_client: httpx.AsyncClient, path: str) -> None:
    response = await offline_client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "request_id": response.headers["x-request-id"],
    }


async def test_oversized_and_odd_path_ids_are_404(offline_client: httpx.AsyncClient) -> None:
    for chat_id in ["x" * 5000, "%20", "chat_%F0%9F%92%A9", "chat_x%00"]:
        response = await offline_client.get(f"/chats/{chat_id}")
        assert response.status_code in (404, 422), (chat_id, response.status_code)
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_fault_inside_a_turn_is_a_500_problem_that_reveals_nothing(
    offline_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No client input can cause this; a bug or a broken store can. The turn is served outside
    # FastAPI's router (fast_turn_route.RouteShortcut), so this checks it still ends in the same 500.
    chat_id = await new_chat(offline_client)

    async def broken_append(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(MemoryStore, "append_message", broken_append)
    response = await offline_client.post(f"/chats/{chat_id}/messages", json={"content": "hi"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "request_id": response.headers["x-request-id"],
    }
    assert "secret internal detail" in caplog.text


@pytest.mark.parametrize("last_event_id", ["²", "¹", "³", "٣", "-1", "9" * 30, "1.5"])
async def test_any_last_event_id_resumes_a_turn(store_url: str, last_event_id: str) -> None:
    """Superscript and other non-ASCII digits pass `str.isdigit()` but not `int()`: they resume from the start."""
    async with serve(Settings(llm_provider="offline", store=store_url)) as client:
        chat_id = await new_chat(client)
        body = {"content": "hello", "stream": True}
        async with client.stream("POST", f"/chats/{chat_id}/messages", json=body) as r:
            first = await events_of(r.aiter_lines())
        url = f"/chats/{chat_id}/messages/{first[0]['data']['id']}/events"
        raw = last_event_id.encode("latin-1" if max(map(ord, last_event_id)) < 256 else "utf-8")  # as sent on the wire
        async with client.stream("GET", url, headers={b"last-event-id": raw}) as r:
            assert r.status_code == 200
            resumed = await events_of(r.aiter_lines())
        assert resumed[-1]["event"] == "assistant_message"
        assert resumed[-1]["data"] == first[-1]["data"]


def test_only_ascii_digits_number_an_event() -> None:
    assert [event_number(v) for v in ("0", "12", "²", "٣", "-1", "end", None, "")] == [0, 12, *[None] * 6]
