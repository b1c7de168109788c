"""/docs (Swagger UI) and /redoc (ReDoc) in a real browser that may reach chatkeep and nothing else.

Every request that reaches the browser's network layer for another origin is recorded and
aborted, so a page that would load its script, style, fonts or icon from a CDN both fails to
render and names what it asked for. ReDoc's own code still asks for Redocly's logo from
cdn.redoc.ly; the pages' Content-Security-Policy refuses that inside the browser, before any
request is made, and the tests hold every such request to that: refused, never sent.
"""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Request, Route, expect

from chatkeep.config import Settings
from tests.support.app import serve
from tests.support.browser import PageLog

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "alice-key-0123456789abcdef"
HTTP_URL = re.compile(r"""(?:https?:)?//[^\s"'<>()]+""")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api() -> AsyncIterator[httpx.AsyncClient]:
    """chatkeep with API keys, so that its OpenAPI declares the bearer scheme Swagger UI offers."""
    async with serve(Settings(llm_provider="offline", api_keys=f"alice={API_KEY}")) as client:
        yield client


@dataclass
class Offline:
    """A page that reaches only chatkeep's origin.

    `sent` holds the URLs of other origins whose requests reached the network layer (and were
    aborted there); `refused` those the page's Content-Security-Policy stopped before any request.
    """

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def ours(self, url: str) -> bool:
        return url == self.origin or url.startswith(self.origin + "/")

    async def route(self, route: Route) -> None:
        if self.ours(route.request.url):
            await route.continue_()
        else:
            self.sent.append(route.request.url)
            await route.abort("blockedbyclient")

    def request(self, request: Request) -> None:
        self.requests.append(request.url)

    def failed(self, request: Request) -> None:
        if not self.ours(request.url) and request.failure == "csp":
            self.refused.append(request.url)

    def elsewhere(self) -> list[str]:
        """Requests for another origin that were not refused by the page's policy."""
        return [url for url in self.requests if not self.ours(url) and url not in self.refused]

    def refusal(self, error: str) -> bool:
        """Whether a console error is Chromium's report of one of the page's policy refusals."""
        return any(f"'{url}' violates the following Content Security Policy" in error for url in self.refused)


@asynccontextmanager
async def offline(browser: Browser, api: httpx.AsyncClient) -> AsyncIterator[Offline]:
    """A fresh context whose page may reach chatkeep only; at the end, it sent nothing to any
    other origin and reported no errors but its policy's refusals."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        tab = Offline(page, str(api.base_url).rstrip("/"))
        await context.route("**/*", tab.route)
        page.on("request", tab.request)
        page.on("requestfailed", tab.failed)
        log = PageLog(page)
        yield tab
        await page.wait_for_load_state("networkidle")
    finally:
        await context.close()
    assert tab.sent == []
    assert tab.elsewhere() == []
    assert [error for error in log.unexpected() if not tab.refusal(error)] == []


def foreign_urls(html: str, origin: str) -> list[str]:
    """The http(s) URLs in a page that point anywhere but `origin`."""
    return [url for url in HTTP_URL.findall(html) if not (url + "/").startswith(origin + "/")]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_the_docs_pages_name_no_other_host(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 200
    assert foreign_urls(response.text, str(api.base_url).rstrip("/")) == []


async def test_swagger_ui_renders_with_no_outside_network(browser: Browser, api: httpx.AsyncClient) -> None:
    async with offline(browser, api) as tab:
        await tab.page.goto(f"{tab.origin}/docs")
        assert tab.sent == []

        await expect(tab.page.locator(".swagger-ui .info .title")).to_contain_text("chatkeep")
        create_chat = tab.page.locator(".opblock-post").filter(has=tab.page.locator('[data-path="/chats"]'))
        await expect(create_chat).to_be_visible()
        await expect(create_chat.locator(".opblock-summary-method")).to_have_text("POST")
        icon = await tab.page.locator("link[rel~='icon']").get_attribute("href")
        assert icon == "/web/icon.svg"
        assert set(tab.requests) >= {
            f"{tab.origin}/docs",
            f"{tab.origin}/openapi.json",
        }


async def test_redoc_renders_with_no_outside_network(browser: Browser, api: httpx.AsyncClient) -> None:
    async with offline(browser, api) as tab:
        await tab.page.goto(f"{tab.origin}/redoc")
        assert tab.sent == []

        await expect(tab.page.get_by_role("heading", level=1)).to_contain_text("chatkeep")
        await expect(tab.page.get_by_text("Chat sessions in front of any OpenAI-compatible LLM.")).to_be_visible()
        icon = await tab.page.locator("link[rel~='icon']").get_attribute("href")
        assert icon == "/web/icon.svg"


async def test_swagger_uis_authorize_dialog_sends_the_api_key(browser: Browser, api: httpx.AsyncClient) -> None:
    async with offline(browser, api) as tab:
        await tab.page.goto(f"{tab.origin}/docs")
        await tab.page.get_by_role("button", name="Authorize").first.click()
        dialog = tab.page.locator(".dialog-ux .modal-ux")
        await expect(dialog).to_contain_text("HTTPBearer")
        await dialog.get_by_role("textbox").fill(API_KEY)  # its label is its id: auth-bearer-value
        await dialog.get_by_role("button", name="Apply credentials").click()
        await dialog.get_by_role("button", name="Close", exact=True).click()

        list_chats = tab.page.locator(".opblock-get").filter(has=tab.page.locator('[data-path="/chats"]'))
        await list_chats.locator(".opblock-summary-control").click()
        await list_chats.get_by_role("button", name="Try it out").click()
        async with tab.page.expect_request(lambda request: request.url.startswith(f"{tab.origin}/chats")) as sent:
            await list_chats.get_by_role("button", name="Execute").click()
        request = await sent.value
        assert await request.header_value("authorization") == f"Bearer {API_KEY}"
        await expect(list_chats.locator(".live-responses-table .response .response-col_status")).to_have_text("200")
