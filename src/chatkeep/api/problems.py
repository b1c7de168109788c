"""RFC 9457 problem details for every error the API returns.

One set of handlers: chatkeep's own errors carry their status, title and slug; validation
errors become 422 with an `errors` list; plain HTTP errors (404 route, 405, 413) keep their
status with `about:blank`; anything unexpected is a bare 500 whose traceback is only logged.
Every problem names the request it answers (`request_id`), the id its log lines carry. Errors
of OpenAI's API under /v1 are written in OpenAI's shape instead (api/v1/errors.py).
"""

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from chatkeep.errors import ChatkeepError, Failure, InvalidInputError, UnauthorizedError
from chatkeep.openai_compat.errors import error_code, is_openai_path, openai_error
from chatkeep.request_context import current_request_id

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "urn:chatkeep:problem:"
MEDIA_TYPE = "application/problem+json"
VALIDATION_SLUG = "invalid-request"


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


async def chatkeep_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatkeepError)
    headers = retry_after_header(exc.retry_after)
    if isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": 'Bearer realm="chatkeep"'}
    if is_openai_path(request):
        param = exc.param if isinstance(exc, InvalidInputError) else None
        return openai_error(exc.status, exc.detail, param=param, code=error_code(exc.slug), headers=headers)
    return Response(orjson.dumps(problem_body(exc)), status_code=exc.status, media_type=MEDIA_TYPE, headers=headers)


async def validation_error(request: Request, exc: Exception) -> Response:
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
    if is_openai_path(request):
        param = ".".join(map(str, first["loc"][1:])) if first else None
        code = "missing_required_parameter" if first and first["type"] == "missing" else "invalid_value"
        return openai_error(400, detail, param=param or None, code=code)
    return problem(422, "Invalid request", detail, slug=VALIDATION_SLUG, errors=errors)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI answers 400 when the JSON parser itself gives up (bytes that are not UTF-8,
        # nesting too deep, an integer too long); like any other invalid body, that is a 422.
        reason = f"the body could not be parsed as JSON: {type(exc.__cause__).__name__}"
        if is_openai_path(request):
            return openai_error(400, reason, code="invalid_json")
        return problem(422, "Invalid request", reason, slug=VALIDATION_SLUG, errors=[_body_issue(reason)])
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {"Allow": ", ".join(_allowed_methods(request))}
    if is_openai_path(request):
        message = f"Invalid URL ({request.method} {request.url.path})" if exc.status_code in (404, 405) else exc.detail
        return openai_error(exc.status_code, message, headers=headers)
    return http_problem(exc.status_code, exc.detail, headers=headers)


def http_problem(status: int, detail: str | None, *, headers: dict[str, str] | None = None) -> Response:
    """A plain HTTP error (`about:blank`), titled with the status's reason phrase."""
    title = _reason(status)
    return problem(status, title, detail if detail and detail != title else None, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    if is_openai_path(request):
        return openai_error(500, "The server had an error while processing your request.")
    return problem(500, "Internal Server Error", None)


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    ChatkeepError: chatkeep_error,
    RequestValidationError: validation_error,
    HTTPException: http_error,
}
# The errors a response is rendered for; anything else is unexpected (a 500).
PROBLEM_ERRORS = tuple(_HANDLERS)


def install_problem_handlers(app: FastAPI) -> None:
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, unexpected_error)


async def render_problem(request: Request, error: Exception) -> Response:
    """The problem response for one of PROBLEM_ERRORS, for code that runs outside the app's handlers."""
    handler = next(_HANDLERS[kind] for kind in type(error).__mro__ if kind in _HANDLERS)
    return await handler(request, error)


def _body_issue(message: str) -> dict[str, Any]:
    return {"loc": ["body"], "msg": message, "type": "json_invalid"}


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API serves at this path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
