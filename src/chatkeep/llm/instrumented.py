"""Metrics around any `LLM`: each call's outcome and time, the first token's time, the tokens.

The outcome is "ok", the slug of the LLMError the call raised (`llm-timeout`, `llm-circuit-open`
...), or "cancelled" when the caller stopped waiting (a stopped reply, a server shutting down).
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from chatkeep.domain import PromptMessage
from chatkeep.errors import LLMError
from chatkeep.llm.base import LLM, NO_OPTIONS, CallOptions, Reply, StreamItem
from chatkeep.metrics import Metrics

OK = "ok"
CANCELLED = "cancelled"
UNEXPECTED = "unexpected"


class InstrumentedLLM:
    def __init__(self, llm: LLM, metrics: Metrics) -> None:
        self._llm = llm
        self._metrics = metrics

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        started = time.perf_counter()
        outcome = UNEXPECTED
        reply: Reply | None = None
        try:
            reply = await self._llm.complete(prompt, options)
            outcome = OK
            return reply
        except LLMError as error:
            outcome = error.slug
            raise
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        finally:
            usage = reply.usage if reply is not None else None
            self._metrics.llm_call(outcome, time.perf_counter() - started, first_token_seconds=None, usage=usage)

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[StreamItem, None]:
        started = time.perf_counter()
        first_token: float | None = None
        outcome = UNEXPECTED
        reply: Reply | None = None
        try:
            async with aclosing(self._llm.stream(prompt, options)) as items:
                async for item in items:
                    if isinstance(item, Reply):
                        reply, outcome = item, OK
                    elif first_token is None:
                        first_token = time.perf_counter() - started
                    yield item
        except LLMError as error:
            outcome = error.slug
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = OK if reply is not None else CANCELLED
            raise
        finally:
            usage = reply.usage if reply is not None else None
            self._metrics.llm_call(outcome, time.perf_counter() - started, first_token_seconds=first_token, usage=usage)
