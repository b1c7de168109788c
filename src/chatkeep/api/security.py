"""What keeps other websites out: the Host check, JSON bodies only, and the headers every answer carries.

`SiteGuard` is pure ASGI and sits just inside `Observe`, outside everything else, the server-error
layer and the turn's shortcut included, so that nothing of the app runs for a request it refuses
and every answer, a 500 too, carries the headers:

- The `Host` a request names must be one of the allowed hosts (`allowed_hosts`), else 400: a web
  page whose host name an attacker points at this server (DNS rebinding) would otherwise be of
  this origin and read every chat. /healthz and /readyz answer any host (load balancers and
  probes send their own), which tells a page nothing.
- A request with a body must say it is JSON (`application/json` or `application/*+json`), else
  415, whatever the route: a page of another origin can post a body without asking first (a form,
  `fetch` with `mode: "no-cors"`) only as text/plain, a form or no type at all, and the browser
  asks first (CORS preflight, which chatkeep does not grant) before it sends JSON.
  The one exception: POST /import takes JSON Lines (`application/x-ndjson`, `application/jsonl`),
  types a page of another origin cannot send without asking first either.
- Every answer says it may be framed by no page (`X-Frame-Options`, `frame-ancestors`), must not
  be sniffed into another type, and sends no Referer on. An answer without a
  Content-Security-Policy of its own (the chat page and the docs pages have theirs) gets one that
  allows nothing.

Refusals are problems in the shape of the path (OpenAI's under /v1), rendered by the app's problem
handlers. On the way of an accepted request, the guard costs one pass over its headers and one
list of headers appended to the answer's start.
"""

import ipaddress

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatkeep.api.problems import ProblemHandlers
from chatkeep.config import Settings

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
ANY_HOST_PATHS = frozenset({"/healthz", "/readyz"})

# The chat page's own policy: its script, styles and icon from this origin, its requests to it,
# no inline code, no form sent anywhere, no frame around it, and DOM sinks closed to strings.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
# Any other answer's (JSON, events, the page's files): nothing may load, nothing may frame it.
DEFAULT_POLICY = b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
POLICY_HEADER = b"content-security-policy"
SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
WITH_DEFAULT_POLICY = (*SECURITY_HEADERS, (POLICY_HEADER, DEFAULT_POLICY))
UNKNOWN_HOST = "the Host header names a host this server does not answer to (CHATKEEP_ALLOWED_HOSTS lists them)"
NOT_JSON = "the request body must be JSON, sent with Content-Type: application/json"
IMPORT_PATH = "/import"
JSON_LINES = frozenset({b"application/x-ndjson", b"application/jsonl"})


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names (lower case, IPv6 addresses in brackets, `name:port` for one port only)
    requests may name, or None for any: `allowed_hosts` if set, else any host when API keys are
    configured (a page cannot send a key it does not know), else the loopback names."""
    if settings.allowed_hosts is not None:
        return parse_hosts(settings.allowed_hosts)
    return None if settings.api_keys else LOOPBACK_HOSTS


def parse_hosts(value: str) -> frozenset[str] | None:
    """A comma-separated list of hosts, or None when it holds `*` (any host)."""
    hosts = {_normalized(entry) for entry in value.split(",") if entry.strip()}
    return None if "*" in hosts else frozenset(hosts)


def _normalized(entry: str) -> str:
    entry = entry.strip().lower()
    try:
        if ipaddress.ip_address(entry).version == 6:
            return f"[{entry}]"  # as a Host header writes it
    except ValueError:
        pass
    return entry


def _host_allowed(value: bytes | None, hosts: frozenset[str]) -> bool:
    """Whether a Host header's value names one of `hosts`: by name with any port, or by `name:port`."""
    if value is None:
        return False
    host = value.decode("latin-1").strip().lower()
    name, colon, port = host.rpartition(":")
    if not colon or not port.isdigit() or (name.startswith("[") != name.endswith("]")):
        name = host  # no port (`[::1]`, `localhost`), or the colons of a bare IPv6 address
    return name in hosts or host in hosts


def is_json_lines(content_type: bytes) -> bool:
    """Whether a Content-Type is JSON Lines, as POST /import takes them (not CORS-safelisted either)."""
    return content_type.partition(b";")[0].strip().lower() in JSON_LINES


def is_json(content_type: bytes) -> bool:
    """Whether a Content-Type is JSON: `application/json` or `application/*+json`, any parameters."""
    media_type = content_type.partition(b";")[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def _body_type_allowed(path: str, content_type: bytes | None) -> bool:
    """JSON on every route; JSON Lines on the import's too."""
    if content_type is None:
        return False
    return is_json(content_type) or (path == IMPORT_PATH and is_json_lines(content_type))


class SiteGuard:
    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, problems: ProblemHandlers) -> None:
        self.app = app
        self.hosts = hosts  # None: any
        self.problems = problems

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                added = SECURITY_HEADERS if any(name == POLICY_HEADER for name, _ in headers) else WITH_DEFAULT_POLICY
                message["headers"] = [*headers, *added]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send_guarded)
            return
        # rendered without the Host header: one that is no URL's host would fail the request's URL
        unhosted = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"host"]}
        response = await self.problems.render(Request(unhosted, receive), refusal)
        await response(scope, receive, send_guarded)

    def _refusal(self, scope: Scope) -> HTTPException | None:
        """Why the request is refused, if it is: the headers read in one pass."""
        host = content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = has_body or value.strip().lstrip(b"0") != b""
            elif name == b"transfer-encoding":
                has_body = True
        if self.hosts is not None and scope["path"] not in ANY_HOST_PATHS and not _host_allowed(host, self.hosts):
            return HTTPException(400, UNKNOWN_HOST)
        if has_body and not _body_type_allowed(scope["path"], content_type):
            return HTTPException(415, NOT_JSON)
        return None
