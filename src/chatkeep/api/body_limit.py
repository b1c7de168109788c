"""Refuse request bodies over a size limit with a 413 problem, before the app reads them.

A pure ASGI middleware (no `BaseHTTPMiddleware`, which would buffer streamed responses). A body
announced too large by Content-Length is refused without reading it (one announced small cannot
grow: the server reads no more than announced); a chunked body is counted as it arrives and the
read fails with an HTTPException that the problem handlers render.
Starlette's own limiter answers such requests in plain text, hence this one.

The routes that take attachments (a message post or edit, a response, a conversation and its items) may
carry more: the base64 of CHATKEEP_MAX_REQUEST_ATTACHMENT_BYTES beyond the limit of every other.
An import (POST /import, a whole export file) has its own limit, CHATKEEP_MAX_IMPORT_BYTES.
"""

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatkeep.api.problems import http_problem

# POST routes whose body may carry images and files
ATTACHMENT_ROUTES = re.compile(r"/chats/[^/]+/messages(/[^/]+/edit)?|/v1/responses|/v1/conversations(/[^/]+/items)?")
IMPORT_ROUTE = "/import"


def with_attachments(max_bytes: int, attachment_bytes: int) -> int:
    """The body limit of a route that takes attachments: `max_bytes`, and `attachment_bytes` of them as base64."""
    return max_bytes + (attachment_bytes + 2) // 3 * 4


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        attachment_max_bytes: int | None = None,
        import_max_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.attachment_max_bytes = attachment_max_bytes or max_bytes  # on ATTACHMENT_ROUTES
        self.import_max_bytes = import_max_bytes or max_bytes  # on IMPORT_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None:
            # The HTTP server reads exactly the declared length, so that is all there is to check.
            if declared > limit:
                await self._too_large(limit)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, _detail(limit))
            return message

        await self.app(scope, counting_receive, send)

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and ATTACHMENT_ROUTES.fullmatch(scope["path"]):
            return self.attachment_max_bytes
        if scope["method"] == "POST" and scope["path"] == IMPORT_ROUTE:
            return self.import_max_bytes
        return self.max_bytes

    def _too_large(self, limit: int) -> ASGIApp:
        return http_problem(413, _detail(limit), headers={"Connection": "close"})


def _detail(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
