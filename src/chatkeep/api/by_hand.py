"""The turn route's way in: served straight from the middleware stack, with readers of the body
and headers that give the same 422 problems FastAPI would.

The turn is the request a chat service answers most, so its path is kept short. Measured
in-process with 64 turns in flight, FastAPI's layers between the middleware stack and an
endpoint (the exception middleware, its exit stacks, the router, the route's request/response
wrappers) cost about 30 µs of CPU per turn, and Starlette's body and header readers another 8.
`RouteShortcut` skips those layers for the routes it is given; the routes stay in the app, which
documents them in OpenAPI and would serve them the same way without the shortcut.
"""

import re
from collections.abc import Iterable
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from chatkeep.api.problems import PROBLEM_ERRORS, render_problem

M = TypeVar("M", bound=BaseModel)


class RouteShortcut:
    """ASGI middleware that answers requests for `routes` itself, by calling their endpoints.

    Each endpoint must take `(request, **path_params)` and return a Response. The errors the
    problem handlers render (chatkeep's, validation, HTTP) are rendered here by the same code;
    anything else propagates to the server-error middleware outside, as it would from a route.
    Sitting inside the body-limit middleware, the shortcut's requests are limited too.
    """

    def __init__(self, app: ASGIApp, *, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, APIRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route  # as Starlette's router sets it: access log and metrics read it
                    scope.update(child_scope)
                    await self._serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **scope["path_params"])
        except PROBLEM_ERRORS as error:
            response = await render_problem(request, error)
        await response(scope, receive, send)


async def read_body(request: Request) -> bytes:
    """The whole body, read straight from `receive` (Starlette's `Request.body()` runs an async
    generator for it). Raises ClientDisconnect, as Starlette does, when the client goes away."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def headers_of(request: Request) -> dict[str, str]:
    """The headers by lower-case name (the first of a repeated one), read in one pass: each
    `Request.headers.get` scans them all again."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(request.scope["headers"])}


def json_body(model: type[M], content_type: str | None, raw: bytes) -> M:
    """`raw` validated as `model`. Raises RequestValidationError (422) for anything else."""
    media_type = (content_type or "application/json").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise RequestValidationError([_issue(("body",), "the body must be JSON (application/json)", "json_type")])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [_issue(("body", *e["loc"]), e["msg"], e["type"]) for e in exc.errors(include_url=False)]
        ) from None


def header(headers: dict[str, str], name: str, *, max_length: int, pattern: re.Pattern[str]) -> str | None:
    """The header `name`, if sent; raises RequestValidationError when too long or off `pattern`."""
    value = headers.get(name.lower())
    if value is None:
        return None
    if not 1 <= len(value) <= max_length or not pattern.fullmatch(value):
        message = f"must be 1 to {max_length} characters matching {pattern.pattern}"
        raise RequestValidationError([_issue(("header", name), message, "string_pattern_mismatch")])
    return value


def _issue(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}
