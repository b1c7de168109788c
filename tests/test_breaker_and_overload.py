"""A failing upstream is not hammered (circuit breaker); a full server says so at once (503)."""

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

import httpx
import pytest

from chatkeep.domain import PromptMessage
from chatkeep.errors import LLMCircuitOpenError
from chatkeep.llm import Reply
from chatkeep.llm.base import NO_OPTIONS, CallOptions
from chatkeep.llm.breaker import CircuitBreaker, CircuitBreakerLLM
from chatkeep.metrics import NoMetrics
from tests.conftest import llm_settings, new_chat, post, serve
from tests.fake_openai import FakeOpenAI, Scripted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def call(breaker: CircuitBreaker, *, failed: bool | None) -> None:
    """One call through the breaker that ends as `failed` says."""
    probe = breaker.before_call()
    breaker.record(failed=failed, probe=probe)


def test_breaker_opens_after_failures_in_a_row_and_a_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    for _ in range(2):
        call(breaker, failed=True)
    call(breaker, failed=False)  # a success in between: the count starts again
    for _ in range(3):
        call(breaker, failed=True)
    with pytest.raises(LLMCircuitOpenError) as refused:
        breaker.before_call()
    assert refused.value.retry_after == 10
    clock.now += 10
    assert breaker.before_call()  # the probe
    with pytest.raises(LLMCircuitOpenError):
        breaker.before_call()  # only one probe at a time
    breaker.record(failed=False, probe=True)
    assert not breaker.before_call()
    assert not breaker.is_open


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    call(breaker, failed=True)
    clock.now += 5
    call(breaker, failed=True)
    with pytest.raises(LLMCircuitOpenError) as refused:
        breaker.before_call()
    assert refused.value.retry_after == 5


def test_calls_that_say_nothing_about_health_leave_the_breaker_alone() -> None:
    breaker = CircuitBreaker(failures=2, cooldown=5, clock=Clock())
    call(breaker, failed=True)
    for _ in range(5):
        call(breaker, failed=None)
    call(breaker, failed=True)
    assert breaker.is_open


class HangingLLM:
    """An LLM whose calls never end until cancelled, or raise what they are told to."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[str | Reply, None]:
        yield "partial"
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("ending", ["cancelled", "unexpected error"])
async def test_a_probe_that_ends_without_an_answer_frees_the_breaker(streamed: bool, ending: str) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    llm = HangingLLM()
    wrapped = CircuitBreakerLLM(llm, breaker, NoMetrics())
    call(breaker, failed=True)
    clock.now += 5  # cooldown over: the next call is the probe

    async def ask() -> None:
        if streamed:
            async with aclosing(wrapped.stream([])) as items:
                async for _ in items:
                    pass
        else:
            await wrapped.complete([])

    if ending == "cancelled":
        probe = asyncio.create_task(ask())
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    else:
        llm.error = RuntimeError("a bug")
        with pytest.raises(RuntimeError):
            await ask()
    assert breaker.before_call(), "a new probe goes through instead of 503 for good"


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


async def test_overload_answers_stay_cheap_under_a_burst(client: httpx.AsyncClient) -> None:
    # With the default bound, a burst of turns on many chats is simply served.
    chats = [await new_chat(client) for _ in range(50)]
    statuses = [r.status_code for r in await asyncio.gather(*(post(client, c, "hi") for c in chats))]
    assert statuses == [201] * 50
