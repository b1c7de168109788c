"""Regenerate, edit and branch switches over the native API, on every store: what is listed, what the
model is sent, which sibling is current, and that a branch change waits its turn like any turn."""

import asyncio
from typing import Any

import httpx

from tests.support.app import llm_settings, serve
from tests.support.chats import chat_with_turns, keyed, messages_of, new_chat, post
from tests.support.fake_openai import FakeOpenAI, Scripted, roles_and_contents
from tests.support.sse import events_of


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [message["content"] for message in messages]


async def regenerate(client: httpx.AsyncClient, chat_id: str, message_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/chats/{chat_id}/messages/{message_id}/regenerate", json=body)


async def edit(client: httpx.AsyncClient, chat_id: str, message_id: str, content: str) -> httpx.Response:
    return await client.post(f"/chats/{chat_id}/messages/{message_id}/edit", json={"content": content})


async def switch(client: httpx.AsyncClient, chat_id: str, message_id: str) -> httpx.Response:
    return await client.put(f"/chats/{chat_id}/branch", json={"message_id": message_id})


async def test_a_regenerated_reply_starts_a_branch_the_old_one_stays_reachable(
    fake_llm: FakeOpenAI, store_url: str
) -> None:
    async with serve(llm_settings(fake_llm, store=store_url, system_prompt="")) as client:
        chat_id = await chat_with_turns(client, "one", "two")
        old = await messages_of(client, chat_id)
        fake_llm.queue(Scripted(content="another answer to one"))

        answered = await regenerate(client, chat_id, old[1]["id"])

        assert answered.status_code == 201, answered.text
        turn = answered.json()
        assert turn["user_message"]["id"] == old[0]["id"]
        reply = turn["assistant_message"]
        assert (reply["seq"], reply["content"]) == (2, "another answer to one")
        assert reply["siblings"] == {"ids": [old[1]["id"], reply["id"]], "index": 1}
        assert roles_and_contents(fake_llm.prompts[-1]) == [("user", "one")]  # the old branch is not sent
        listed = await messages_of(client, chat_id)
        assert contents(listed) == ["one", "another answer to one"]
        assert "siblings" not in listed[0]
        assert listed[1]["siblings"] == reply["siblings"]
        assert (await client.get(f"/chats/{chat_id}")).json()["message_count"] == 2

        switched = await switch(client, chat_id, old[1]["id"])
        assert switched.status_code == 200, switched.text
        assert switched.json()["message_count"] == 4
        back = await messages_of(client, chat_id)
        assert [m["id"] for m in back] == [m["id"] for m in old]
        assert back[1]["siblings"] == {"ids": [old[1]["id"], reply["id"]], "index": 0}
        await post(client, chat_id, "three")
        assert roles_and_contents(fake_llm.prompts[-1]) == [
            ("user", "one"),
            ("assistant", "echo: one"),
            ("user", "two"),
            ("assistant", "echo: two"),
            ("user", "three"),
        ]


async def test_an_edited_question_branches_and_switching_back_restores_the_whole_old_line(
    fake_llm: FakeOpenAI, store_url: str
) -> None:
    async with serve(llm_settings(fake_llm, store=store_url, system_prompt="")) as client:
        chat_id = await chat_with_turns(client, "one", "two", "three")
        old = await messages_of(client, chat_id)

        edited = await edit(client, chat_id, old[2]["id"], "two, said better")

        assert edited.status_code == 201, edited.text
        question = edited.json()["user_message"]
        assert (question["seq"], question["content"]) == (3, "two, said better")
        assert question["siblings"] == {"ids": [old[2]["id"], question["id"]], "index": 1}
        assert roles_and_contents(fake_llm.prompts[-1]) == [
            ("user", "one"),
            ("assistant", "echo: one"),
            ("user", "two, said better"),
        ]
        assert contents(await messages_of(client, chat_id)) == [
            "one",
            "echo: one",
            "two, said better",
            "echo: two, said better",
        ]
        summary = (await client.get(f"/chats/{chat_id}/summary")).json()
        assert (summary["message_count"], summary["user_message_count"]) == (4, 2)

        assert (await switch(client, chat_id, old[2]["id"])).status_code == 200
        assert [m["id"] for m in await messages_of(client, chat_id)] == [m["id"] for m in old]
        assert (await switch(client, chat_id, question["id"])).status_code == 200
        assert contents(await messages_of(client, chat_id))[2:] == ["two, said better", "echo: two, said better"]


async def test_a_question_whose_reply_failed_after_the_chat_moved_on_is_answered_by_regenerating_it(
    fake_llm: FakeOpenAI, store_url: str
) -> None:
    async with serve(llm_settings(fake_llm, store=store_url, llm_max_retries=0, system_prompt="")) as client:
        chat_id = await new_chat(client)
        fake_llm.queue(Scripted(status=500))
        failed = await post(client, chat_id, "lost")
        assert failed.status_code == 502
        question_id = failed.json()["user_message_id"]
        assert (await post(client, chat_id, "later")).status_code == 201
        retried = await client.post(f"/chats/{chat_id}/messages/{question_id}/retry", json={})
        assert retried.status_code == 409
        assert "regenerate" in retried.json()["detail"]

        answered = await regenerate(client, chat_id, question_id)

        assert answered.status_code == 201, answered.text
        assert answered.json()["assistant_message"]["seq"] == 2
        assert contents(await messages_of(client, chat_id)) == ["lost", "echo: lost"]
        assert roles_and_contents(fake_llm.prompts[-1]) == [("user", "lost")]


async def test_a_streamed_regenerate_sends_the_turns_events(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "one")
    reply_id = (await messages_of(client, chat_id))[1]["id"]
    fake_llm.queue(Scripted(content="streamed again"))
    async with client.stream(
        "POST", f"/chats/{chat_id}/messages/{reply_id}/regenerate", json={"stream": True}
    ) as response:
        assert response.status_code == 200
        events = await events_of(response.aiter_lines())
    kinds = [event["event"] for event in events]
    assert kinds[0] == "user_message"
    assert kinds[-1] == "assistant_message"
    assert "delta" in kinds
    assert events[-1]["data"]["content"] == "streamed again"
    listed = await messages_of(client, chat_id)
    assert contents(listed) == ["one", "streamed again"]
    assert events[-1]["data"]["siblings"] == listed[1]["siblings"] == {"ids": [reply_id, listed[1]["id"]], "index": 1}
    assert "siblings" not in events[0]["data"]  # the question stays where it was: it has none

    resumed = await client.get(f"/chats/{chat_id}/messages/{listed[0]['id']}/events", headers={"Last-Event-ID": "0"})
    assert (await events_of(resumed.aiter_lines()))[-1]["data"]["siblings"] == listed[1]["siblings"]


async def test_a_streamed_edit_sends_its_question_with_its_siblings(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "one")
    question_id = (await messages_of(client, chat_id))[0]["id"]
    async with client.stream(
        "POST", f"/chats/{chat_id}/messages/{question_id}/edit", json={"content": "one, again", "stream": True}
    ) as response:
        assert response.status_code == 200
        events = await events_of(response.aiter_lines())
    listed = await messages_of(client, chat_id)
    assert contents(listed) == ["one, again", "echo: one, again"]
    assert events[0]["data"]["siblings"] == listed[0]["siblings"] == {"ids": [question_id, listed[0]["id"]], "index": 1}
    assert "siblings" not in events[-1]["data"]  # the new question's reply is the first at its place


async def test_a_regenerate_with_a_key_is_answered_once(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "one")
    reply_id = (await messages_of(client, chat_id))[1]["id"]
    route = f"/chats/{chat_id}/messages/{reply_id}/regenerate"
    first = await client.post(route, json={}, headers=keyed("again-1"))
    calls = len(fake_llm.requests)
    second = await client.post(route, json={}, headers=keyed("again-1"))
    assert first.status_code == second.status_code == 201
    assert second.json()["assistant_message"]["id"] == first.json()["assistant_message"]["id"]
    assert len(fake_llm.requests) == calls
    assert len(await messages_of(client, chat_id)) == 2


async def test_branch_changes_wait_their_turn_and_pairs_hold(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    """A regenerate in flight, then a post and a switch arriving while it runs: they run after it,
    in arrival order, and each sees the chat the turn before it left."""
    chat_id = await chat_with_turns(client, "one")
    first_reply = (await messages_of(client, chat_id))[1]["id"]
    fake_llm.queue(Scripted(content="slow new answer", delay=0.4))

    async def later(delay: float, call: Any) -> httpx.Response:
        await asyncio.sleep(delay)
        response: httpx.Response = await call
        return response

    regenerated, posted = await asyncio.gather(
        regenerate(client, chat_id, first_reply), later(0.1, post(client, chat_id, "two"))
    )

    assert (regenerated.status_code, posted.status_code) == (201, 201)
    assert contents(await messages_of(client, chat_id)) == ["one", "slow new answer", "two", "echo: two"]
    assert roles_and_contents(fake_llm.prompts[-1])[-3:] == [
        ("user", "one"),
        ("assistant", "slow new answer"),
        ("user", "two"),
    ]
    fake_llm.queue(Scripted(content="slower", delay=0.4))
    new_reply = regenerated.json()["assistant_message"]["id"]
    _, switched = await asyncio.gather(post(client, chat_id, "three"), later(0.1, switch(client, chat_id, first_reply)))
    assert switched.status_code == 200
    assert contents(await messages_of(client, chat_id)) == ["one", "echo: one"]
    assert (await switch(client, chat_id, new_reply)).status_code == 200
    assert contents(await messages_of(client, chat_id)) == [
        "one",
        "slow new answer",
        "two",
        "echo: two",
        "three",
        "slower",
    ]


async def test_openai_conversation_items_follow_the_current_branch(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "one", "two")
    first_question = (await messages_of(client, chat_id))[0]["id"]
    assert (await edit(client, chat_id, first_question, "uno")).status_code == 201
    items = (await client.get(f"/v1/conversations/{chat_id}/items", params={"order": "asc"})).json()["data"]
    assert [item["content"][0]["text"] for item in items] == ["uno", "echo: uno"]


async def test_bad_branch_requests_are_clear_problems_and_change_nothing(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await chat_with_turns(client, "one")
    question, reply = await messages_of(client, chat_id)
    calls = len(fake_llm.requests)
    cases = [
        (await edit(client, chat_id, reply["id"], "not a question"), 400, "invalid-input"),
        (await edit(client, chat_id, "msg_nothing", "x"), 404, "message-not-found"),
        (await edit(client, chat_id, question["id"], ""), 422, "invalid-request"),
        (await regenerate(client, chat_id, "msg_nothing"), 404, "message-not-found"),
        (await regenerate(client, "conv_nothing", question["id"]), 404, "chat-not-found"),
        (await switch(client, chat_id, "msg_nothing"), 404, "message-not-found"),
        (await client.put(f"/chats/{chat_id}/branch", json={}), 422, "invalid-request"),
        (await client.put(f"/chats/{chat_id}/branch", json={"message_id": "a\x00b"}), 422, "invalid-request"),
    ]
    wrong = [
        (response.status_code, response.json().get("type"))
        for response, status, slug in cases
        if response.status_code != status
        or not response.json()["type"].endswith(slug)
        or response.headers["content-type"] != "application/problem+json"
    ]
    assert wrong == []
    assert await messages_of(client, chat_id) == [question, reply]
    assert len(fake_llm.requests) == calls


async def test_a_retried_post_is_replayed_after_its_turn_left_the_current_branch(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(client)
    route = f"/chats/{chat_id}/messages"
    first = await client.post(route, json={"content": "one"}, headers=keyed("post-1"))
    assert (await edit(client, chat_id, first.json()["user_message"]["id"], "uno")).status_code == 201
    calls = len(fake_llm.requests)

    again = await client.post(route, json={"content": "one"}, headers=keyed("post-1"))

    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert len(fake_llm.requests) == calls
