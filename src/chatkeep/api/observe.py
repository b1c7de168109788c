"""The outermost layer of every request: its id, its access log line and its HTTP metrics.

It wraps the whole app, the server-error layer included, so that every answer (a 413 from the
body limit, a 500) carries `X-Request-ID` and is counted. A client's `X-Request-ID` is kept when
it is sane (1 to 128 characters of letters, digits and `._:/+=@-`), so a trace can cross
systems; otherwise one is made. The id is the current request's for everything below (log
lines, problem bodies, the call upstream) through `request_context`.

Pure ASGI, so streamed responses pass through untouched; a stream's line is written, and its
time counted, when it ends.
"""

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatkeep.metrics import Metrics
from chatkeep.request_context import RequestContext, enter_request, leave_request

access_log = logging.getLogger("chatkeep.access")

REQUEST_ID_HEADER = b"x-request-id"
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
UNMATCHED_ROUTE = "unmatched"
NO_RESPONSE = 499  # the client went away before an answer started (nginx's convention)


class Observe:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        status = NO_RESPONSE
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        context = RequestContext(request_id)
        token = enter_request(context)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route(scope)
            self.metrics.http_request(scope["method"], route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope["method"], route, status, seconds, context.owner)
            leave_request(token)


def _log_access(method: str, route: str, status: int, seconds: float, owner: str | None) -> None:
    milliseconds = seconds * 1000
    details = {"method": method, "route": route, "status": status, "owner": owner}
    details["duration_ms"] = round(milliseconds, 3)
    access_log.info("%s %s %d %.1fms owner=%s", method, route, status, milliseconds, owner or "-", extra=details)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if SANE_REQUEST_ID.fullmatch(value):
                return bytes(value).decode()
            break
    return os.urandom(16).hex()


def _route(scope: Scope) -> str:
    """The template of the route that answered: bounded, whatever path the client sent."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE
