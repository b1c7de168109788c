"""Who and what the current request is: its id and owner, for logs, problems and upstream calls.

The HTTP layer opens a `RequestContext` per request; code below it (the LLM client, log
records, problem bodies) reads it without being handed it. It lives in a context variable, so
a streamed turn's task, which copies the context of the request that started it, keeps its
request's id in every log line it writes. Nothing here knows about HTTP.
"""

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    request_id: str
    owner: str | None = None  # set once the request's API key is read


_current: ContextVar[RequestContext | None] = ContextVar("chatkeep_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(context: RequestContext) -> Token[RequestContext | None]:
    """Make `context` the current request's (and that of the tasks started from here on) until
    `leave_request` is given the token. Two plain calls, not a context manager: every request
    pays for this."""
    return _current.set(context)


def leave_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current_request_id() -> str | None:
    context = _current.get()
    return None if context is None else context.request_id
