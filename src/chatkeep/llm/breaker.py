"""A circuit breaker, so that an upstream that keeps failing is not hammered by every turn.

After `failures` calls in a row fail for the upstream's sake (unreachable, 5xx, timeout), the
breaker opens: calls are refused at once with LLMUnavailableError and a Retry-After of the
cooldown left. When the cooldown is over one probe call goes through; its success closes the
breaker, its failure opens it for another cooldown. Rate limits and requests the upstream
refuses (4xx) say nothing about its health and leave the count alone.
"""

import time
from collections.abc import Callable

from chatkeep.errors import LLMUnavailableError

PROBE_RETRY_AFTER_SECONDS = 1.0


class CircuitBreaker:
    def __init__(self, *, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    def before_call(self) -> None:
        """Let a call through, or raise LLMUnavailableError while the breaker is open."""
        if self._open_until is None:
            return
        left = self._open_until - self._clock()
        if left > 0:
            raise LLMUnavailableError(
                f"the LLM failed {self._failures} times in a row; not calling it for {left:.0f}s", retry_after=left
            )
        if self._probing:
            raise LLMUnavailableError(
                "the LLM failed repeatedly; a probe call is checking whether it is back",
                retry_after=PROBE_RETRY_AFTER_SECONDS,
            )
        self._probing = True

    def record(self, *, failed: bool | None) -> None:
        """The outcome of a call let through: failed, succeeded, or None when it tells nothing."""
        probing, self._probing = self._probing, False
        if failed is None:
            return
        if not failed:
            self._failures, self._open_until = 0, None
            return
        self._failures += 1
        if probing or self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown

    @property
    def is_open(self) -> bool:
        return self._open_until is not None
