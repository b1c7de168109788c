"""API keys decide the owner; owners never see each other's chats; message posts are rate limited.

The settings' own checks are in tests/unit/test_settings.py, `chatkeep serve` refusing to listen
beyond loopback without keys and the chat client's key in tests/processes/test_cli.py."""

import asyncio
import os
import secrets

import pytest
import redis.asyncio

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import as_owner
from tests.support.fake_openai import FakeOpenAI, Scripted

ALICE_KEY, BOB_KEY = "alice-key-0123456789", "bob-key-0123456789ab"
KEYS = f"alice={ALICE_KEY}, bob={BOB_KEY}"


async def test_requests_without_a_valid_key_are_401_problems() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS)) as client:
        for headers in ({}, as_owner("not-a-key-at-all-xx"), {"Authorization": f"Basic {ALICE_KEY}"}):
            response = await client.get("/chats", headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert ALICE_KEY not in response.text
        assert (await client.post("/chats")).status_code == 401
        assert (await client.get("/chats", headers=as_owner(ALICE_KEY))).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert "401" in spec["paths"]["/chats"]["get"]["responses"]


async def test_owners_never_see_each_others_chats() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS)) as client:
        alice, bob = as_owner(ALICE_KEY), as_owner(BOB_KEY)
        chat_id = (await client.post("/chats", json={"title": "Alice's"}, headers=alice)).json()["id"]
        turn = (await client.post(f"/chats/{chat_id}/messages", json={"content": "secret"}, headers=alice)).json()
        user_message_id = turn["user_message"]["id"]
        for method, path in [
            ("GET", f"/chats/{chat_id}"),
            ("PATCH", f"/chats/{chat_id}"),
            ("DELETE", f"/chats/{chat_id}"),
            ("GET", f"/chats/{chat_id}/messages"),
            ("POST", f"/chats/{chat_id}/messages"),
            ("GET", f"/chats/{chat_id}/summary"),
            ("GET", f"/chats/{chat_id}/messages/{user_message_id}/events"),
        ]:
            body = {"content": "mine now"} if method == "POST" else {} if method == "PATCH" else None
            response = await client.request(method, path, json=body, headers=bob)
            assert response.status_code == 404, (method, path)
        assert (await client.get("/chats", headers=bob)).json()["data"] == []
        assert (await client.get("/chats", params={"after": chat_id}, headers=bob)).status_code == 422
        mine = (await client.get(f"/chats/{chat_id}", headers=alice)).json()
        assert (mine["title"], mine["message_count"]) == ("Alice's", 2)


async def test_message_posts_past_the_rate_limit_are_429_and_store_nothing() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS, rate_limit="3/minute")) as client:
        alice, bob = as_owner(ALICE_KEY), as_owner(BOB_KEY)
        chat_id = (await client.post("/chats", headers=alice)).json()["id"]
        statuses = [
            (await client.post(f"/chats/{chat_id}/messages", json={"content": f"m{n}"}, headers=alice)).status_code
            for n in range(4)
        ]
        assert statuses == [201, 201, 201, 429]
        refused = await client.post(f"/chats/{chat_id}/messages", json={"content": "again"}, headers=alice)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["type"].endswith("rate-limited")
        assert (await client.get(f"/chats/{chat_id}", headers=alice)).json()["message_count"] == 6
        streamed = await client.post(f"/chats/{chat_id}/messages", json={"content": "s", "stream": True}, headers=alice)
        assert streamed.status_code == 429
        bobs = (await client.post("/chats", headers=bob)).json()["id"]
        assert (await client.post(f"/chats/{bobs}/messages", json={"content": "hi"}, headers=bob)).status_code == 201
        assert (await client.get(f"/chats/{chat_id}/messages", headers=alice)).status_code == 200


async def test_one_server_admits_exactly_the_limit_however_its_turns_overlap(store_url: str) -> None:
    settings = Settings(llm_provider="offline", api_keys=KEYS, store=store_url, rate_limit="50/minute")
    async with serve(settings) as client:
        alice = as_owner(ALICE_KEY)
        chats = [(await client.post("/chats", headers=alice)).json()["id"] for _ in range(10)]
        turns = [
            client.post(f"/chats/{chats[n % 10]}/messages", json={"content": f"m{n}"}, headers=alice) for n in range(70)
        ]
        responses = await asyncio.gather(*turns)
        assert sorted(response.status_code for response in responses) == [201] * 50 + [429] * 20
        for refused in (response for response in responses if response.status_code == 429):
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        later = await client.post(f"/chats/{chats[0]}/messages", json={"content": "later"}, headers=alice)
        assert later.status_code == 429
        assert 55 <= int(later.headers["retry-after"]) <= 60, "the first of the 50 frees a minute after it was taken"


async def test_with_redis_the_rate_limit_is_shared_by_every_server() -> None:
    redis_url = await redis_server_url()
    owner, key = f"owner-{secrets.token_hex(4)}", secrets.token_hex(16)  # a fresh count in a shared Redis
    settings = Settings(llm_provider="offline", api_keys=f"{owner}={key}", rate_limit="3/minute", redis_url=redis_url)
    headers = as_owner(key)
    async with serve(settings) as first, serve(settings) as second:
        statuses = []
        for n, client in enumerate([first, second] * 3):
            chat_id = (await client.post("/chats", headers=headers)).json()["id"]
            answer = await client.post(f"/chats/{chat_id}/messages", json={"content": f"m{n}"}, headers=headers)
            statuses.append(answer.status_code)
    assert statuses == [201, 201, 201, 429, 429, 429]


async def test_an_unreachable_redis_is_a_503_not_a_500() -> None:
    settings = Settings(llm_provider="offline", rate_limit="3/minute", redis_url="redis://127.0.0.1:1/0")
    async with serve(settings) as client:
        chat_id = (await client.post("/chats")).json()["id"]
        refused = await client.post(f"/chats/{chat_id}/messages", json={"content": "hi"})
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("store-unavailable")
        assert "retry-after" in refused.headers
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 0


async def redis_server_url() -> str:
    """The test Redis (CHATKEEP_TEST_REDIS_URL, else the local one); skips without one, except under CI=true."""
    url = os.environ.get("CHATKEEP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
    except redis.ConnectionError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required when CI=true: nothing answers at {url} ({error})")
        pytest.skip(f"Redis rate-limit test skipped: nothing answers at {url} ({error})")
    finally:
        await client.aclose()
    return url


async def test_an_owner_keeps_at_most_max_chats(store_url: str) -> None:
    settings = Settings(llm_provider="offline", api_keys=KEYS, store=store_url, max_chats=2)
    async with serve(settings) as client:
        alice, bob = as_owner(ALICE_KEY), as_owner(BOB_KEY)
        first = await client.post("/chats", headers=alice | {"Idempotency-Key": "first"})
        assert first.status_code == 201
        assert (await client.post("/v1/conversations", headers=alice)).status_code == 200
        refused = await client.post("/chats", json={"title": "third"}, headers=alice)
        assert (refused.status_code, refused.headers["content-type"]) == (429, "application/problem+json")
        assert refused.json()["type"].endswith("chat-quota")
        conversation = await client.post("/v1/conversations", headers=alice)
        assert conversation.status_code == 429
        assert conversation.json()["error"]["type"] == "rate_limit_error"
        assert conversation.json()["error"]["code"] == "chat_quota"
        replayed = await client.post("/chats", headers=alice | {"Idempotency-Key": "first"})
        assert (replayed.status_code, replayed.json()["id"]) == (201, first.json()["id"])  # a retry is no new chat
        assert len((await client.get("/chats", headers=alice)).json()["data"]) == 2
        assert (await client.post("/chats", headers=bob)).status_code == 201  # per owner
        assert (await client.delete(f"/chats/{first.json()['id']}", headers=alice)).status_code == 204
        assert (await client.post("/chats", headers=alice)).status_code == 201


async def test_a_full_chat_refuses_what_would_overfill_it_and_stores_nothing(store_url: str) -> None:
    settings = Settings(llm_provider="offline", store=store_url, max_chat_messages=5, rate_limit="4/minute")
    async with serve(settings) as client:
        chat_id = (await client.post("/chats")).json()["id"]
        for n in range(2):
            assert (await client.post(f"/chats/{chat_id}/messages", json={"content": f"q{n}"})).status_code == 201
        refused = await client.post(f"/chats/{chat_id}/messages", json={"content": "a question and its reply: 6"})
        assert refused.status_code == 429
        assert refused.json()["type"].endswith("chat-full")
        assert "retry-after" not in refused.headers  # waiting does not help
        streamed = await client.post(f"/chats/{chat_id}/messages", json={"content": "s", "stream": True})
        assert streamed.status_code == 429
        one, two = ({"type": "message", "role": "user", "content": text} for text in ("one", "two"))
        both = await client.post(f"/v1/conversations/{chat_id}/items", json={"items": [one, two]})
        assert (both.status_code, both.json()["error"]["code"]) == (429, "chat_full")
        assert (await client.post(f"/v1/conversations/{chat_id}/items", json={"items": [one]})).status_code == 200
        response = await client.post("/v1/responses", json={"model": "m", "input": "x", "conversation": chat_id})
        assert (response.status_code, response.json()["error"]["type"]) == (429, "rate_limit_error")
        assert response.json()["error"]["code"] == "chat_full"
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 5
        too_many = await client.post("/v1/conversations", json={"items": [one] * 6})
        assert (too_many.status_code, too_many.json()["error"]["code"]) == (429, "chat_full")
        assert (await client.get("/chats")).json()["data"] == [(await client.get(f"/chats/{chat_id}")).json()]
        other = (await client.post("/chats")).json()["id"]  # the refusals took none of the 4 rate slots: 3 are taken
        assert (await client.post(f"/chats/{other}/messages", json={"content": "fourth"})).status_code == 201
        assert (await client.post(f"/chats/{other}/messages", json={"content": "fifth"})).status_code == 429


async def test_the_retry_of_a_lost_reply_needs_room_for_the_reply_alone(store_url: str, fake_llm: FakeOpenAI) -> None:
    async with serve(llm_settings(fake_llm, store=store_url, max_chat_messages=4)) as client:
        chat_id = (await client.post("/chats")).json()["id"]
        assert (await client.post(f"/chats/{chat_id}/messages", json={"content": "q0"})).status_code == 201
        fake_llm.queue(*[Scripted(status=500)] * 3)
        failed = await client.post(f"/chats/{chat_id}/messages", json={"content": "q1"})
        assert failed.status_code == 502
        question = failed.json()["user_message_id"]
        retried = await client.post(f"/chats/{chat_id}/messages/{question}/retry")
        assert retried.status_code == 201, retried.text
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 4
        refused = await client.post(f"/chats/{chat_id}/messages", json={"content": "q2"})
        assert (refused.status_code, refused.json()["type"].rpartition(":")[2]) == (429, "chat-full")
