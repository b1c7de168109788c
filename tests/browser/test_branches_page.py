"""A chat's branches on the chat page, in a real browser against chatkeep on a real socket: a
regenerated reply and an edited question each start a branch, the arrows of `n/m` go between the
versions, search opens a message of the current branch, and an exported chat imports back with
its branches."""

from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Locator, expect

from tests.browser.test_web_page import Tab, browsing
from tests.support.browser import BIG_MODEL, DEFAULT_MODEL
from tests.support.chats import chat_with, messages_of
from tests.support.fake_openai import FakeOpenAI, Scripted, error_body
from tests.support.images import PNG, data_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT, BIG = DEFAULT_MODEL, BIG_MODEL


def versions(message: Locator) -> Locator:
    """The arrows and `n/m` of a message with other versions."""
    return message.get_by_role("group", name="Version", exact=False)


async def contents(api: httpx.AsyncClient, chat_id: str) -> list[str]:
    """The chat's current branch, as its messages' texts."""
    return [message["content"] for message in await messages_of(api, chat_id)]


async def test_a_regenerated_reply_is_a_version_the_arrows_go_between(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content="Crimson, first thought"))
    chat_id = await chat_with(api, "Colours", "Name a colour")
    await tab.open(api, f"#{chat_id}")
    reply = tab.replies.last
    await expect(reply.locator(".message-body")).to_have_text("Crimson, first thought")
    await expect(versions(reply)).to_have_count(0)  # one version: no arrows
    await expect(tab.page.locator("#messages")).not_to_contain_text("null")  # no images drawn as "null"

    fake_llm.queue(Scripted(content="Ultramarine, on second thought", chunk_delay=0.05))
    await reply.get_by_role("button", name="Regenerate this reply").click()

    streaming = tab.page.locator(".message-streaming")
    await expect(streaming).to_have_count(1)
    await expect(tab.page.get_by_text("Crimson, first thought")).to_have_count(0)  # off the page, kept on a branch
    question = tab.page.locator(".message-user")
    await expect(question.get_by_role("button", name="Edit this message")).to_be_disabled()  # one turn at a time
    await expect(tab.page.get_by_role("button", name="Stop the reply")).to_be_visible()

    await expect(tab.replies).to_have_count(1)
    await expect(reply).to_have_attribute("data-status", "completed")
    await expect(reply.locator(".message-body")).to_have_text("Ultramarine, on second thought")
    await expect(versions(reply)).to_have_accessible_name("Version 2 of 2")
    await expect(reply.locator(".siblings-count")).to_have_text("2/2")
    await expect(reply.get_by_role("button", name="Next version")).to_be_disabled()
    await expect(question.get_by_role("button", name="Edit this message")).to_be_enabled()
    assert await contents(api, chat_id) == ["Name a colour", "Ultramarine, on second thought"]

    await reply.get_by_role("button", name="Previous version").click()
    first = tab.replies.last
    await expect(first.locator(".message-body")).to_have_text("Crimson, first thought")
    await expect(first.locator(".siblings-count")).to_have_text("1/2")
    await expect(first.get_by_role("button", name="Previous version")).to_be_disabled()
    await expect(first.get_by_role("button", name="Next version")).to_be_focused()  # keys go on from there
    assert await contents(api, chat_id) == ["Name a colour", "Crimson, first thought"]

    await first.get_by_role("button", name="Next version").click()
    await expect(tab.replies.last.locator(".message-body")).to_have_text("Ultramarine, on second thought")
    await expect(tab.replies.last.locator(".siblings-count")).to_have_text("2/2")
    assert await contents(api, chat_id) == ["Name a colour", "Ultramarine, on second thought"]

    await tab.page.reload()  # the branch is the server's, not the page's
    await expect(tab.replies.last.locator(".message-body")).to_have_text("Ultramarine, on second thought")
    await expect(tab.replies.last.locator(".siblings-count")).to_have_text("2/2")


async def test_an_edited_question_is_a_new_branch_and_the_old_one_stays(tab: Tab, api: httpx.AsyncClient) -> None:
    chat_id = await chat_with(api, "Travel", "Plan three days in Rome", "And where to eat?")
    await tab.open(api, f"#{chat_id}")
    await expect(tab.replies).to_have_count(2)
    first = tab.page.locator(".message-user").first

    await first.get_by_role("button", name="Edit this message").click()
    box = first.get_by_role("textbox", name="Edit your message")
    await expect(box).to_be_focused()
    await expect(box).to_have_value("Plan three days in Rome")
    await box.fill("Never mind")
    await first.get_by_role("button", name="Cancel").click()  # puts it back as it was
    await expect(first.locator(".message-body")).to_have_text("Plan three days in Rome")
    await expect(first.get_by_role("button", name="Edit this message")).to_be_focused()
    await first.get_by_role("button", name="Edit this message").press("Enter")
    await box.fill("Never mind either")
    await box.press("Escape")  # as Cancel
    await expect(first.locator(".message-body")).to_have_text("Plan three days in Rome")

    await first.get_by_role("button", name="Edit this message").click()
    await box.fill("Plan two days in Florence")
    await box.press("Enter")

    await expect(tab.page.locator(".message-user")).to_have_count(1)
    await expect(tab.replies).to_have_count(1)
    await expect(tab.replies).to_have_attribute("data-status", "completed")
    edited = tab.page.locator(".message-user")
    await expect(edited.locator(".message-body")).to_have_text("Plan two days in Florence")
    await expect(tab.replies.locator(".message-body")).to_have_text("echo: Plan two days in Florence")
    await expect(edited.locator(".siblings-count")).to_have_text("2/2")
    assert await contents(api, chat_id) == ["Plan two days in Florence", "echo: Plan two days in Florence"]

    await edited.get_by_role("button", name="Previous version").click()
    await expect(tab.page.locator(".message-user .message-body")).to_have_text(
        ["Plan three days in Rome", "And where to eat?"]
    )
    await expect(tab.replies).to_have_count(2)
    await expect(tab.page.locator(".message-user").first.locator(".siblings-count")).to_have_text("1/2")
    assert await contents(api, chat_id) == [
        "Plan three days in Rome",
        "echo: Plan three days in Rome",
        "And where to eat?",
        "echo: And where to eat?",
    ]

    await tab.page.locator(".message-user").first.get_by_role("button", name="Next version").click()
    await expect(tab.page.locator(".message-user .message-body")).to_have_text(["Plan two days in Florence"])


async def test_an_edit_the_server_refuses_keeps_the_editor_and_says_why(tab: Tab, api: httpx.AsyncClient) -> None:
    tab.log.expect_failed_requests("422")  # the refused edit, on purpose
    chat_id = await chat_with(api, "Refused", "A short question")
    await tab.open(api, f"#{chat_id}")
    question = tab.page.locator(".message-user")
    await question.get_by_role("button", name="Edit this message").click()
    box = question.get_by_role("textbox", name="Edit your message")
    await box.fill("x" * 32_001)  # over CHATKEEP_MAX_MESSAGE_CHARS
    await question.get_by_role("button", name="Save").click()

    await expect(question.get_by_role("alert")).to_be_visible()
    await expect(question.get_by_role("textbox", name="Edit your message")).to_have_value("x" * 32_001)
    assert await contents(api, chat_id) == ["A short question", "echo: A short question"]
    await expect(tab.replies).to_have_count(1)


async def test_a_question_whose_reply_failed_offers_regenerate(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    tab.log.expect_failed_requests("502")
    fake_llm.queue(*[Scripted(status=500, json_body=error_body("the model fell over"))] * 3)  # and both retries
    chat_id: str = (await api.post("/chats", json={"title": "Flaky"})).json()["id"]
    failed = await api.post(f"/chats/{chat_id}/messages", json={"content": "Are you there?"})
    assert failed.status_code == 502, failed.text
    await tab.open(api, f"#{chat_id}")
    question = tab.page.locator(".message-user")
    await expect(question.locator(".message-body")).to_have_text("Are you there?")

    await question.get_by_role("button", name="Regenerate the reply").click()

    await expect(tab.replies.last).to_have_attribute("data-status", "completed")
    await expect(tab.replies.last.locator(".message-body")).to_have_text("echo: Are you there?")
    await expect(question.get_by_role("button", name="Regenerate the reply")).to_be_hidden()  # answered now
    assert await contents(api, chat_id) == ["Are you there?", "echo: Are you there?"]


async def test_a_reply_regenerated_with_another_model_names_it(browser: Browser, models_api: httpx.AsyncClient) -> None:
    async with browsing(browser) as tab:
        chat_id = await chat_with(models_api, "Models", "Which model are you?")
        await tab.open(models_api, f"#{chat_id}")
        await expect(tab.replies.locator(".model")).to_have_text(DEFAULT)

        async with tab.page.expect_response(lambda response: response.request.method == "PATCH"):
            await tab.page.get_by_role("combobox", name="Model").select_option(BIG)
        assert await chat_model(models_api, chat_id) == BIG
        await tab.replies.get_by_role("button", name="Regenerate this reply").click()

        await expect(tab.replies.locator(".siblings-count")).to_have_text("2/2")
        await expect(tab.replies.locator(".model")).to_have_text(BIG)
        await tab.replies.get_by_role("button", name="Previous version").click()
        await expect(tab.replies.locator(".siblings-count")).to_have_text("1/2")
        await expect(tab.replies.locator(".model")).to_have_text(DEFAULT)


async def chat_model(api: httpx.AsyncClient, chat_id: str) -> str | None:
    model: str | None = (await api.get(f"/chats/{chat_id}")).json()["model"]
    return model


async def test_search_opens_a_message_of_the_branch_made_current(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content="The aqueduct of Segovia"))
    chat_id = await chat_with(api, "Spain", "One sight in Spain?", *[f"filler {n}" for n in range(20)])
    first = (await messages_of(api, chat_id))[0]
    fake_llm.queue(Scripted(content="The Alhambra of Granada"))
    edited = await api.post(f"/chats/{chat_id}/messages/{first['id']}/edit", json={"content": "A palace in Spain?"})
    assert edited.status_code == 201, edited.text
    await tab.open(api, "")

    await tab.page.get_by_label("Search your chats").press_sequentially("alhambra")
    hits = tab.page.get_by_role("list", name="Messages found").get_by_role("link")
    await expect(hits).to_have_count(1)
    await hits.click()

    await expect(tab.page).to_have_url(f"{api.base_url}/#{chat_id}")
    target = tab.replies.filter(has_text="The Alhambra of Granada")
    await expect(target).to_have_class("message message-assistant search-target")
    await expect(target).to_be_in_viewport()
    await expect(tab.page.locator(".message-user").first.locator(".siblings-count")).to_have_text("2/2")


async def test_a_search_result_that_left_the_current_branch_offers_to_show_its_branch(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content="The aqueduct of Segovia"))
    chat_id = await chat_with(api, "Spain", "One sight in Spain?")
    first = (await messages_of(api, chat_id))[0]
    await tab.open(api, "")
    await tab.page.get_by_label("Search your chats").press_sequentially("segovia")
    hits = tab.page.get_by_role("list", name="Messages found").get_by_role("link")
    await expect(hits).to_have_count(1)

    fake_llm.queue(Scripted(content="The Alhambra of Granada"))  # the found reply leaves the branch meanwhile
    edited = await api.post(f"/chats/{chat_id}/messages/{first['id']}/edit", json={"content": "A palace in Spain?"})
    assert edited.status_code == 201, edited.text
    await hits.click()

    notice = tab.page.locator("#chat-notice")
    await expect(notice).to_contain_text("not on the chat's current branch")
    await notice.get_by_role("button", name="Show its branch").click()
    target = tab.replies.filter(has_text="The aqueduct of Segovia")
    await expect(target).to_be_in_viewport()
    await expect(tab.page.locator(".message-user").first.locator(".siblings-count")).to_have_text("1/2")
    assert (await messages_of(api, chat_id))[1]["content"] == "The aqueduct of Segovia"  # the branch made current
    await expect(notice).to_be_empty()


async def test_a_chat_exported_with_its_branches_imports_back_with_them(
    browser: Browser, api: httpx.AsyncClient, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.queue(Scripted(content="Carbonara"), Scripted(content="Cacio e pepe"))
    chat_id = await chat_with(api, "Dinner", "A pasta for tonight?")
    reply_id = (await messages_of(api, chat_id))[1]["id"]
    regenerated = await api.post(f"/chats/{chat_id}/messages/{reply_id}/regenerate", json={})
    assert regenerated.status_code == 201, regenerated.text

    async with browsing(browser, accept_downloads=True) as tab:
        await tab.open(api, f"#{chat_id}")
        await expect(tab.replies.locator(".siblings-count")).to_have_text("2/2")
        async with tab.page.expect_download() as downloading:
            await tab.page.get_by_role("button", name="Export", exact=True).click()
        exported = tmp_path / "dinner.jsonl"
        await (await downloading.value).save_as(exported)

        assert (await api.delete(f"/chats/{chat_id}")).status_code == 204
        await tab.page.locator("#import-input").set_input_files(exported)
        await expect(tab.page.locator("#transfer-status")).to_have_text(
            "Imported 1 chat; 0 chats already here, unchanged."
        )

        await tab.page.get_by_role("link", name="Dinner").click()
        reply = tab.replies
        await expect(reply.locator(".message-body")).to_have_text("Cacio e pepe")
        await expect(reply.locator(".siblings-count")).to_have_text("2/2")
        await reply.get_by_role("button", name="Previous version").click()
        await expect(tab.replies.locator(".message-body")).to_have_text("Carbonara")


async def test_a_regenerate_in_a_chat_deleted_elsewhere_says_so(tab: Tab, api: httpx.AsyncClient) -> None:
    tab.log.expect_failed_requests("404")
    chat_id = await chat_with(api, "Alps", "A mountain?")
    await tab.open(api, f"#{chat_id}")
    await expect(tab.replies.locator(".message-body")).to_have_text("echo: A mountain?")
    assert (await api.delete(f"/chats/{chat_id}")).status_code == 204  # in another tab

    await tab.replies.get_by_role("button", name="Regenerate this reply").click()

    notice = tab.page.locator("#chat-notice").get_by_role("alert")
    await expect(notice).to_contain_text("Chat not found")
    await expect(tab.page.locator(".message-streaming")).to_have_count(0)
    await expect(tab.page.get_by_role("link", name="Alps")).to_have_count(0)
    await notice.get_by_role("button", name="Start a new chat").click()
    await expect(tab.page.get_by_role("heading", level=1)).to_have_text("New chat")


async def test_a_regenerate_whose_model_fails_is_retried_and_keeps_the_old_reply_as_a_version(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(content="Rome"))
    chat_id = await chat_with(api, "Cities", "A city?")
    await tab.open(api, f"#{chat_id}")
    await expect(tab.replies.locator(".message-body")).to_have_text("Rome")

    fake_llm.queue(*[Scripted(status=500, json_body=error_body("the model fell over"))] * 3)  # and both retries
    await tab.replies.get_by_role("button", name="Regenerate this reply").click()
    alert = tab.replies.get_by_role("alert")
    await expect(alert).to_contain_text("The language model answered with an error")
    await expect(tab.page.locator(".message-user").get_by_role("button", name="Regenerate the reply")).to_be_visible()

    fake_llm.queue(Scripted(content="Kyoto"))
    await alert.get_by_role("button", name="Retry").click()

    await expect(tab.replies).to_have_count(1)
    await expect(tab.replies.locator(".message-body")).to_have_text("Kyoto")
    await expect(tab.replies.locator(".siblings-count")).to_have_text("2/2")
    assert await contents(api, chat_id) == ["A city?", "Kyoto"]
    await tab.replies.get_by_role("button", name="Previous version").click()
    await expect(tab.replies.locator(".message-body")).to_have_text("Rome")


async def test_an_edited_question_keeps_its_images(tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    image = data_url(PNG)
    chat_id: str = (await api.post("/chats", json={"title": "Picture"})).json()["id"]
    posted = await api.post(f"/chats/{chat_id}/messages", json={"content": "What is this?", "images": [image]})
    assert posted.status_code == 201, posted.text
    await tab.open(api, f"#{chat_id}")
    question = tab.page.locator(".message-user")
    await question.get_by_role("button", name="Edit this message").click()
    await question.get_by_role("textbox", name="Edit your message").fill("What colour is this?")
    await question.get_by_role("button", name="Save").click()

    await expect(tab.replies).to_have_attribute("data-status", "completed")
    await expect(question.locator(".message-body")).to_have_text("What colour is this?")
    await expect(question.get_by_role("img", name="Image 1")).to_be_visible()
    edited = (await messages_of(api, chat_id))[0]
    assert (edited["content"], edited["images"]) == ("What colour is this?", [image])
    assert fake_llm.requests[-1]["messages"][-1]["content"][-1]["image_url"]["url"] == image
