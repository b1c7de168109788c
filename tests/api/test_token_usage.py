"""An upstream's token usage, stored with its reply on every store, whatever numbers it reports.

Usage above 32 bits (a long context counted in total, or a proxy summing many calls) is kept as
it is: PostgreSQL's token columns are 64-bit since m012. Numbers no count can be (negative, or
beyond 64 bits) are the LLM client's to tidy, so a reply is never lost for its usage.
"""

from typing import Any

import httpx
import pytest

from tests.support.app import llm_settings, serve
from tests.support.chats import messages_of, new_chat
from tests.support.fake_openai import FakeOpenAI, Scripted, completion
from tests.support.sse import events_of

BIG = 3_000_000_000  # over int32's 2_147_483_647
INT64_MAX = 2**63 - 1


async def turn(client: httpx.AsyncClient, chat_id: str, *, streamed: bool) -> dict[str, Any]:
    """The assistant message of one turn, as the turn answered it."""
    body = {"content": "count my tokens", "stream": streamed}
    if not streamed:
        response = await client.post(f"/chats/{chat_id}/messages", json=body)
        assert response.status_code == 201, response.text
        answered: dict[str, Any] = response.json()["assistant_message"]
        return answered
    async with client.stream("POST", f"/chats/{chat_id}/messages", json=body) as response:
        assert response.status_code == 200
        events = await events_of(response.aiter_lines())
    assert events[-1]["event"] == "assistant_message", events[-1]
    final: dict[str, Any] = events[-1]["data"]
    return final


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("reported", "stored"),
    [
        ((BIG, 2 * BIG), (BIG, 2 * BIG)),
        ((INT64_MAX, INT64_MAX), (INT64_MAX, INT64_MAX)),
        ((2**64 - 1, 5), (INT64_MAX, 5)),  # beyond a signed 64-bit count: clamped
        ((-1, 5), None),  # no count is negative: the usage is ignored, the reply kept
    ],
    ids=["over-int32", "int64-max", "over-int64", "negative"],
)
async def test_usage_of_any_size_is_stored_with_the_reply(
    store_url: str,
    fake_llm: FakeOpenAI,
    streamed: bool,
    reported: tuple[int, int],
    stored: tuple[int, int] | None,
) -> None:
    prompt_tokens, completion_tokens = reported
    if streamed:
        fake_llm.queue(Scripted(usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}))
    else:
        body = completion("echo: count my tokens", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        fake_llm.queue(Scripted(json_body=body))
    expected = None if stored is None else {"prompt_tokens": stored[0], "completion_tokens": stored[1]}
    async with serve(llm_settings(fake_llm, store=store_url)) as client:
        chat_id = await new_chat(client)
        answered = await turn(client, chat_id, streamed=streamed)
        assert (answered["content"], answered["usage"]) == ("echo: count my tokens", expected)
        messages = await messages_of(client, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["usage"] == expected
    assert messages[1]["id"] == answered["id"]
