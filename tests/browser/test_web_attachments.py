"""Images on the chat page, in a real browser: attached by the button or pasted, shown as a
thumbnail before sending, sent to the model with the question, and shown in the sent message,
then again after a reload (read back from the server)."""

import httpx
import pytest
from playwright.async_api import Browser, FilePayload, Locator, expect

from tests.browser.test_web_page import browsing
from tests.support.chats import messages_of
from tests.support.fake_openai import FakeOpenAI
from tests.support.images import OTHER_PNG, PNG, b64, data_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

# A paste of the PNG whose base64 is the argument, as a browser's clipboard hands an image over.
PASTE_IMAGE = """(base64) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const clipboard = new DataTransfer();
    clipboard.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
    const box = document.getElementById("prompt");
    box.focus();
    box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true, cancelable: true }));
}"""


async def shown(image: Locator) -> None:
    """`image` is visible and its picture decoded (a page policy refusing data: images leaves it broken)."""
    await expect(image).to_be_visible()
    handle = await image.element_handle()
    await image.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle, timeout=5000)


async def test_an_attached_image_is_previewed_sent_and_shown_after_a_reload(
    browser: Browser, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    async with browsing(browser) as tab:
        await tab.open(api)
        red: FilePayload = {"name": "red.png", "mimeType": "image/png", "buffer": PNG}
        await tab.page.locator("#attach-input").set_input_files(files=[red])
        thumbnail = tab.page.get_by_role("img", name="Image 1 to send")
        await shown(thumbnail)
        await expect(thumbnail).to_have_attribute("src", data_url(PNG))

        await tab.send("What colour is this?")
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(tab.page.locator(".attachments")).to_be_hidden()
        sent = tab.page.locator(".message-user .message-image")
        await shown(sent)
        await expect(sent).to_have_attribute("src", data_url(PNG))
        parts = fake_llm.requests[-1]["messages"][-1]["content"]
        assert parts[1] == {"type": "image_url", "image_url": {"url": data_url(PNG), "detail": "auto"}}
        question, _ = await messages_of(api, await tab.chat_id())
        assert (question["content"], question["images"]) == ("What colour is this?", [data_url(PNG)])

        await tab.page.reload()
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await shown(tab.page.locator(".message-user .message-image"))
        await expect(tab.page.locator(".message-user .message-image")).to_have_attribute("src", data_url(PNG))


async def test_a_pasted_image_is_previewed_and_may_be_removed(
    browser: Browser, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    async with browsing(browser) as tab:
        await tab.open(api)
        await tab.page.evaluate(PASTE_IMAGE, b64(PNG))
        await tab.page.evaluate(PASTE_IMAGE, b64(OTHER_PNG))
        thumbnails = tab.page.locator(".attachment img")
        await expect(thumbnails).to_have_count(2)
        await tab.page.get_by_role("button", name="Remove image 1").click()
        await expect(thumbnails).to_have_count(1)
        await expect(thumbnails).to_have_attribute("src", data_url(OTHER_PNG))

        await tab.send("And this one?")
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(tab.page.locator(".message-user .message-image")).to_have_attribute("src", data_url(OTHER_PNG))
        question, _ = await messages_of(api, await tab.chat_id())
        assert question["images"] == [data_url(OTHER_PNG)]
