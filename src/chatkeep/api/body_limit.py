"""Refuse request bodies over a size limit with a 413 problem, before the app reads them.

A pure ASGI middleware (no `BaseHTTPMiddleware`, which would buffer streamed responses). A body
announced too large by Content-Length is refused without reading it (one announced small cannot
grow: the server reads no more than announced); a chunked body is counted as it arrives and the
read fails with an HTTPException that the problem handlers render.
Starlette's own limiter answers such requests in plain text, hence this one.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatkeep.api.problems import http_problem


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            # The HTTP server reads exactly the declared length, so that is all there is to check.
            if declared > self.max_bytes:
                await self._too_large()(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> ASGIApp:
        return http_problem(413, self._detail(), headers={"Connection": "close"})

    def _detail(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
