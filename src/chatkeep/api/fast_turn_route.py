"""The turn route's fast way in, and all of its hand-written parsing.

The turn is the request a chat service answers most, so its path is kept short: FastAPI's layers
between the middleware stack and an endpoint (the exception middleware, its exit stacks, the
router, the route's request/response wrappers) and Starlette's body and header readers cost a
measurable share of a turn (docs/performance.md). `RouteShortcut` skips those layers for the
routes it is given; the routes stay in the app, which documents them in OpenAPI and serves them
the same way without the shortcut (a parity test sends the same requests both ways).
`read_json_request` reads what FastAPI's parameter machinery would (owner, body,
Idempotency-Key) and refuses what it would, with the same 422 problems (and a body not sent as
JSON with a 415, as `SiteGuard` refuses it before any route); `shortcut_openapi`
documents by hand what it reads. OpenAI's `POST /v1/responses` takes the same way in.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from chatkeep.api import sse
from chatkeep.api.deps import owner_of
from chatkeep.api.problems import ProblemHandlers
from chatkeep.api.schemas import MessageCreate
from chatkeep.api.security import NOT_JSON, is_json
from chatkeep.idempotency import IDEMPOTENCY_KEY_HELP, KEY_PATTERN, MAX_KEY_CHARS

M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": IDEMPOTENCY_KEY_HELP,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": KEY_PATTERN.pattern},
}


def shortcut_openapi(body: type[BaseModel]) -> dict[str, Any]:
    """What `read_json_request` reads, for the OpenAPI document (FastAPI sees only `request`)."""
    schema = body.model_json_schema()
    schema = _inlined(schema, schema.pop("$defs", {}))
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        "security": [{"HTTPBearer": []}],
    }


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """`schema` with its local `$defs` references replaced by what they name: the document has no `$defs`."""
    if isinstance(schema, list):
        return [_inlined(part, definitions) for part in schema]
    if not isinstance(schema, dict):
        return schema
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        return _inlined(definitions[reference.removeprefix("#/$defs/")], definitions)
    return {name: _inlined(part, definitions) for name, part in schema.items()}


TURN_OPENAPI = shortcut_openapi(MessageCreate)


@dataclass(slots=True, frozen=True)
class JsonRequest(Generic[M]):
    owner: str
    body: M
    idempotency_key: str | None
    headers: dict[str, str]


async def read_json_request(request: Request, model: type[M]) -> JsonRequest[M]:
    """The owner, body and key of a request. Raises UnauthorizedError, or RequestValidationError (422)."""
    headers = headers_of(request)
    owner = owner_of(request, headers.get("authorization"))
    body = json_body(model, headers.get("content-type"), await read_body(request))
    key = header(headers, "Idempotency-Key", max_length=MAX_KEY_CHARS, pattern=KEY_PATTERN)
    return JsonRequest(owner, body, key, headers)


@dataclass(slots=True, frozen=True)
class MessagePost:
    owner: str
    body: MessageCreate
    idempotency_key: str | None
    streamed: bool  # `"stream": true`, or `Accept: text/event-stream`


async def read_message_post(request: Request, *, max_chars: int) -> MessagePost:
    """The owner, body and key of a message post. Raises UnauthorizedError, or RequestValidationError (422)."""
    read = await read_json_request(request, MessageCreate)
    body = read.body
    if len(body.content) > max_chars:
        too_long = {"loc": ("body", "content"), "msg": f"String should have at most {max_chars} characters"}
        raise RequestValidationError([too_long | {"type": "string_too_long"}])
    streamed = body.stream or sse.MEDIA_TYPE in read.headers.get("accept", "")
    return MessagePost(read.owner, body, read.idempotency_key, streamed)


class RouteShortcut:
    """ASGI middleware that answers requests for `routes` itself, by calling their endpoints.

    Each endpoint must take `(request, **path_params)` and return a Response. The errors the
    problem handlers render (chatkeep's, validation, HTTP) are rendered here by the same handlers;
    anything else propagates to the server-error middleware outside, as it would from a route.
    Sitting inside the body-limit middleware, the shortcut's requests are limited too.
    """

    def __init__(self, app: ASGIApp, *, routes: Iterable[BaseRoute], problems: ProblemHandlers) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, APIRoute)]
        self.problems = problems

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
        except self.problems.errors as error:
            response = await self.problems.render(request, error)
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
    """`raw` validated as `model`. Raises HTTPException (415) for a body not sent as JSON (`SiteGuard`
    refuses it first: this holds wherever the route is served), RequestValidationError (422) for
    anything else."""
    if raw and (content_type is None or not is_json(content_type.encode("latin-1"))):
        raise HTTPException(415, NOT_JSON)
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
