"""A client for the OpenAI Chat Completions wire protocol, on a pooled aiohttp session.

It speaks the protocol directly rather than through the `openai` SDK or httpx: measured on this
project's machine, their per-call cost is several times chatkeep's whole turn (DESIGN.md, "LLM
client"). Timeouts, retries and the translation of upstream failures into `LLMError`s live
here and nowhere else.

One call has one deadline, `timeout` seconds, that covers every retry: a hung or flapping
upstream never holds a client longer than that.
"""

import asyncio
import logging
import random
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from chatkeep.domain import Message, PromptMessage, Usage, utcnow
from chatkeep.errors import (
    LLMBadResponseError,
    LLMError,
    LLMRateLimitedError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from chatkeep.llm.base import Reply
from chatkeep.summaries import SummaryDraft, parse_summary, summary_prompt

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER_SECONDS = 5.0
RATE_LIMITED_RETRY_AFTER_SECONDS = 1.0
UPSTREAM_DETAIL_CHARS = 300


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not: connect errors, 429, 5xx.

    `wait` is what the upstream asked for in its Retry-After header, if anything.
    """

    def __init__(self, error: LLMError, *, wait: float | None = None) -> None:
        super().__init__(error.detail)
        self.error = error
        self.wait = wait


class OpenAICompatibleLLM:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float,
        max_retries: int,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._model = model
        self._timeout = timeout
        self._max_retries = max_retries

    async def complete(self, prompt: Sequence[PromptMessage]) -> Reply:
        body = orjson.dumps({"model": self._model, "messages": prompt})
        return _parse_completion(await self._post(body))

    async def summarize(self, previous: SummaryDraft | None, messages: Sequence[Message]) -> SummaryDraft:
        reply = await self.complete(summary_prompt(previous, messages))
        return parse_summary(reply.content)

    async def _post(self, body: bytes) -> bytes:
        """POST `body`, retrying what may succeed next time, within one deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        for attempt in range(self._max_retries + 1):
            try:
                return await self._attempt(body, seconds_left=deadline - loop.time())
            except _Retryable as failure:
                error, wait = failure.error, failure.wait
            delay = _backoff(attempt, wait)
            if attempt == self._max_retries or loop.time() + delay >= deadline:
                break
            log.warning("LLM attempt %d failed (%s); retrying in %.2fs", attempt + 1, error.detail, delay)
            await asyncio.sleep(delay)
        raise error

    async def _attempt(self, body: bytes, *, seconds_left: float) -> bytes:
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, timeout=aiohttp.ClientTimeout(total=seconds_left)
            ) as response:
                payload = await response.read()
        except TimeoutError as exc:
            raise LLMTimeoutError(f"the LLM did not answer within {self._timeout:g}s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise LLMBadResponseError(f"the LLM sent a broken response body: {exc}") from exc
        except aiohttp.ClientError as exc:
            unreachable = LLMUnavailableError(
                f"cannot reach the LLM at {self._url}: {exc}", retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS
            )
            raise _Retryable(unreachable) from exc
        if response.status == 200:
            return payload
        detail = f"the LLM answered {response.status}: {_upstream_message(payload)}"
        wait = _retry_after(response.headers.get("Retry-After"))
        if response.status == 429:
            limited = LLMRateLimitedError(detail, retry_after=max(wait or 0.0, RATE_LIMITED_RETRY_AFTER_SECONDS))
            raise _Retryable(limited, wait=wait)
        if response.status >= 500:
            raise _Retryable(LLMBadResponseError(detail), wait=wait)
        raise LLMBadResponseError(detail)


def _parse_completion(payload: bytes) -> Reply:
    try:
        data = orjson.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise LLMBadResponseError("the LLM's answer is not a chat completion") from exc
    if not isinstance(content, str):
        raise LLMBadResponseError("the LLM's answer has no text content")
    model = data.get("model")
    return Reply(content=content, model=model if isinstance(model, str) else None, usage=_usage(data.get("usage")))


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt_tokens=prompt, completion_tokens=completion)
    return None


def _upstream_message(payload: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        message = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = payload[:UPSTREAM_DETAIL_CHARS].decode(errors="replace")
    text = str(message).strip() or "(empty body)"
    return text[:UPSTREAM_DETAIL_CHARS]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def _backoff(attempt: int, wait: float | None) -> float:
    """What the upstream asked for (Retry-After), else full-jitter exponential backoff."""
    if wait is not None:
        return wait
    return random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
