"""A failing upstream is not hammered (circuit breaker); a full server says so at once (503)."""

import asyncio
import time

import httpx

from tests.support.app import llm_settings, serve
from tests.support.chats import new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted


async def test_a_failing_upstream_gets_503s_fast_until_a_probe_succeeds(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, llm_max_retries=0, llm_breaker_failures=3, llm_breaker_cooldown=0.5)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(*[Scripted(status=503)] * 3)
        assert [(await post(client, chat_id, "q")).status_code for _ in range(3)] == [502] * 3
        calls = len(fake_llm.requests)
        started = time.monotonic()
        refused = await post(client, chat_id, "while open")
        assert time.monotonic() - started < 0.3
        assert refused.status_code == 503
        assert refused.json()["type"].endswith("llm-circuit-open")
        assert refused.json()["user_message_id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 1
        assert len(fake_llm.requests) == calls  # the upstream was left alone
        await asyncio.sleep(0.6)
        assert (await post(client, chat_id, "probe")).status_code == 201
        assert (await post(client, chat_id, "closed again")).status_code == 201


async def test_refused_requests_do_not_open_the_breaker(fake_llm: FakeOpenAI) -> None:
    settings = llm_settings(fake_llm, llm_max_retries=0, llm_breaker_failures=2)
    async with serve(settings) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(*[Scripted(status=400)] * 3)
        assert [(await post(client, chat_id, "q")).status_code for _ in range(3)] == [502] * 3
        assert (await post(client, chat_id, "fine")).status_code == 201


async def test_turns_beyond_the_in_flight_bound_are_a_503_at_once(fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.5
    async with serve(llm_settings(fake_llm, max_turns_in_flight=2)) as client:
        chats = [await new_chat(client) for _ in range(3)]
        running = [asyncio.create_task(post(client, chat_id, "hi")) for chat_id in chats[:2]]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        refused = await post(client, chats[2], "one too many")
        assert time.monotonic() - started < 0.3
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"].endswith("overloaded")
        assert [r.status_code for r in await asyncio.gather(*running)] == [201, 201]
        assert (await client.get(f"/chats/{chats[2]}")).json()["message_count"] == 0
        assert (await post(client, chats[2], "room now")).status_code == 201


async def test_streamed_turns_count_against_the_bound_too(fake_llm: FakeOpenAI) -> None:
    fake_llm.latency = 0.5
    async with serve(llm_settings(fake_llm, max_turns_in_flight=1)) as client:
        first, second = await new_chat(client), await new_chat(client)
        running = asyncio.create_task(client.post(f"/chats/{first}/messages", json={"content": "a", "stream": True}))
        await asyncio.sleep(0.1)
        assert (await client.post(f"/chats/{second}/messages", json={"content": "b"})).status_code == 503
        assert (await running).status_code == 200


async def test_a_burst_under_the_in_flight_bound_is_served_whole(client: httpx.AsyncClient) -> None:
    chats = [await new_chat(client) for _ in range(50)]
    statuses = [r.status_code for r in await asyncio.gather(*(post(client, c, "hi") for c in chats))]
    assert statuses == [201] * 50


async def test_one_owner_holds_only_its_share_of_the_turns_in_flight(fake_llm: FakeOpenAI) -> None:
    """Alice's long turns take her share (2 of 4) and no more: Bob still gets in."""
    alice, bob = "alice-key-0123456789", "bob-key-0123456789ab"
    fake_llm.latency = 0.5
    settings = llm_settings(fake_llm, api_keys=f"alice={alice},bob={bob}", max_turns_in_flight=4, owner_share=0.5)
    async with serve(settings) as client:
        as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
        alices = [(await client.post("/chats", headers=as_alice)).json()["id"] for _ in range(3)]
        bobs = (await client.post("/chats", headers=as_bob)).json()["id"]
        body = {"content": "a long one"}
        running = [
            asyncio.create_task(client.post(f"/chats/{c}/messages", json=body, headers=as_alice)) for c in alices[:2]
        ]
        await asyncio.sleep(0.1)
        refused = await client.post(f"/chats/{alices[2]}/messages", json=body, headers=as_alice)
        assert refused.status_code == 429
        assert refused.json()["type"].endswith("owner-busy")
        assert refused.headers["retry-after"] == "1"
        served = await client.post(f"/chats/{bobs}/messages", json=body, headers=as_bob)
        assert served.status_code == 201, served.text
        assert [r.status_code for r in await asyncio.gather(*running)] == [201, 201]
        assert (await client.get(f"/chats/{alices[2]}", headers=as_alice)).json()["message_count"] == 0
        again = await client.post(f"/chats/{alices[2]}/messages", json=body, headers=as_alice)
        assert again.status_code == 201, again.text
