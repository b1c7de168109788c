"""A client for the OpenAI Chat Completions wire protocol, on a pooled aiohttp session.

It speaks the protocol directly rather than through the `openai` SDK or httpx, whose per-call
and per-chunk cost is several times chatkeep's whole turn (docs/performance.md). Timeouts,
retries and the translation of upstream failures into `LLMError`s live here and nowhere else.

A call has four deadlines, shaped like generation rather than like one request: connecting
(`connect`), the reply beginning (`first_token`: the response's headers and, for a stream, its
first chunk that carries more than the role), the silence between chunks of a reply under way
(`idle`), and a cap on the whole call, retries included (`total`), set far above any real reply.
A non-streamed reply arrives all at once, so the first-token deadline covers its whole generation.

What the upstream said when it failed (its error message can quote part of the API key), its
URL and the HTTP client's own error text are logged here, under the request's id, and never
put in an error a client sees: that says what happened (the status, a cut-off stream) and
where to look.
"""

import asyncio
import io
import logging
import math
import random
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeGuard

import aiohttp
import orjson

from chatkeep.config import without_userinfo
from chatkeep.domain import IncompleteReason, MessageStatus, PromptMessage, Usage, utcnow
from chatkeep.errors import (
    LLMBadResponseError,
    LLMError,
    LLMInputRefusedError,
    LLMRateLimitedError,
    LLMRejectedError,
    LLMServerError,
    LLMStalledError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from chatkeep.llm.base import NO_OPTIONS, CallOptions, Reply, StreamItem, ToolCall, ToolCallDelta
from chatkeep.request_context import current_request_id

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
UNAVAILABLE_RETRY_AFTER_SECONDS = 5.0
RATE_LIMITED_RETRY_AFTER_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 86_400.0
UPSTREAM_DETAIL_CHARS = 300
SEE_LOG = "; the server log has the details under this request's id"
REQUEST_ID_HEADER = "X-Request-ID"
STREAM_OPTIONS = {"include_usage": True}  # the upstream's logs can then be matched with chatkeep's
MAX_TOKENS = 2**63 - 1  # a usage count beyond this is stored as this (`_usage`)
LARGE_BODY_BYTES = 2**20  # aiohttp's own bound for a body it writes at once (payload.TOO_LARGE_BYTES_BODY)


@dataclass(slots=True, frozen=True)
class Deadlines:
    """Seconds each part of a call may take (see the module)."""

    connect: float = 10.0
    first_token: float = 300.0
    idle: float = 60.0
    total: float = 1800.0


class _Call:
    """One call's clock: when it must end, and when the attempt under way must begin its reply."""

    __slots__ = ("deadlines", "end", "first_due", "loop")

    def __init__(self, deadlines: Deadlines) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = deadlines
        self.end = self.loop.time() + deadlines.total
        self.first_due = self.end

    def attempt(self) -> None:
        """A new attempt starts now: its reply must begin within the first-token deadline."""
        self.first_due = min(self.end, self.loop.time() + self.deadlines.first_token)

    def timed_out(self, begun: bool) -> LLMTimeoutError:
        """The timeout that expired: the reply never began, went silent, or outlasted the cap."""
        deadlines = self.deadlines
        if not begun:
            waited = min(deadlines.first_token, deadlines.total)
            return LLMTimeoutError(f"the LLM did not begin its reply within {waited:g}s")
        if self.loop.time() >= self.end:
            return LLMStalledError(f"the LLM's reply outlasted the {deadlines.total:g}s cap on one call")
        return LLMStalledError(f"the LLM sent nothing for {deadlines.idle:g}s in the middle of its reply")


class _Silence(Exception):
    """What a watched stream raises from its next read once a deadline passed."""


class _Watchdog:
    """Ends a stream that stays silent past its deadline: the first-token one until the reply
    begins, then `idle` after the last chunk; the call's cap throughout.

    One timer that moves on only when it fires (and once more when the reply begins, its deadline
    then drawing nearer): arming a timeout per chunk would cost more than reading the chunk. When
    it finds a deadline passed it fails the response's next read, which works whichever task is
    reading, even across the stream's yields.
    """

    __slots__ = ("_call", "_response", "_timer", "begun", "heard")

    def __init__(self, call: _Call, response: aiohttp.ClientResponse) -> None:
        self._call, self._response = call, response
        self.begun = False
        self.heard = call.loop.time()
        self._timer = call.loop.call_at(self._due(), self._alarm)

    def _due(self) -> float:
        call = self._call
        return min(call.end, self.heard + call.deadlines.idle if self.begun else call.first_due)

    def begin(self) -> None:
        """The reply is under way: from now on the idle deadline applies, usually nearer than the
        first-token one the timer waits for, so it is set anew (once per call)."""
        self.begun = True
        self._timer.cancel()
        self._timer = self._call.loop.call_at(self._due(), self._alarm)

    def _alarm(self) -> None:
        due = self._due()
        if self._call.loop.time() >= due:
            self._response.content.set_exception(_Silence())
        else:
            self._timer = self._call.loop.call_at(due, self._alarm)

    def cancel(self) -> None:
        self._timer.cancel()


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
        deadlines: Deadlines,
        max_retries: int,
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._shown_url = without_userinfo(self._url)  # for the log: a password in the URL stays out
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._model = model
        self._deadlines = deadlines
        # Only connecting is aiohttp's to time; the other deadlines are the call's (_Call, _Watchdog).
        self._connect = aiohttp.ClientTimeout(total=None, sock_connect=deadlines.connect)
        self._max_retries = max_retries

    async def complete(self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS) -> Reply:
        call = _Call(self._deadlines)
        try:
            response = await self._first_good_response(orjson.dumps(self._request(prompt, options)), call)
        except LLMRejectedError as error:
            raise self._refused(error, prompt, options) from error
        try:
            async with asyncio.timeout_at(min(call.end, call.loop.time() + call.deadlines.idle)):
                payload = await self._read(response)
        except TimeoutError:
            raise self._timed_out(call, begun=True) from None
        return _parse_completion(payload)

    async def stream(
        self, prompt: Sequence[PromptMessage], options: CallOptions = NO_OPTIONS
    ) -> AsyncGenerator[StreamItem, None]:
        request = self._request(prompt, options)
        request["stream"], request["stream_options"] = True, STREAM_OPTIONS
        body = orjson.dumps(request)
        chunks = _ChunkReader()
        call = _Call(self._deadlines)
        try:
            response = await self._first_good_response(body, call)
        except LLMRejectedError as error:
            raise self._refused(error, prompt, options) from error
        watchdog = _Watchdog(call, response)
        try:
            async for data in response.content.iter_any():
                watchdog.heard = call.loop.time()
                # The deltas that arrived together travel on as one: each hop after this one
                # (wrappers, the turn's log, the SSE writer) then costs once per read, not per token.
                pieces = chunks.feed(data)
                if chunks.begun and not watchdog.begun:
                    watchdog.begin()
                for piece in pieces:
                    yield piece
                if chunks.done:
                    break
        except _Silence:
            response.close()  # the upstream stops writing a reply nobody reads
            raise self._timed_out(call, begun=chunks.begun) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        finally:
            watchdog.cancel()
            response.release()
        yield chunks.reply()

    def _refused(self, error: LLMRejectedError, prompt: Sequence[PromptMessage], options: CallOptions) -> LLMError:
        """A 400 to a prompt with images or files says, most likely, a model that takes text alone:
        a 400 naming the model, the client's to change, rather than a 502. Any other refusal as it is."""
        kinds = _attachment_kinds(prompt)
        if error.upstream_status != 400 or not kinds:
            return error
        model = options.model or self._model
        return LLMInputRefusedError(
            f"model {model!r} does not accept {kinds} input: it answered HTTP 400 to a request carrying some" + SEE_LOG
        )

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

    async def _first_good_response(self, body: bytes, call: _Call) -> aiohttp.ClientResponse:
        """POST `body` until a 200 comes, retrying what may succeed next time, within the call's cap;
        each attempt's answer must begin within the first-token deadline."""
        loop = call.loop
        for attempt in range(self._max_retries + 1):
            call.attempt()
            try:
                async with asyncio.timeout_at(call.first_due):
                    return await self._attempt(body)
            except _Retryable as failure:
                error, wait = failure.error, failure.wait
            except TimeoutError:
                raise self._timed_out(call, begun=False) from None
            delay = _backoff(attempt, wait)
            if attempt == self._max_retries or loop.time() + delay >= call.end:
                break
            log.warning("LLM attempt %d failed (%s); retrying in %.2fs", attempt + 1, error.title, delay)
            await asyncio.sleep(delay)
        raise error

    async def _attempt(self, body: bytes) -> aiohttp.ClientResponse:
        headers = self._headers
        request_id = current_request_id()
        if request_id is not None:
            headers = {**headers, REQUEST_ID_HEADER: request_id}
        try:
            # A body with images is megabytes: aiohttp writes one given as a stream in pieces, between other work.
            data = body if len(body) < LARGE_BODY_BYTES else io.BytesIO(body)
            response = await self._session.post(self._url, data=data, headers=headers, timeout=self._connect)
        except aiohttp.ConnectionTimeoutError as exc:
            log.warning("cannot connect to the LLM at %s within %gs", self._shown_url, self._deadlines.connect)
            slow = LLMUnavailableError(
                f"cannot connect to the LLM within {self._deadlines.connect:g}s" + SEE_LOG,
                retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
            )
            raise _Retryable(slow) from exc
        except aiohttp.ClientConnectionError as exc:
            log.warning("cannot reach the LLM at %s: %s", self._shown_url, exc)
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
            raise _Retryable(LLMServerError(detail), wait=wait)
        raise LLMRejectedError(detail, upstream_status=response.status)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, with the connection given back to the pool whatever happens."""
        try:
            return await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failure(exc) from exc
        finally:
            response.release()

    def _timed_out(self, call: _Call, *, begun: bool) -> LLMTimeoutError:
        """The call's expired deadline as its error, logged: a streamed turn has answered 200 by
        then, so the log is where an operator learns of it."""
        error = call.timed_out(begun)
        log.warning("the LLM at %s timed out: %s", self._shown_url, error.detail)
        return error

    def _failure(self, exc: BaseException) -> LLMError:
        """The HTTP client's failure as one of chatkeep's LLM errors: translated here and nowhere else."""
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
        self.begun = False  # a chunk carried more than the role: the reply is under way
        self._partial = b""
        self._parts: list[str] = []
        self._model: str | None = None
        self._usage: Usage | None = None
        self._finish_reason: str | None = None
        self._calls: dict[int, dict[str, str]] = {}  # tool calls by index, as their pieces arrive

    def feed(self, data: bytes) -> list[str | ToolCallDelta]:
        """The text deltas and tool call pieces in `data`, in order, neighbours of one kind joined."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        pieces: list[str | ToolCallDelta] = []
        for line in lines:
            if self.done:
                break
            self._line(line, pieces)
        return pieces

    def _line(self, line: bytes, pieces: list[str | ToolCallDelta]) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments and other fields
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
            if "error" in chunk:
                log.warning("the LLM failed mid-stream: %s", _upstream_message(data))
                raise LLMBadResponseError("the LLM failed mid-stream" + SEE_LOG)
            choices = chunk.get("choices")
            choice = choices[0] if choices else {}
            changes = choice.get("delta") or {}
            delta = changes.get("content")
            self.begun = self.begun or _under_way(changes)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
            if changes.get("tool_calls"):
                self._add_calls(changes["tool_calls"], pieces)
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as exc:
            raise _unusable("the LLM's stream holds a chunk that is not a completion chunk") from exc
        if self._model is None:
            self._model = _model(chunk.get("model"))
        if chunk.get("usage") is not None:
            self._usage = _usage(chunk["usage"]) or self._usage
        if isinstance(delta, str) and delta:
            delta = _storable(delta)
            self._parts.append(delta)
            _join(pieces, delta)

    def _add_calls(self, changes: list[dict[str, Any]], pieces: list[str | ToolCallDelta]) -> None:
        """Tool calls come in pieces: an index, then its id and name, then its arguments bit by bit.
        Each new call, and each bit of arguments, is a piece to pass on."""
        for change in changes:
            index = change.get("index", 0)
            new = index not in self._calls
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = change.get("function") or {}
            call["id"] = change.get("id") or call["id"]
            call["name"] = function.get("name") or call["name"]
            arguments = function.get("arguments") or ""
            call["arguments"] += arguments
            if new or arguments:
                _join(pieces, ToolCallDelta(index, call["id"], call["name"], arguments))

    def reply(self) -> Reply:
        if not self.done:
            raise _unusable("the LLM's stream ended before it was complete")
        calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(self._calls.items()))
        reason = _cut_by(self._finish_reason)
        return Reply(
            "".join(self._parts),
            model=self._model,
            usage=self._usage,
            status=MessageStatus.COMPLETED if reason is None else MessageStatus.INCOMPLETE,
            tool_calls=calls,
            incomplete_reason=reason,
        )


def _unusable(detail: str) -> LLMBadResponseError:
    """An answer chatkeep cannot use, as the client is told of it, and logged: a streamed turn has
    answered 200 by then, and the log is where the operator looks."""
    log.warning("the LLM's answer cannot be used: %s", detail)
    return LLMBadResponseError(detail)


def _join(pieces: list[str | ToolCallDelta], piece: str | ToolCallDelta) -> None:
    """Add `piece` to `pieces`, joined to the last one when both are text, or both bits of one call."""
    last = pieces[-1] if pieces else None
    if isinstance(piece, str) and isinstance(last, str):
        pieces[-1] = last + piece
    elif isinstance(piece, ToolCallDelta) and isinstance(last, ToolCallDelta) and last.index == piece.index:
        pieces[-1] = ToolCallDelta(piece.index, piece.id, piece.name, last.arguments + piece.arguments)
    else:
        pieces.append(piece)


ATTACHMENT_KINDS = {"image_url": "image", "file": "file"}  # a Chat Completions part's type, and what it carries


def _attachment_kinds(prompt: Sequence[PromptMessage]) -> str:
    """What kinds of attachment a prompt carries ("image", "file and image"), "" for none."""
    kinds = {
        ATTACHMENT_KINDS[part["type"]]
        for message in prompt
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") in ATTACHMENT_KINDS
    }
    return " and ".join(sorted(kinds))


def _under_way(changes: dict[str, Any]) -> bool:
    """Whether a chunk's delta carries part of the reply (text, reasoning, a tool call), not just its role."""
    return any(value for name, value in changes.items() if name != "role")


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
        raise _unusable("the LLM's answer is not a chat completion") from exc
    if not isinstance(content, str) and not (content is None and calls):
        raise _unusable("the LLM's answer has no text content")
    text = _storable(content) if content else ""
    reason = _cut_by(choice.get("finish_reason"))
    return Reply(
        text,
        model=_model(data.get("model")),
        usage=_usage(data.get("usage")),
        status=MessageStatus.COMPLETED if reason is None else MessageStatus.INCOMPLETE,
        tool_calls=calls,
        incomplete_reason=reason,
    )


CUT_BY = {"length": IncompleteReason.MAX_TOKENS, "content_filter": IncompleteReason.CONTENT_FILTER}


def _cut_by(finish_reason: object) -> IncompleteReason | None:
    """Why the upstream cut its reply short (the token limit, its content filter); None when it did not."""
    return CUT_BY.get(finish_reason) if isinstance(finish_reason, str) else None


def _storable(text: str) -> str:
    """NUL, which no SQL text column takes, as the replacement character."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _model(raw: Any) -> str | None:
    """The model named by a reply, one shared string per name: every stored reply keeps it."""
    return sys.intern(_storable(raw)) if isinstance(raw, str) and raw else None


def _usage(raw: Any) -> Usage | None:
    """The reply's token counts, as every store can keep them: none unless both are integers of at
    least 0 (a negative count, a float or a boolean counts nothing), and one beyond a signed 64-bit
    integer (the widest column) clamped to MAX_TOKENS. A reply is never lost for its usage."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if _is_count(prompt) and _is_count(completion):
        return Usage(prompt_tokens=min(prompt, MAX_TOKENS), completion_tokens=min(completion, MAX_TOKENS))
    return None


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _upstream_message(payload: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        message = orjson.loads(payload)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = payload[:UPSTREAM_DETAIL_CHARS].decode(errors="replace")
    text = str(message).strip() or "(empty body)"
    return text[:UPSTREAM_DETAIL_CHARS]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date, at most a day
    (`inf`, `nan` or `1e308` from an upstream is no wait anyone keeps, nor a header to pass on)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - utcnow()).total_seconds()
        except (TypeError, ValueError, OverflowError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else None


def _backoff(attempt: int, wait: float | None) -> float:
    """What the upstream asked for (Retry-After), else full-jitter exponential backoff."""
    if wait is not None:
        return wait
    return random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
