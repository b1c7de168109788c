"""The LLM seam: the `LLM` protocol and `open_llm(settings)` that builds the configured provider."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from chatkeep.config import Settings
from chatkeep.llm.base import LLM, Reply
from chatkeep.llm.breaker import CircuitBreaker, CircuitBreakerLLM
from chatkeep.llm.instrumented import InstrumentedLLM
from chatkeep.llm.offline import OfflineLLM
from chatkeep.llm.openai import Deadlines, OpenAICompatibleLLM
from chatkeep.metrics import Metrics

__all__ = ["LLM", "Deadlines", "OfflineLLM", "OpenAICompatibleLLM", "Reply", "deadlines_of", "open_llm"]

KEEPALIVE_SECONDS = 30.0


def deadlines_of(settings: Settings) -> Deadlines:
    return Deadlines(
        connect=settings.llm_connect_timeout,
        first_token=settings.llm_first_token_timeout,
        idle=settings.llm_idle_timeout,
        total=settings.llm_timeout,
    )


@asynccontextmanager
async def open_llm(settings: Settings, metrics: Metrics) -> AsyncIterator[LLM]:
    """The configured provider, counted in `metrics`; an OpenAI-compatible one owns a pooled
    session for the block and sits behind a circuit breaker."""
    if settings.provider == "offline":
        yield InstrumentedLLM(OfflineLLM(), metrics)
        return
    connector = aiohttp.TCPConnector(
        limit=settings.llm_max_connections, keepalive_timeout=KEEPALIVE_SECONDS, ttl_dns_cache=300
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        key = settings.openai_api_key
        upstream = OpenAICompatibleLLM(
            session,
            base_url=settings.openai_base_url,
            api_key=key.get_secret_value() if key else None,
            model=settings.llm_model,
            deadlines=deadlines_of(settings),
            max_retries=settings.llm_max_retries,
        )
        breaker = CircuitBreaker(failures=settings.llm_breaker_failures, cooldown=settings.llm_breaker_cooldown)
        yield InstrumentedLLM(CircuitBreakerLLM(upstream, breaker, metrics), metrics)
