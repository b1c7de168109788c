"""The chat page's model picker, system prompt editor, chat list by last activity with its day
headings, and highlighted code, in a real browser against chatkeep on a real socket."""

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Route, expect

from tests.browser.test_web_page import Tab, browsing
from tests.support.app import llm_settings, serve
from tests.support.browser import BIG_MODEL, DEFAULT_MODEL, hold_close_event
from tests.support.chats import messages_of
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.stores import execute_sql

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT, BIG = DEFAULT_MODEL, BIG_MODEL
ZONE = "Pacific/Kiritimati"  # UTC+14: a local day that differs from the UTC one for 14 hours of each
CODE = "def greet(name):\n    return f\"<hi> & {name!r}\"  # say 'hi'"


async def test_a_new_chat_asks_the_model_picked_and_an_open_chat_changes_it(
    browser: Browser, models_api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    async with browsing(browser) as tab:
        await tab.open(models_api)
        picker = tab.page.get_by_role("combobox", name="Model")
        await expect(picker).to_be_visible()
        await expect(picker.locator("option")).to_have_text([f"{DEFAULT} (default)", BIG])
        await picker.select_option(BIG)
        await tab.send("Which model are you?")
        await expect(tab.replies.locator(".model")).to_have_text(BIG)
        chat_id = tab.page.url.partition("#")[2]
        assert (await models_api.get(f"/chats/{chat_id}")).json()["model"] == BIG
        assert fake_llm.requests[-1]["model"] == BIG

        async with tab.page.expect_response(lambda response: response.request.method == "PATCH") as patched:
            await picker.select_option("")
        assert (await patched.value).ok
        assert await chat_model(models_api, chat_id) is None
        await tab.send("And now?")
        await expect(tab.replies.nth(1).locator(".model")).to_have_text(DEFAULT)
        assert fake_llm.requests[-1]["model"] == DEFAULT
        await tab.page.reload()
        await expect(picker).to_have_value("")


async def chat_model(api: httpx.AsyncClient, chat_id: str) -> str | None:
    model: str | None = (await api.get(f"/chats/{chat_id}")).json()["model"]
    return model


async def test_one_model_served_shows_no_picker(tab: Tab, api: httpx.AsyncClient) -> None:
    await tab.open(api)
    await expect(tab.page.get_by_role("button", name="New chat")).to_be_visible()
    await expect(tab.page.locator("#model-picker")).to_be_attached()
    await expect(tab.page.locator("#model-picker")).to_be_hidden()


async def test_the_system_prompt_is_edited_and_sent_first(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = (await api.post("/chats", json={"title": "Prompted", "system_prompt": "Be brief."})).json()["id"]
    await tab.open(api, f"#{chat_id}")
    await tab.page.get_by_role("button", name="Instructions").click()
    editor = tab.page.get_by_label("System prompt")
    await expect(editor).to_have_value("Be brief.")
    await editor.fill("Answer in French.")
    await tab.page.get_by_role("button", name="Save").click()
    await expect(tab.page.locator("#prompt-dialog")).not_to_be_visible()
    assert (await api.get(f"/chats/{chat_id}")).json()["system_prompt"] == "Answer in French."
    await tab.send("Hello")
    await expect(tab.replies).to_have_attribute("data-status", "completed")
    assert fake_llm.requests[-1]["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]

    await tab.page.get_by_role("button", name="Instructions").click()
    await editor.fill("")
    await tab.page.get_by_role("button", name="Save").click()
    await expect(tab.page.locator("#prompt-dialog")).not_to_be_visible()
    await expect(tab.page.get_by_role("button", name="Instructions")).to_be_focused()  # where the dialog was opened
    assert (await api.get(f"/chats/{chat_id}")).json()["system_prompt"] is None  # the server's default


async def test_the_message_box_keeps_the_keys_typed_before_the_prompt_dialog_s_close_event(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    """The dialog's close event comes a frame after Save hides it: a reader already typing in the
    message box by then keeps typing there (in CI it came between the test's click in the box and
    its first key, so every key went to the Instructions button and nothing was sent)."""
    chat_id = (await api.post("/chats", json={"title": "Prompted"})).json()["id"]
    await tab.open(api, f"#{chat_id}")
    release_close_event = await hold_close_event(tab.page, "prompt-dialog")
    await tab.page.get_by_role("button", name="Instructions").click()
    await tab.page.get_by_label("System prompt").fill("Answer in French.")
    await tab.page.get_by_role("button", name="Save").click()
    await expect(tab.page.locator("#prompt-dialog")).not_to_be_visible()
    box = tab.page.get_by_label("Message", exact=True)
    await box.click()
    await release_close_event()
    await expect(box).to_be_focused()
    await tab.page.keyboard.type("Hello")
    await tab.page.keyboard.press("Enter")
    await expect(tab.replies).to_have_attribute("data-status", "completed")
    assert fake_llm.requests[-1]["messages"][1:] == [{"role": "user", "content": "Hello"}]


@pytest_asyncio.fixture(loop_scope="module")
async def sqlite_api(fake_llm: FakeOpenAI, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """chatkeep on a SQLite file, whose chats' last activity a test may set back in time."""
    url = f"sqlite:///{tmp_path / 'chats.db'}"
    async with serve(llm_settings(fake_llm, store=url)) as client:
        yield client, url


async def active_at(url: str, chat_id: str, when: datetime) -> None:
    micros = str((when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))
    await execute_sql(url, "UPDATE chats SET updated_at = CAST(?2 AS INTEGER) WHERE id = ?1", chat_id, micros)


async def test_chats_are_listed_by_last_activity_under_local_day_headings(
    browser: Browser, sqlite_api: tuple[httpx.AsyncClient, str]
) -> None:
    api, url = sqlite_api
    zone = ZoneInfo(ZONE)
    now = datetime.now(zone)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Both today, in that order, however little of the local day has gone by.
    early = min(timedelta(minutes=5), (now - day_start) / 3)
    moments = {
        "Just now": now - early,
        "Early today": day_start + early,
        "Late yesterday": day_start - timedelta(minutes=10),
        "Three days ago": now - timedelta(days=3),
        "Forty days ago": now - timedelta(days=40),
        "Last year": now - timedelta(days=400),
    }
    ids = {}
    for title, moment in reversed(moments.items()):
        ids[title] = (await api.post("/chats", json={"title": title})).json()["id"]
        await active_at(url, ids[title], moment)
    month, last_year = moments["Forty days ago"], moments["Last year"]
    expected = [
        "Today",
        "Just now",
        "Early today",
        "Yesterday",
        "Late yesterday",
        "Previous 7 days",
        "Three days ago",
        month.strftime("%B") if month.year == now.year else month.strftime("%B %Y"),
        "Forty days ago",
        last_year.strftime("%B %Y"),
        "Last year",
    ]
    async with browsing(browser, timezone_id=ZONE, locale="en-US") as tab:
        await tab.open(api)
        items = tab.page.locator("#chat-list > li")
        await expect(items).to_have_text([re.compile(f"^{re.escape(text)}") for text in expected])
        await tab.page.get_by_role("link", name=re.compile("^Last year")).click()
        await tab.send("back to this one")
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(items.nth(1)).to_contain_text("Last year")  # moved to the top, under Today
        await expect(items).to_have_count(len(expected) - 1)  # its month has no chat left
        await tab.page.reload()
        await expect(items.nth(1)).to_contain_text("Last year")  # the server lists it so too
        await expect(items.nth(0)).to_have_text("Today")


async def test_code_in_replies_is_highlighted_and_copied_as_written(
    browser: Browser, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content=f"Here:\n\n```python\n{CODE}\n```\n\nand\n\n```\nSELECT 1;\n```"))
    async with browsing(browser, permissions=["clipboard-read", "clipboard-write"]) as tab:
        await tab.open(api)
        await tab.send("Show me code")
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        code = tab.replies.locator("pre code").first
        await expect(code.locator(".hljs-keyword").first).to_have_text("def")
        await expect(code.locator(".hljs-string").first).to_contain_text("<hi> & {name!r}")
        assert await code.text_content() == CODE
        colour = await code.locator(".hljs-keyword").first.evaluate("node => getComputedStyle(node).color")
        plain = await code.evaluate("node => getComputedStyle(node).color")
        assert colour != plain  # the vendored theme's colours apply under the page's CSP
        await tab.replies.locator("pre .copy-button").first.click()
        await expect(tab.replies.locator("pre .copy-button").first).to_have_text("Copied")
        assert await tab.page.evaluate("navigator.clipboard.readText()") == CODE
        chat_id = tab.page.url.partition("#")[2]
        assert (await messages_of(api, chat_id))[1]["content"].count("```") == 4


async def test_a_chat_still_loading_offers_no_prompt_or_model_to_edit(tab: Tab, api: httpx.AsyncClient) -> None:
    chat_id = (await api.post("/chats", json={"title": "Slow", "system_prompt": "Be brief."})).json()["id"]
    loaded = asyncio.Event()

    async def held(route: Route) -> None:
        await loaded.wait()
        await route.continue_()

    await tab.page.route(re.compile(rf"/chats/{chat_id}$"), held)
    await tab.open(api, f"#{chat_id}")
    instructions = tab.page.get_by_role("button", name="Instructions")
    await expect(instructions).to_be_disabled()  # an empty prompt shown now would be saved over the real one
    await expect(tab.page.locator("#model-picker")).to_be_disabled()
    loaded.set()
    await instructions.click()
    await expect(tab.page.get_by_label("System prompt")).to_have_value("Be brief.")
