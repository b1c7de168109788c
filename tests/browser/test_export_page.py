"""Export and import on the chat page, in a real browser: a chat's Export downloads its JSONL, which
the Import control brings back after the chat was deleted; a bad file shows the lines refused."""

from pathlib import Path

import httpx
import orjson
import pytest
from playwright.async_api import Browser, expect

from tests.support.browser import PageLog

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_chat_exported_on_the_page_imports_back(
    browser: Browser, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    chat_id: str = (await api.post("/chats", json={"title": "Trip to Rome"})).json()["id"]
    assert (await api.post(f"/chats/{chat_id}/messages", json={"content": "Plan three days"})).status_code == 201
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    try:
        page = await context.new_page()
        log = PageLog(page)
        await page.goto(f"{api.base_url}/#{chat_id}")
        await expect(page.locator("#chat-title")).to_have_text("Trip to Rome")
        async with page.expect_download() as downloading:
            await page.locator("#export-jsonl").click()
        download = await downloading.value
        assert download.suggested_filename == f"chatkeep-{chat_id}.jsonl"
        exported = tmp_path / download.suggested_filename
        await download.save_as(exported)
        lines = [orjson.loads(text) for text in exported.read_bytes().splitlines()]
        assert [line["type"] for line in lines] == ["chatkeep.export", "chat", "message", "message"]

        assert (await api.delete(f"/chats/{chat_id}")).status_code == 204
        await page.locator("#import-input").set_input_files(exported)
        status = page.locator("#transfer-status")
        await expect(status).to_have_text("Imported 1 chat; 0 chats already here, unchanged.")
        await expect(page.get_by_role("link", name="Trip to Rome")).to_be_visible()
        assert (await api.get(f"/chats/{chat_id}")).json()["message_count"] == 2

        bad = tmp_path / "bad.jsonl"
        log.expect_failed_requests("422")  # the refused import, on purpose
        bad.write_bytes(exported.read_bytes().replace(b'"seq":2', b'"seq":5'))
        await page.locator("#import-input").set_input_files(bad)
        await expect(status).to_contain_text("Nothing was imported:")
        await expect(status.locator("li")).to_have_text(
            ["Line 4: seq 5 where 2 comes next: a chat's seqs run 1, 2, 3... without gaps"]
        )
    finally:
        await context.close()
    assert log.unexpected() == []
