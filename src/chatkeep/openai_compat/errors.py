"""Errors on /v1 in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so that
OpenAI's SDKs raise their own exception classes (and retry what they retry: 429 and 5xx).

The app's problem handlers decide what went wrong; this shape writes it for every path under
/v1. OpenAI answers no 422: an invalid request is a 400 there.
"""

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from chatkeep.api.problems import Issue
from chatkeep.errors import ChatkeepError, InvalidInputError

PREFIX = "/v1/"

# OpenAI's error types by status
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


class OpenAIErrors:
    """An `ErrorShape` (api/problems.py) for OpenAI's API."""

    def chatkeep_error(self, error: ChatkeepError, headers: dict[str, str] | None) -> Response:
        param = error.param if isinstance(error, InvalidInputError) else None
        return openai_error(error.status, error.detail, param=param, code=error_code(error.slug), headers=headers)

    def invalid(self, detail: str, errors: list[Issue]) -> Response:
        first = errors[0] if errors else None
        param = ".".join(map(str, first["loc"][1:])) if first else None
        code = "missing_required_parameter" if first and first["type"] == "missing" else "invalid_value"
        return openai_error(400, detail, param=param or None, code=code)

    def unparsable(self, reason: str) -> Response:
        return openai_error(400, reason, code="invalid_json")

    def http_error(self, request: Request, status: int, detail: str | None, headers: dict[str, str] | None) -> Response:
        message = f"Invalid URL ({request.method} {request.url.path})" if status in (404, 405) else detail or ""
        return openai_error(status, message, headers=headers)

    def unexpected(self) -> Response:
        return openai_error(500, "The server had an error while processing your request.")


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    status = 400 if status == 422 else status
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_code(slug: str) -> str:
    """chatkeep's problem slug as an error code in OpenAI's style (`chat-busy` → `chat_busy`)."""
    return slug.replace("-", "_")
