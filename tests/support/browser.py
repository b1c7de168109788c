"""Debian's Chromium driven by Playwright: for the chat page's tests and its screenshot.

No browser is ever downloaded: Playwright drives `/usr/bin/chromium`, headless, in a fresh
temporary profile that it makes for each launch, with the flags that keep Chromium from calling
hosts it cannot reach (these machines have no outside network). `PageLog` keeps what a page
reported as an error, so a test can assert its page had none; `hold_close_event` lets a test
choose when a dialog's close event comes, which Chromium leaves to its next frame.
"""

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The models the `models_api` fixture's chatkeep serves: its default, then one more.
DEFAULT_MODEL, BIG_MODEL = "fake-model", "big-model"
# How Chromium's console reports a request that failed (an HTTP error status, or no answer).
FAILED_REQUEST = re.compile(r"^Failed to load resource: (?:the server responded with a status of (\d+)|net::(\w+))")
# Stops the dialog's own close event before it reaches the dialog, and keeps one to send it later.
HOLD_CLOSE_EVENT = """(id) => {
    document.addEventListener("close", (event) => {
        if (event.target.id !== id || !event.isTrusted) return;
        event.stopImmediatePropagation();
        window.releaseCloseEvent = () => event.target.dispatchEvent(new Event("close"));
    }, true);
}"""


@asynccontextmanager
async def open_chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


async def hold_close_event(page: Page, dialog_id: str) -> Callable[[], Awaitable[None]]:
    """Hold back the close event of the dialog `dialog_id` until the function answered is awaited.

    Chromium hides a closed dialog at once but fires its close event at the next frame, which a
    loaded machine delays by tens of milliseconds and more: long enough for a click, or a test's
    typing, to come first. Holding the event makes that order happen every time."""
    await page.evaluate(HOLD_CLOSE_EVENT, dialog_id)

    async def release() -> None:
        await page.evaluate("window.releaseCloseEvent()")

    return release


class PageLog:
    """The errors a page reported: console errors and uncaught exceptions.

    Chromium logs every request that failed as a console error of its own; a test that provokes
    such failures names the statuses (or `net::` codes) it expects, and only those are let pass.
    """

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.expected: set[str] = set()
        self.expected_messages: set[str] = set()
        page.on("console", self._console)
        page.on("pageerror", self._page_error)

    def expect_failed_requests(self, *reasons: str) -> None:
        """Let pass Chromium's reports of failed requests with these statuses or net:: codes."""
        self.expected.update(reasons)

    def expect_message(self, message: str) -> None:
        """Let pass this exact console error (one the test provokes on purpose)."""
        self.expected_messages.add(message)

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not self._expected(error)]

    def _expected(self, error: str) -> bool:
        if error in self.expected_messages:
            return True
        failed = FAILED_REQUEST.match(error)
        return failed is not None and (failed.group(1) or failed.group(2)) in self.expected

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}")
