"""A client for the OpenAI Chat Completions wire protocol, on a pooled aiohttp session.

It speaks the protocol directly rather than through the `openai` SDK or httpx, whose per-call
and per-chunk cost is several times chatkeep's whole turn (docs/performance.md). Timeouts,
retries and the translation of upstream failures into `LLMError`s live here and nowhere else.

One call has one deadline, `timeout` seconds, that covers every retry: a hung or flapping
upstream never holds a client longer than that.

What the upstream said when it failed (its error message can quote part of the API key), its
URL and the HTTP client's own error text are logged here, under the request's id, and never
put in an error a client sees: that says what happened (the status, a cut-off stream) and
where to look.
"""

import asyncio
import logging
import random
import sys
from collections.abc import AsyncGenerator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from chatkeep.domain import MessageStatus, PromptMessage, Usage, utcnow
from chatkeep.errors import (
    LLMBadResponseError,
    LLMError,
    LLMRateLimitedError,
    LLMRejectedError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from chatkeep.llm.base import NO_OPTIONS, CallOptions, Reply, ToolCall
from chatkeep.request_context import current_request_id

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER_SECONDS = 5.0
RATE_LIMITED_RETRY_AFTER_SECONDS = 1.0
UPSTREAM_DETAIL_CHARS = 300
SEE_LOG = "; the server log has the details under this request's id"
REQUEST_ID_HEADER = "X-Request-ID"
STREAM_OPTIONS = {"include_usage": True}  # the upstream's logs can then be matched with chatkeep's


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
        self._whole_call = aiohttp.ClientTimeout(total=timeout)
        self._max_retries = max_retries

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        response = await self._first_good_response(orjson.dumps(self._request(prompt, options)))
        return _parse_completion(await self._read(response))

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[str | Reply, None]:
        request = self._request(prompt, options)
        request["stream"], request["stream_options"] = True, STREAM_OPTIONS
        body = orjson.dumps(request)
        chunks = _ChunkReader()
        response = await self._first_good_response(body)
        try:
            async for data in response.content.iter_any():
                # The deltas that arrived together travel on as one: each hop after this one
                # (wrappers, the turn's log, the SSE writer) then costs once per read, not per token.
                deltas = chunks.feed(data)
                if deltas:
                    yield "".join(deltas)
                if chunks.done:
                    break
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        finally:
            response.release()
        yield chunks.reply()

    def _request(self, prompt: Sequence[PromptMessage], options: CallOptions) -> dict[str, Any]:
        """The Chat Completions request body: the model, the prompt, and the knobs the caller set."""
        request: dict[str, Any] = {"model": options.model or self._model, "messages": prompt}
        if options is NO_OPTIONS:
            return request
        if options.tools:
            request["tools"] = options.tools
            if options.tool_choice is not None:
                request["tool_choice"] = options.tool_choice
            if options.parallel_tool_calls is not None:
                request["parallel_tool_calls"] = options.parallel_tool_calls
        for name in ("temperature", "top_p", "max_tokens", "response_format"):
            value = getattr(options, name)
            if value is not None:
                request[name] = value
        return request

    async def _first_good_response(self, body: bytes) -> aiohttp.ClientResponse:
        """POST `body` until a 200 comes, retrying what may succeed next time, within one deadline.

        The deadline also covers reading the body of the response returned.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        limit = self._whole_call
        for attempt in range(self._max_retries + 1):
            try:
                return await self._attempt(body, limit=limit)
            except _Retryable as failure:
                error, wait = failure.error, failure.wait
            delay = _backoff(attempt, wait)
            if attempt == self._max_retries or loop.time() + delay >= deadline:
                break
            log.warning("LLM attempt %d failed (%s); retrying in %.2fs", attempt + 1, error.title, delay)
            await asyncio.sleep(delay)
            limit = aiohttp.ClientTimeout(total=deadline - loop.time())
        raise error

    async def _attempt(self, body: bytes, *, limit: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        headers = self._headers
        request_id = current_request_id()
        if request_id is not None:
            headers = {**headers, REQUEST_ID_HEADER: request_id}
        try:
            response = await self._session.post(self._url, data=body, headers=headers, timeout=limit)
        except TimeoutError as exc:
            raise self._failure(exc) from exc  # aiohttp's timeouts are connection errors too: not retried
        except aiohttp.ClientConnectionError as exc:
            log.warning("cannot reach the LLM at %s: %s", self._url, exc)
            unreachable = LLMUnavailableError(
                "cannot reach the LLM" + SEE_LOG, retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS
            )
            raise _Retryable(unreachable) from exc
        except aiohttp.ClientError as exc:
            raise self._failure(exc) from exc
        if response.status == 200:
            return response
        payload = await self._read(response)
        log.warning("the LLM answered %d: %s", response.status, _upstream_message(payload))
        detail = f"the LLM answered HTTP {response.status}" + SEE_LOG
        wait = _retry_after(response.headers.get("Retry-After"))
        if response.status == 429:
            limited = LLMRateLimitedError(detail, retry_after=max(wait or 0.0, RATE_LIMITED_RETRY_AFTER_SECONDS))
            raise _Retryable(limited, wait=wait)
        if response.status >= 500:
            raise _Retryable(LLMBadResponseError(detail), wait=wait)
        raise LLMRejectedError(detail)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, with the connection given back to the pool whatever happens."""
        try:
            return await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        finally:
            response.release()

    def _failure(self, exc: BaseException) -> LLMError:
        """The HTTP client's failure as one of chatkeep's LLM errors: translated here and nowhere else."""
        if isinstance(exc, TimeoutError):
            return LLMTimeoutError(f"the LLM did not answer within {self._timeout:g}s")
        log.warning("reading the LLM's response failed: %r", exc)
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            return LLMBadResponseError("the LLM's response was cut off" + SEE_LOG)
        return LLMBadResponseError("the LLM's response could not be read" + SEE_LOG)


class _ChunkReader:
    """Reads a Chat Completions event stream as it arrives: deltas out, model and usage kept.

    It takes whatever bytes the network delivered (several events, or part of one) rather than
    a line at a time, which halves the cost of a streamed reply.
    """

    def __init__(self) -> None:
        self.done = False
        self._partial = b""
        self._parts: list[str] = []
        self._model: str | None = None
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._calls: dict[int, dict[str, str]] = {}  # tool calls by index, as their pieces arrive

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        deltas: list[str] = []
        for line in lines:
            if self.done:
                break
            delta = self._line(line)
            if delta:
                deltas.append(delta)
        return deltas

    def _line(self, line: bytes) -> str | None:
        if not line.startswith(b"data:"):
            return None  # blank separators, comments and other fields
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(data)
            if "error" in chunk:
                log.warning("the LLM failed mid-stream: %s", _upstream_message(data))
                raise LLMBadResponseError("the LLM failed mid-stream" + SEE_LOG)
            choices = chunk.get("choices")
            choice = choices[0] if choices else {}
            changes = choice.get("delta") or {}
            delta = changes.get("content")
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
            if changes.get("tool_calls"):
                self._add_calls(changes["tool_calls"])
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
            raise LLMBadResponseError("the LLM's stream holds a chunk that is not a completion chunk") from exc
        if self._model is None:
            self._model = _model(chunk.get("model"))
        if chunk.get("usage") is not None:
            self._usage = _usage(chunk["usage"]) or self._usage
        if isinstance(delta, str) and delta:
            delta = _storable(delta)
            self._parts.append(delta)
            return delta
        return None

    def _add_calls(self, pieces: list[dict[str, Any]]) -> None:
        """Tool calls come in pieces: an index, then its id and name, then its arguments bit by bit."""
        for piece in pieces:
            call = self._calls.setdefault(piece.get("index", 0), {"id": "", "name": "", "arguments": ""})
            function = piece.get("function") or {}
            call["id"] = piece.get("id") or call["id"]
            call["name"] = function.get("name") or call["name"]
            call["arguments"] += function.get("arguments") or ""

    def reply(self) -> Reply:
        if not self.done:
            raise LLMBadResponseError("the LLM's stream ended before it was complete")
        calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(self._calls.items()))
        status = _status(self._finish_reason)
        return Reply("".join(self._parts), model=self._model, usage=self._usage, status=status, tool_calls=calls)


def _parse_completion(payload: bytes) -> Reply:
    try:
        data = orjson.loads(payload)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
        calls = tuple(
            ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in message.get("tool_calls") or ()
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LLMBadResponseError("the LLM's answer is not a chat completion") from exc
    if not isinstance(content, str) and not (content is None and calls):
        raise LLMBadResponseError("the LLM's answer has no text content")
    text = _storable(content) if content else ""
    status = _status(choice.get("finish_reason"))
    return Reply(
        text, model=_model(data.get("model")), usage=_usage(data.get("usage")), status=status, tool_calls=calls
    )


def _status(finish_reason: object) -> MessageStatus:
    """A reply the token limit cut short is incomplete; any other ending is a completed one."""
    return MessageStatus.INCOMPLETE if finish_reason == "length" else MessageStatus.COMPLETED


def _storable(text: str) -> str:
    """NUL, which no SQL text column takes, as the replacement character."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _model(raw: Any) -> str | None:
    """The model named by a reply, one shared string per name: every stored reply keeps it."""
    return sys.intern(_storable(raw)) if isinstance(raw, str) and raw else None


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
