"""The API's turn, paging and summary paths, served over each store in `tests.support.stores.STORES`."""

import asyncio

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.chats import message_page, messages_of, new_chat, post, post_after
from tests.support.fake_openai import FakeOpenAI


async def test_concurrent_turns_are_paired_fifo_and_see_every_earlier_turn(
    store_url: str, fake_llm: FakeOpenAI
) -> None:
    fake_llm.latency = 0.25
    async with serve(llm_settings(fake_llm, store=store_url)) as client:
        chat_id = await new_chat(client, system_prompt="S")
        # 100 ms apart, each arrives while the one before waits or runs (a client can only order
        # them by time; 20 ms proved too little on a loaded machine)
        responses = await asyncio.gather(*(post_after(client, chat_id, f"q{n}", n * 0.1) for n in range(5)))
        assert [r.status_code for r in responses] == [201] * 5
        messages = await messages_of(client, chat_id)
    assert [m["seq"] for m in messages] == list(range(1, 11))
    assert [(m["role"], m["content"]) for m in messages[::2]] == [("user", f"q{n}") for n in range(5)]
    assert [m["content"] for m in messages[1::2]] == [f"echo: q{n}" for n in range(5)]
    for n, prompt in enumerate(fake_llm.prompts):
        assert prompt[1:] == [{"role": m["role"], "content": m["content"]} for m in messages[: 2 * n + 1]]


async def test_chats_and_messages_page_by_cursor(store_url: str) -> None:
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        chats = [await new_chat(client, title=f"chat {n}") for n in range(5)]
        first = (await client.get("/chats", params={"limit": 2})).json()
        assert ([c["id"] for c in first["data"]], first["has_more"]) == (chats[:2:-1][:2], True)
        second = (await client.get("/chats", params={"limit": 2, "after": first["last_id"]})).json()
        assert ([c["id"] for c in second["data"]], second["has_more"]) == ([chats[2], chats[1]], True)
        for n in range(3):
            assert (await post(client, chats[0], f"q{n}")).status_code == 201
        everything = await messages_of(client, chats[0])
        page = await message_page(client, chats[0], limit=2, after=everything[1]["id"])
        assert ([m["seq"] for m in page["data"]], page["has_more"]) == ([3, 4], True)
        page = await message_page(client, chats[0], limit=2, before=everything[2]["id"], order="desc")
        assert ([m["seq"] for m in page["data"]], page["has_more"]) == ([5, 4], True)
        bad = await client.get(f"/chats/{chats[1]}/messages", params={"after": everything[0]["id"]})
        assert bad.status_code == 422
        assert (await client.get(f"/chats/{chats[0]}")).json()["message_count"] == 6
        assert (await client.delete(f"/chats/{chats[0]}")).status_code == 204
        assert (await client.get(f"/chats/{chats[0]}/messages")).status_code == 404


async def test_the_summary_counts_exactly(store_url: str) -> None:
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        chat_id = await new_chat(client)
        for n in range(3):
            assert (await post(client, chat_id, f"question {n} about stores")).status_code == 201
        messages = await messages_of(client, chat_id)
        summary = (await client.get(f"/chats/{chat_id}/summary")).json()
    assert (summary["message_count"], summary["user_message_count"], summary["assistant_message_count"]) == (6, 3, 3)
    assert (summary["first_message_at"], summary["last_message_at"]) == (
        messages[0]["created_at"],
        messages[-1]["created_at"],
    )
    assert (summary["up_to_seq"], summary["stale"]) == (6, False)
    assert summary["summary"]
