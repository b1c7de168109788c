"""A circuit breaker around any `LLM`, so that an upstream that keeps failing is not hammered.

After `failures` calls in a row fail for the upstream's sake (it cannot be reached, answers
5xx, or never begins its reply), the breaker opens: calls are refused at once with
LLMCircuitOpenError and a Retry-After of the cooldown left. When the cooldown is over one probe
call goes through; its success closes the breaker, its failure opens it for another cooldown.
What says nothing about the upstream's health leaves the count alone: a slow or stalled reply
(its length is the caller's, not the upstream's failing), a garbled one, a rate limit, a request
the upstream refuses (4xx), and a call that ends for any other reason (cancelled by a client
that left, a bug), which only frees the probe's place so the breaker never stays half-open.
"""

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing

from chatkeep.domain import PromptMessage
from chatkeep.errors import LLMCircuitOpenError, LLMError
from chatkeep.llm.base import LLM, NO_OPTIONS, CallOptions, Reply, StreamItem
from chatkeep.metrics import Metrics

PROBE_RETRY_AFTER_SECONDS = 1.0


class CircuitBreaker:
    """The breaker's state; `CircuitBreakerLLM` tells it about each call."""

    def __init__(self, *, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    def before_call(self) -> bool:
        """Let a call through, saying whether it is the probe; raise LLMCircuitOpenError while open."""
        if self._open_until is None:
            return False
        left = self._open_until - self._clock()
        if left > 0:
            raise LLMCircuitOpenError(
                f"the LLM failed {self._failures} times in a row; not calling it for {left:.0f}s", retry_after=left
            )
        if self._probing:
            raise LLMCircuitOpenError(
                "the LLM failed repeatedly; a probe call is checking whether it is back",
                retry_after=PROBE_RETRY_AFTER_SECONDS,
            )
        self._probing = True
        return True

    def record(self, *, failed: bool | None, probe: bool) -> None:
        """The outcome of a call let through: failed, succeeded, or None when it tells nothing."""
        if probe:
            self._probing = False
        if failed is None:
            return
        if not failed:
            self._failures, self._open_until = 0, None
            return
        self._failures += 1
        if probe or self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown

    @property
    def is_open(self) -> bool:
        return self._open_until is not None


def _says_about_upstream(error: LLMError) -> bool | None:
    """True when `error` is the upstream failing; None when it tells nothing about its health."""
    return True if error.unhealthy else None


class _Call:
    """One call let through; its outcome is recorded once, however it ends."""

    __slots__ = ("ended", "probe")

    def __init__(self, probe: bool) -> None:
        self.probe = probe
        self.ended = False


class CircuitBreakerLLM:
    def __init__(self, llm: LLM, breaker: CircuitBreaker, metrics: Metrics) -> None:
        self._llm = llm
        self._breaker = breaker
        self._metrics = metrics

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        call = _Call(self._breaker.before_call())
        try:
            reply = await self._llm.complete(prompt, options)
        except LLMError as error:
            self._end(call, failed=_says_about_upstream(error))
            raise
        else:
            self._end(call, failed=False)
            return reply
        finally:
            self._end(call, failed=None)  # cancelled, or a bug: frees the probe's place

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[StreamItem, None]:
        call = _Call(self._breaker.before_call())
        try:
            async with aclosing(self._llm.stream(prompt, options)) as items:
                async for item in items:
                    if isinstance(item, Reply):  # the last item: a reader may stop here
                        self._end(call, failed=False)
                    yield item
        except LLMError as error:
            self._end(call, failed=_says_about_upstream(error))
            raise
        finally:
            self._end(call, failed=None)

    def _end(self, call: _Call, *, failed: bool | None) -> None:
        if call.ended:
            return
        call.ended = True
        was_open = self._breaker.is_open
        self._breaker.record(failed=failed, probe=call.probe)
        if self._breaker.is_open != was_open:
            self._metrics.breaker_open(self._breaker.is_open)
