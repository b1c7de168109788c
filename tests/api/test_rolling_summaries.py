"""Long chats keep their beginning: older messages summarized into a rolling summary that goes
upstream in their place, off the turn's path; and chat summaries that survive any model.

The fake upstream plays a faithful summarizer: asked for an update, it answers every fact it was
shown (`fact N=...`), from the previous summary and the new messages alike, so a test can see
whether the first turns still reach the model.
"""

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatkeep.context import message_tokens
from chatkeep.summaries import rolling
from chatkeep.summaries.summarizer import CONDENSE_INSTRUCTIONS
from tests.support.app import llm_settings, serve
from tests.support.chats import all_messages, assert_paired, chat_with_turns, new_chat, post
from tests.support.conditions import until
from tests.support.fake_openai import FakeOpenAI, Scripted, echo
from tests.support.stores import SQL_STORES, fresh_database

BUDGET = 1500
FACT = re.compile(r"fact (\d+)=(\d+)")
FOLD_MARK = CONDENSE_INSTRUCTIONS.split(",")[0]
NOTE = re.compile(r"^Summary of the earlier conversation \(its first (\d+) messages, not shown\):\n", re.S)


def is_summary_update(body: dict[str, Any]) -> bool:
    return str(body["messages"][0]["content"]).startswith(FOLD_MARK)


def summarizer_or_echo(body: dict[str, Any]) -> str:
    """An update is answered with every fact it was shown; a turn, with its echo."""
    if is_summary_update(body):
        shown = " ".join(str(message["content"]) for message in body["messages"][1:])
        facts = dict(FACT.findall(shown))
        return "; ".join(f"fact {n}={facts[n]}" for n in sorted(facts, key=int)) or "Small talk."
    return echo(body)


def turn_prompts(fake: FakeOpenAI) -> list[list[dict[str, Any]]]:
    return [request["messages"] for request in fake.requests if not is_summary_update(request)]


def slow_update(body: dict[str, Any], delay: float) -> Scripted | None:
    """An update answered after `delay`; a turn as usual."""
    return Scripted(delay=delay, content=summarizer_or_echo(body)) if is_summary_update(body) else None


def summary_updates(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [request for request in fake.requests if is_summary_update(request)]


def fact(n: int) -> str:
    return f"Please remember fact {n}={n * 7 % 1000:03d} for later."


async def settled(fake: FakeOpenAI) -> None:
    """Wait until the fake has had nothing to answer for a while: the updates have caught up."""
    quiet = 0
    while quiet < 5:
        await asyncio.sleep(0.05)
        quiet = quiet + 1 if fake.in_flight == 0 else 0


async def fill(client: httpx.AsyncClient, chat_id: str, facts: range) -> None:
    for n in facts:
        assert (await post(client, chat_id, fact(n))).status_code == 201


def read_prompt(prompt: list[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    """The seqs its rolling summary covers, the summary, and the messages after it."""
    assert prompt[0] == {"role": "system", "content": "S"}
    note = NOTE.match(str(prompt[1]["content"]))
    assert prompt[1]["role"] == "system"
    assert note is not None, prompt[1]
    return int(note[1]), str(prompt[1]["content"])[note.end() :], prompt[2:]


def assert_summarized_tail(prompt: list[dict[str, Any]], messages: list[dict[str, Any]]) -> int:
    """The prompt holds the summary of the first F messages, then messages F+1.. verbatim, within budget."""
    summarized_to, _, tail = read_prompt(prompt)
    assert summarized_to > 0
    expected = [{"role": m["role"], "content": m["content"]} for m in messages[summarized_to:]]
    assert tail == expected  # exactly the messages after the summarized ones: none lost, none repeated
    assert sum(message_tokens(str(m["content"])) for m in prompt) <= BUDGET
    return summarized_to


@pytest.fixture
def summarizing_llm(fake_llm: FakeOpenAI) -> FakeOpenAI:
    fake_llm.reply = summarizer_or_echo
    return fake_llm


def settings_for(fake: FakeOpenAI, store: str = "memory://", **overrides: Any) -> Any:
    return llm_settings(fake, store=store, context_tokens=BUDGET, system_prompt="S", **overrides)


async def test_sixty_facts_reach_the_model_through_the_rolling_summary(
    store_url: str, summarizing_llm: FakeOpenAI
) -> None:
    fake = summarizing_llm
    async with serve(settings_for(fake, store_url)) as client:
        chat_id = await new_chat(client)
        await fill(client, chat_id, range(60))
        await settled(fake)
        assert (await post(client, chat_id, "What facts do you know?")).status_code == 201
        messages = await all_messages(client, chat_id)
    prompt = turn_prompts(fake)[-1]
    assert_summarized_tail(prompt, messages[:-1])
    seen = " ".join(str(message["content"]) for message in prompt)
    assert dict(FACT.findall(seen)) == {str(n): f"{n * 7 % 1000:03d}" for n in range(60)}
    assert len(messages) == 122  # every message stays stored and listed
    for update in summary_updates(
        fake
    ):  # each update is sent the previous summary and only new messages, within budget
        assert sum(message_tokens(str(m["content"])) for m in update["messages"]) + update["max_tokens"] <= BUDGET


async def test_hundreds_of_turns_stay_within_budget_with_the_newest_verbatim(summarizing_llm: FakeOpenAI) -> None:
    fake = summarizing_llm
    async with serve(settings_for(fake)) as client:
        chat_id = await new_chat(client)
        for n in range(300):
            assert (await post(client, chat_id, f"turn {n}: " + "talk " * (n % 7))).status_code == 201
        await settled(fake)
        await post(client, chat_id, "and now?")
        messages = await all_messages(client, chat_id)
    summarized_to = assert_summarized_tail(turn_prompts(fake)[-1], messages[:-1])
    assert summarized_to > 400
    for prompt in turn_prompts(fake):  # no turn ever went over budget, summary included
        assert sum(message_tokens(str(m["content"])) for m in prompt) <= BUDGET


async def test_an_early_threshold_updates_as_often_as_it_needs(summarizing_llm: FakeOpenAI) -> None:
    fake = summarizing_llm
    async with serve(settings_for(fake, summarize_at=0.3)) as client:
        chat_id = await new_chat(client)
        await fill(client, chat_id, range(60))
        await settled(fake)
        await post(client, chat_id, "What facts do you know?")
        messages = await all_messages(client, chat_id)
    assert_summarized_tail(turn_prompts(fake)[-1], messages[:-1])
    assert len(summary_updates(fake)) <= 20  # each update leaves less than the threshold: not one per turn


async def test_turns_posted_during_an_update_lose_nothing(store_url: str, summarizing_llm: FakeOpenAI) -> None:
    fake = summarizing_llm
    async with serve(settings_for(fake, store_url, max_waiting_turns=16)) as client:
        chat_id = await new_chat(client)
        await fill(client, chat_id, range(30))
        await settled(fake)
        fake.respond = lambda body: (
            Scripted(delay=0.6, content=summarizer_or_echo(body)) if is_summary_update(body) else None
        )
        await fill(client, chat_id, range(30, 45))  # enough for another update, which now takes a while
        await until(lambda: fake.in_flight > 0, seconds=10)
        answers = await asyncio.gather(*(post(client, chat_id, fact(n)) for n in range(45, 55)))
        assert [answer.status_code for answer in answers] == [201] * 10
        await settled(fake)
        await post(client, chat_id, "What facts do you know?")
        messages = await all_messages(client, chat_id)
    assert_paired(messages)
    prompt = turn_prompts(fake)[-1]
    assert_summarized_tail(prompt, messages[:-1])
    seen = " ".join(str(message["content"]) for message in prompt)
    assert len(dict(FACT.findall(seen))) == 55


async def test_a_failing_update_leaves_turns_answered_and_is_tried_again(
    summarizing_llm: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = summarizing_llm
    monkeypatch.setattr(rolling, "RETRY_SECONDS", 0.3)
    fake.respond = lambda body: Scripted(status=500) if is_summary_update(body) else None
    async with serve(settings_for(fake, llm_max_retries=0)) as client:
        chat_id = await new_chat(client)
        await fill(client, chat_id, range(60))  # every turn answered, though every update fails
        await settled(fake)
        assert summary_updates(fake)
        prompt = turn_prompts(fake)[-1]
        assert prompt[1]["role"] == "user"  # truncation meanwhile: no summary, the newest messages that fit
        assert sum(message_tokens(str(m["content"])) for m in prompt) <= BUDGET
        fake.respond = lambda body: None
        await asyncio.sleep(0.35)
        await fill(client, chat_id, range(60, 62))
        await settled(fake)
        await post(client, chat_id, "What facts do you know?")
        metrics = (await client.get("/metrics")).text
        messages = await all_messages(client, chat_id)
    assert_summarized_tail(turn_prompts(fake)[-1], messages[:-1])
    assert 'chatkeep_rolling_summary_updates_total{outcome="failed"}' in metrics
    assert 'chatkeep_rolling_summary_updates_total{outcome="updated"}' in metrics


@pytest.mark.parametrize("kind", SQL_STORES)
async def test_the_rolling_summary_survives_a_restart(kind: str, tmp_path: Path, summarizing_llm: FakeOpenAI) -> None:
    fake = summarizing_llm
    async with fresh_database(kind, tmp_path) as url:
        async with serve(settings_for(fake, url)) as client:
            chat_id = await new_chat(client)
            await fill(client, chat_id, range(60))
            await settled(fake)
        before = len(fake.requests)
        async with serve(settings_for(fake, url)) as client:
            await post(client, chat_id, "What facts do you know?")
            messages = await all_messages(client, chat_id)
    first_after_restart = fake.requests[before]["messages"]
    assert not is_summary_update(fake.requests[before])
    assert_summarized_tail(first_after_restart, messages[:-1])


def newly_summarized(update: dict[str, Any]) -> set[tuple[str, int]]:
    """The messages an update request summarizes (not the previous summary), by role and the fact they state."""
    new_messages = str(update["messages"][1]["content"]).split("New messages:\n", 1)[1]
    return {(line.split(":")[0], int(FACT.findall(line)[0][0])) for line in new_messages.splitlines()}


async def test_two_servers_on_postgresql_summarize_a_chat_once(tmp_path: Path, summarizing_llm: FakeOpenAI) -> None:
    fake = summarizing_llm
    fake.respond = lambda body: (
        Scripted(delay=0.5, content=summarizer_or_echo(body)) if is_summary_update(body) else None
    )
    async with fresh_database("postgres", tmp_path) as url:
        settings = settings_for(fake, url)
        async with serve(settings) as first, serve(settings) as second:
            chat_id = await new_chat(first)
            for n in range(80):  # both servers take turns, and each finds the updates the chat needs
                assert (await post(first if n % 2 else second, chat_id, fact(n))).status_code == 201
            await settled(fake)
            await post(second, chat_id, "What facts do you know?")
            messages = await all_messages(first, chat_id)
    summarized = [newly_summarized(update) for update in summary_updates(fake)]
    assert len(summarized) >= 2
    assert sum(map(len, summarized)) == len(set().union(*summarized))  # no message was summarized twice
    assert_summarized_tail(turn_prompts(fake)[-1], messages[:-1])


# Chat summaries that survive any model


def summary_of(client: httpx.AsyncClient, chat_id: str) -> Any:
    return client.get(f"/chats/{chat_id}/summary")


async def test_a_summary_answered_in_prose_is_kept(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "Plan three days in Rome.", "What about museums?")
    fake_llm.queue(Scripted(content="The user plans a Rome trip and asks about museums."))
    summary = (await summary_of(client, chat_id)).json()
    assert summary["summary"] == "The user plans a Rome trip and asks about museums."
    assert summary["highlights"] == ["Plan three days in Rome.", "What about museums?"]
    assert summary["stale"] is False


async def test_a_summary_in_fenced_json_is_read(client: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with_turns(client, "Plan three days in Rome.")
    fenced = '```json\n{"summary": "A Rome plan.", "highlights": ["three days", "Rome"]}\n```'
    fake_llm.queue(Scripted(content=fenced))
    summary = (await summary_of(client, chat_id)).json()
    assert (summary["summary"], summary["highlights"]) == ("A Rome plan.", ["three days", "Rome"])


async def test_a_summary_falls_back_when_the_upstream_refuses_response_format(
    client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    def refuse_formats(body: dict[str, Any]) -> Scripted | None:
        if "response_format" in body:
            return Scripted(status=400, json_body={"error": {"message": "response_format is not supported"}})
        return None

    chat_id = await chat_with_turns(client, "Plan three days in Rome.")
    fake_llm.respond = refuse_formats
    asked = len(fake_llm.requests)
    fake_llm.queue(Scripted(content='{"summary": "A Rome plan.", "highlights": ["Rome"]}'))
    summary = (await summary_of(client, chat_id)).json()
    assert (summary["summary"], summary["highlights"]) == ("A Rome plan.", ["Rome"])
    formats = [request.get("response_format", {}).get("type") for request in fake_llm.requests[asked:]]
    assert formats == ["json_schema", "json_object", None]
    await post(client, chat_id, "And Florence?")
    asked = len(fake_llm.requests)
    fake_llm.queue(Scripted(content='{"summary": "Rome, then Florence.", "highlights": []}'))
    assert (await summary_of(client, chat_id)).json()["summary"] == "Rome, then Florence."
    assert "response_format" not in fake_llm.requests[asked]  # remembered: no more refusals asked for
