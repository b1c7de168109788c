"""The API's docs pages, Swagger UI at /docs and ReDoc at /redoc, served with no outside host.

FastAPI's own pages load floating versions of Swagger UI and ReDoc from a CDN (and ReDoc's fonts
from Google), so without internet they are blank, and with it they run third-party script on the
origin where the chat page keeps the user's API key. These pages load the copies that the
`fastapi-offline` package ships (pinned with it in the locks), served under `ASSETS_URL`, and
the chat page's own icon as their favicon; their Content-Security-Policy refuses what the
assets themselves would still fetch from elsewhere.
"""

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
ASSETS = Path(fastapi_offline.__file__).with_name("static")
# Anything from this origin (the pages' own inline script and styles included), nothing from any
# other: ReDoc's side menu shows Redocly's logo from cdn.redoc.ly, with no option to leave it out.
# No page of any origin may frame them.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self' 'unsafe-inline' data: blob:; base-uri 'none'; frame-ancestors 'none'"
}


def serve_docs(app: FastAPI, *, favicon_url: str) -> None:
    """Serve /docs (and its OAuth2 redirect page, as FastAPI does) and /redoc for `app`'s OpenAPI,
    on an app made with `docs_url=None, redoc_url=None`. `favicon_url` is a path on this server.
    """
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=root + favicon_url,
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers.update(DOCS_HEADERS)
        return page

    if oauth2_redirect_url:

        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=root + favicon_url,
            with_google_fonts=False,
        )
        page.headers.update(DOCS_HEADERS)
        return page


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under, as FastAPI's own docs pages take it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
