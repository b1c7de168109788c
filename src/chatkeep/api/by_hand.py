"""The turn route's way in: a route class that hands the request straight to its endpoint, and
readers of the body and headers that give the same 422 problems FastAPI would.

Only the turn route is built so: on the path every turn takes, FastAPI's per-request machinery
(dependencies, parameter fields, its exit stack) cost more than the turn's own work, about
70 µs of a 150 µs turn measured in-process with the offline LLM (80 µs without it). FastAPI
still documents the route: from its signature, its response models and `openapi_extra`.
"""

import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

M = TypeVar("M", bound=BaseModel)


class ByHandRoute(APIRoute):
    """Calls `endpoint(request, **path_params)` and nothing else: no dependencies, no validation."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle


def json_body(model: type[M], request: Request, raw: bytes) -> M:
    """`raw` validated as `model`. Raises RequestValidationError (422) for anything else."""
    content_type = request.headers.get("content-type", "application/json").partition(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise RequestValidationError([_issue(("body",), "the body must be JSON (application/json)", "json_type")])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [_issue(("body", *e["loc"]), e["msg"], e["type"]) for e in exc.errors(include_url=False)]
        ) from None


def header(request: Request, name: str, *, max_length: int, pattern: re.Pattern[str]) -> str | None:
    """The header `name`, if sent; raises RequestValidationError when too long or off `pattern`."""
    value = request.headers.get(name)
    if value is None:
        return None
    if not 1 <= len(value) <= max_length or not pattern.fullmatch(value):
        message = f"must be 1 to {max_length} characters matching {pattern.pattern}"
        raise RequestValidationError([_issue(("header", name), message, "string_pattern_mismatch")])
    return value


def _issue(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}
