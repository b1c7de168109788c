"""RFC 9457 problem details for every error the API returns, or another shape where a path asks for one.

One set of handlers: chatkeep's own errors carry their status, title and slug; validation
errors become 422 with an `errors` list; plain HTTP errors (404 route, 405, 413) keep their
status with `about:blank`; anything unexpected is a bare 500 whose traceback is only logged.
Every problem names the request it answers (`request_id`), the id its log lines carry. The
handlers decide what went wrong; an `ErrorShape` decides how it is written. Problem details are
the default; the paths of OpenAI's API under /v1 get OpenAI's own shape
(openai_compat/errors.py), given to `ProblemHandlers` by the app, so this module knows no API
but the native one.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from chatkeep.errors import ChatkeepError, Failure, UnauthorizedError
from chatkeep.request_context import current_request_id

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "urn:chatkeep:problem:"
MEDIA_TYPE = "application/problem+json"
VALIDATION_SLUG = "invalid-request"

Issue = dict[str, Any]  # one validation error: loc, msg, type


class ErrorShape(Protocol):
    """How errors are written for the paths that use this shape."""

    def chatkeep_error(self, error: ChatkeepError, headers: dict[str, str] | None) -> Response:
        """One of chatkeep's errors, with its Retry-After or WWW-Authenticate header."""
        ...

    def invalid(self, detail: str, errors: list[Issue]) -> Response:
        """A request that does not validate: `detail` says what of the first of `errors` (if any)."""
        ...

    def unparsable(self, reason: str) -> Response:
        """A body the JSON parser itself gave up on."""
        ...

    def http_error(self, request: Request, status: int, detail: str | None, headers: dict[str, str] | None) -> Response:
        """A plain HTTP error: an unknown route, a method not allowed, a body over the limit."""
        ...

    def unexpected(self) -> Response:
        """A 500 that says nothing of its cause."""
        ...


class ProblemDetails:
    """The native shape: RFC 9457 problem details."""

    def chatkeep_error(self, error: ChatkeepError, headers: dict[str, str] | None) -> Response:
        return Response(
            orjson.dumps(problem_body(error)), status_code=error.status, media_type=MEDIA_TYPE, headers=headers
        )

    def invalid(self, detail: str, errors: list[Issue]) -> Response:
        return problem(422, "Invalid request", detail, slug=VALIDATION_SLUG, errors=errors)

    def unparsable(self, reason: str) -> Response:
        body_issue = {"loc": ["body"], "msg": reason, "type": "json_invalid"}
        return problem(422, "Invalid request", reason, slug=VALIDATION_SLUG, errors=[body_issue])

    def http_error(self, request: Request, status: int, detail: str | None, headers: dict[str, str] | None) -> Response:
        return http_problem(status, detail, headers=headers)

    def unexpected(self) -> Response:
        return problem(500, "Internal Server Error", None)


def problem(
    status: int,
    title: str,
    detail: str | None,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    body.update(extensions)
    return Response(orjson.dumps(_identified(body)), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _identified(body: dict[str, Any]) -> dict[str, Any]:
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return body


# Said of a 429 that waiting does not clear (a quota), in the header OpenAI's SDKs read before retrying.
NOT_BY_WAITING = {"x-should-retry": "false"}


def retry_after_header(seconds: float | None) -> dict[str, str] | None:
    """Retry-After in whole seconds, rounded up so a client never comes back too early."""
    return None if seconds is None else {"Retry-After": str(max(1, -int(-seconds // 1)))}


def problem_body(error: Failure) -> dict[str, Any]:
    """The problem details of one of chatkeep's errors, as a response body or an SSE `error` event."""
    body = {
        "type": PROBLEM_TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **error.extensions(),
    }
    return _identified(body)


def http_problem(status: int, detail: str | None, *, headers: dict[str, str] | None = None) -> Response:
    """A plain HTTP error (`about:blank`), titled with the status's reason phrase."""
    title = _reason(status)
    return problem(status, title, detail if detail and detail != title else None, headers=headers)


Handler = Callable[[Request, Exception], Awaitable[Response]]


class ProblemHandlers:
    """The app's exception handlers, each writing its error in the shape of the request's path."""

    def __init__(self, shapes: Mapping[str, ErrorShape] | None = None) -> None:
        self._shapes = dict(shapes or {})  # by path prefix; any other path gets problem details
        self._native = ProblemDetails()
        self._handlers: dict[type[Exception], Handler] = {
            ChatkeepError: self._chatkeep_error,
            RequestValidationError: self._validation_error,
            HTTPException: self._http_error,
        }
        self.errors = tuple(self._handlers)  # the errors a response is rendered for; anything else is a 500

    def install(self, app: FastAPI) -> None:
        for kind, handler in self._handlers.items():
            app.add_exception_handler(kind, handler)
        app.add_exception_handler(Exception, self._unexpected_error)

    async def render(self, request: Request, error: Exception) -> Response:
        """The response for one of `errors`, for code that runs outside the app's handlers."""
        handler = next(self._handlers[kind] for kind in type(error).__mro__ if kind in self._handlers)
        return await handler(request, error)

    def _shape(self, request: Request) -> ErrorShape:
        path = request.url.path
        return next((shape for prefix, shape in self._shapes.items() if path.startswith(prefix)), self._native)

    async def _chatkeep_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ChatkeepError)
        headers = retry_after_header(exc.retry_after)
        if isinstance(exc, UnauthorizedError):
            headers = {"WWW-Authenticate": 'Bearer realm="chatkeep"'}
        elif exc.status == 429 and exc.retry_after is None:
            headers = NOT_BY_WAITING  # a quota: OpenAI's SDKs would retry a 429 otherwise
        return self._shape(request).chatkeep_error(exc, headers)

    async def _validation_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [str(part) if not isinstance(part, int) else part for part in e["loc"]],
                "msg": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else None
        detail = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else "the request is invalid"
        return self._shape(request).invalid(detail, errors)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI answers 400 when the JSON parser itself gives up (bytes that are not UTF-8,
            # nesting too deep, an integer too long); like any other invalid body, that is a 422.
            return self._shape(request).unparsable(
                f"the body could not be parsed as JSON: {type(exc.__cause__).__name__}"
            )
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return self._shape(request).http_error(request, exc.status_code, exc.detail, headers)

    async def _unexpected_error(self, request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return self._shape(request).unexpected()


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API serves at this path (Starlette's 405 names only the first route's). A
    path that is a route of its own (`/v1/responses/input_tokens`) is that route's alone, as the
    routes with parameters that would take it (`/v1/responses/{response_id}`) refuse it."""
    paths = request.app.openapi()["paths"]
    matching = [template for template in paths if compile_path(template)[0].match(request.url.path)]
    exact = [template for template in matching if "{" not in template]
    return sorted({method.upper() for template in exact or matching for method in paths[template]})


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
