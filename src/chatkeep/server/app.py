"""`create_app(settings)`: builds the store, the LLM client and the service, and wires the API.

The lifespan owns every resource (store, HTTP session, background refreshes) and hands the
service to requests through typed lifespan state; nothing is created at import time. The
`Observe` layer (request ids, access log, HTTP metrics) wraps the whole middleware stack, the
server-error layer included, so every answer is identified and counted; just inside it,
`SiteGuard` refuses other hosts and bodies that are not JSON and adds the security headers to
every answer (api/security.py).
"""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import ASGIApp

from chatkeep import __version__
from chatkeep.api import transfer
from chatkeep.api.body_limit import BodyLimitMiddleware, with_attachments
from chatkeep.api.docs import serve_docs
from chatkeep.api.fast_turn_route import RouteShortcut
from chatkeep.api.observe import Observe
from chatkeep.api.problems import ProblemHandlers
from chatkeep.api.routes import metrics_router, operations, router, turns
from chatkeep.api.security import PAGE_POLICY, SiteGuard, allowed_hosts
from chatkeep.api_keys import ApiKeys
from chatkeep.config import Settings
from chatkeep.llm import open_llm
from chatkeep.metrics import Metrics, NoMetrics, PrometheusMetrics
from chatkeep.openai_compat import routes as openai
from chatkeep.openai_compat.conversations import Conversations
from chatkeep.openai_compat.errors import PREFIX as OPENAI_PREFIX
from chatkeep.openai_compat.errors import OpenAIErrors
from chatkeep.openai_compat.responses import Responses
from chatkeep.rate_limit import open_rate_limit
from chatkeep.server.shutdown import winding_down_on_exit
from chatkeep.service import ChatService
from chatkeep.store import open_store

MAX_BODY_BYTES = 1024 * 1024
WEB = Path(__file__).parent.parent / "web"  # the chat page at /, its files at /web/... (src/chatkeep/web)
PAGE_HEADERS = {"Cache-Control": "no-cache"}


class State(TypedDict):
    service: ChatService
    conversations: Conversations
    responses: Responses
    api_keys: ApiKeys | None
    metrics: Metrics


class ChatkeepAPI(FastAPI):
    """FastAPI with `Observe`, then `SiteGuard`, outside its whole middleware stack."""

    def __init__(
        self, *, metrics: Metrics, hosts: frozenset[str] | None, problems: ProblemHandlers, **options: Any
    ) -> None:
        super().__init__(**options)
        self.metrics = metrics
        self.hosts = hosts
        self.problems = problems

    def build_middleware_stack(self) -> ASGIApp:
        guarded = SiteGuard(super().build_middleware_stack(), hosts=self.hosts, problems=self.problems)
        return Observe(guarded, metrics=self.metrics)


class PageFiles(StaticFiles):
    """The chat page's files, revalidated on every load (as the page itself is), so that a
    browser never runs the modules of an older chatkeep with a newer page."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


GC_THRESHOLDS = (5_000, 10, 100)


def _tune_garbage_collector() -> None:
    """Collect in small steps, rarely in full, and never walk what startup built again: a
    collection pauses every request for as long as it walks, and streamed replies keep an event
    per chunk alive, so large young and middle generations make long pauses (docs/performance.md).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    api_keys = ApiKeys(settings.api_keys.get_secret_value()) if settings.api_keys else None
    metrics: Metrics = PrometheusMetrics(settings.metrics_dir) if settings.metrics else NoMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with (
            open_store(settings.store, lease_seconds=settings.turn_lease, blob_dir=settings.blob_dir) as store,
            open_llm(settings, metrics) as llm,
            open_rate_limit(settings.rate_limit, store=store, redis_url=settings.redis_url) as rate_limit,
        ):
            service = ChatService(store, llm, settings, metrics, rate_limit=rate_limit)
            _tune_garbage_collector()
            metrics.start()
            try:
                with winding_down_on_exit(service.running.aclose, settings.shutdown_grace):
                    yield {
                        "service": service,
                        "conversations": Conversations(service),
                        "responses": Responses(service),
                        "api_keys": api_keys,
                        "metrics": metrics,
                    }
            finally:
                await service.aclose()
                await metrics.aclose()

    problems = ProblemHandlers({OPENAI_PREFIX: OpenAIErrors()})  # /v1 errors in OpenAI's shape
    app = ChatkeepAPI(
        metrics=metrics,
        hosts=allowed_hosts(settings),
        problems=problems,
        title="chatkeep",
        version=__version__,
        summary="Chat sessions in front of any OpenAI-compatible LLM.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are chatkeep's own, with no outside host (serve_docs below)
        redoc_url=None,
        # FastAPI's native OpenTelemetry asks the global providers whether they are set on every
        # request; chatkeep exports no telemetry, so it is off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # the turn, native and OpenAI's, past FastAPI's inner layers
    app.add_middleware(RouteShortcut, routes=[*turns.routes, *openai.responses_turns.routes], problems=problems)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=MAX_BODY_BYTES,
        attachment_max_bytes=with_attachments(MAX_BODY_BYTES, settings.max_request_attachment_bytes),
        import_max_bytes=settings.max_import_bytes,
    )
    problems.install(app)
    app.include_router(turns)
    app.include_router(operations)
    if settings.metrics:
        app.include_router(metrics_router)
    app.include_router(router)
    app.include_router(transfer.router)
    app.include_router(openai.responses_turns)
    app.include_router(openai.router)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={**PAGE_HEADERS, "Content-Security-Policy": PAGE_POLICY})

    app.mount("/web", PageFiles(directory=WEB), name="web")
    serve_docs(app, favicon_url="/web/icon.svg")

    return app
