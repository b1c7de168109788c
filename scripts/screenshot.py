"""`python -m scripts.screenshot PATH`: the chat page as a newcomer first sees it, as a PNG.

chatkeep runs in this process as `make run` serves it without a key (the offline provider, the
memory store) on 127.0.0.1, port 0. Debian's Chromium, driven as the browser tests drive it,
opens the page at a desktop size, asks about Rome, follows up, waits for both replies, has the
last one regenerated (so it shows `< 2/2 >` between its two versions), searches the chats for a
word and takes the picture, the search's results beside the chat; nothing is downloaded.
"""

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from playwright.async_api import ViewportSize, expect
from tests.support.browser import open_chromium

from chatkeep.config import Settings
from chatkeep.server.app import create_app

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
QUESTIONS = (
    "What should I see in Rome in three days?",
    "And where should we eat near the Pantheon?",
)
REPLY_SECONDS = 10
SEARCH = "Pantheon"


@asynccontextmanager
async def serving_chatkeep() -> AsyncIterator[str]:
    """chatkeep, offline and in memory whatever the environment says, at the URL yielded."""
    settings = Settings(llm_provider="offline", store="memory://", api_keys=None, access_log=False)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        await task


async def screenshot(path: Path) -> None:
    async with serving_chatkeep() as url, open_chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT, color_scheme="light")
        await page.goto(url)
        box = page.get_by_label("Message", exact=True)
        for answered, question in enumerate(QUESTIONS, start=1):
            await box.fill(question)
            await box.press("Enter")
            replies = page.locator('.message-assistant[data-status="completed"]')
            await expect(replies).to_have_count(answered, timeout=REPLY_SECONDS * 1000)
        await replies.last.get_by_role("button", name="Regenerate this reply").click()
        await expect(replies.last.locator(".siblings-count")).to_have_text("2/2", timeout=REPLY_SECONDS * 1000)
        await page.get_by_label("Search your chats").fill(SEARCH)
        await expect(page.get_by_role("list", name="Messages found").get_by_role("link").first).to_be_visible()
        await page.get_by_label("Search your chats").blur()
        await page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover highlight in the picture
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="where to write the PNG, e.g. docs/chat-page.png")
    asyncio.run(screenshot(parser.parse_args().path))


if __name__ == "__main__":
    main()
