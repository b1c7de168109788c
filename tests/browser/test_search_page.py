"""The chat page's search, in a real browser: typed words find a message, drawn as text with its
matches marked, and choosing it opens its chat scrolled to it."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.browser import PageLog
from tests.support.chats import chat_with

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE = '<img src=x onerror="window.injected = true"> the <b>aqueduct</b> of Segovia, in HTML'


@asynccontextmanager
async def browsing(browser: Browser) -> AsyncIterator[tuple[Page, PageLog]]:
    """A fresh page; at the end, the errors it reported must be expected ones."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        log = PageLog(page)
        yield page, log
    finally:
        await context.close()
    assert log.unexpected() == []


async def test_a_search_finds_an_old_message_and_opens_its_chat_there(browser: Browser, api: httpx.AsyncClient) -> None:
    async with browsing(browser) as (page, _):
        await search_and_open(page, api)


async def search_and_open(page: Page, api: httpx.AsyncClient) -> None:
    fillers = [f"filler question {n}" for n in range(30)]
    travel = await chat_with(api, "Travel notes", "We saw the Roman aqueduct in Segovia today", *fillers)
    await chat_with(api, "Markup", HOSTILE)
    await chat_with(api, "Elsewhere", "nothing about it here")
    await page.goto(f"{api.base_url}/")
    await expect(page.get_by_role("link", name="Elsewhere")).to_be_visible()

    await page.get_by_label("Search your chats").press_sequentially("segovia AQUEDUCT")

    results = page.get_by_role("list", name="Messages found")
    hits = results.get_by_role("link")
    await expect(hits).to_have_count(4)  # each question and the fake LLM's echo of it
    await expect(page.locator("#chat-list")).to_be_hidden()
    travel_hit = hits.filter(has_text="Travel notes").filter(has_text="Roman").first
    await expect(travel_hit.locator("mark")).to_have_text(["aqueduct", "Segovia"])
    markup_hit = hits.filter(has_text="Markup").first
    await expect(markup_hit).to_contain_text('<img src=x onerror="window.injected = true"> the <b>aqueduct</b>')
    assert await results.locator("img, b").count() == 0  # the message's markup shown as text
    assert await page.evaluate("window.injected") is None

    message_id = await travel_hit.get_attribute("data-message-id")
    await travel_hit.click()

    await expect(page).to_have_url(f"{api.base_url}/#{travel}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Travel notes")
    target = page.locator(f'#messages [data-id="{message_id}"]')
    await expect(target).to_have_class("message message-user search-target")
    await expect(target).to_be_in_viewport()
    await expect(target).not_to_have_class("message message-user search-target", timeout=5000)  # briefly

    await page.get_by_label("Search your chats").press("Escape")
    await expect(page.locator("#chat-list")).to_be_visible()
    await expect(results).to_be_hidden()


async def test_a_query_with_no_word_says_why(browser: Browser, api: httpx.AsyncClient) -> None:
    async with browsing(browser) as (page, log):
        log.expect_failed_requests("422")
        await page.goto(f"{api.base_url}/")
        await page.get_by_label("Search your chats").press_sequentially("!!!")
        await expect(page.locator("#search-status")).to_contain_text("at least one word")
