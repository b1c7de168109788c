"""The circuit breaker on its own, on a clock the tests move: when it opens, when a probe closes it,
and that a probe which ends without an answer never leaves it shut for good."""

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

import pytest

from chatkeep.domain import PromptMessage
from chatkeep.errors import LLMCircuitOpenError
from chatkeep.llm import Reply
from chatkeep.llm.base import NO_OPTIONS, CallOptions
from chatkeep.llm.breaker import CircuitBreaker, CircuitBreakerLLM
from chatkeep.metrics import NoMetrics


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
