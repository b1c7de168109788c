"""Errors on /v1 in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so that
OpenAI's SDKs raise their own exception classes (and retry what they retry: 429 and 5xx).

The problem handlers (problems.py) render every error of a /v1 path here. OpenAI answers no
422: an invalid request is a 400 there.
"""

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

PREFIX = "/v1/"

# OpenAI's error types by status
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def is_openai_path(request: Request) -> bool:
    return request.url.path.startswith(PREFIX)


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
