"""The chat page at `/`, used in a real browser against chatkeep on a real socket.

One Chromium serves the whole module (launching it costs more than most tests), so the tests
and their fixtures share the module's event loop; each test gets a fresh browser context (its
own localStorage) and a fresh chatkeep in front of the fake LLM. Every page is watched for
console errors and uncaught exceptions, and a test fails on any it did not expect.
"""

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Dialog, Locator, Page, Request, ViewportSize, expect

from chatkeep.config import Settings
from tests.support.app import llm_settings, serve
from tests.support.browser import PageLog, hold_close_event
from tests.support.chats import messages_of
from tests.support.fake_openai import FakeOpenAI, Scripted, error_body

pytestmark = pytest.mark.asyncio(loop_scope="module")

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 360, "height": 740}
API_KEY = "alice-key-0123456789abcdef"

# Records each text the streaming reply shows, so a test can see it grow (and never stutter).
RECORD_REPLY_TEXTS = """() => {
    window.replyTexts = [];
    const messages = document.getElementById("messages");
    new MutationObserver(() => {
        const body = messages.querySelector(".message-streaming .message-body");
        const text = body ? body.textContent : null;
        if (text && window.replyTexts.at(-1) !== text) window.replyTexts.push(text);
    }).observe(messages, { subtree: true, childList: true, characterData: true });
}"""


@dataclass
class Tab:
    context: BrowserContext
    page: Page
    log: PageLog

    async def open(self, api: httpx.AsyncClient, fragment: str = "") -> None:
        await self.page.goto(f"{api.base_url}/{fragment}")

    async def send(self, text: str) -> None:
        """Type `text` in the message box (newlines with Shift+Enter) and press Enter."""
        box = self.page.get_by_label("Message", exact=True)
        for n, line in enumerate(text.split("\n")):
            if n:
                await box.press("Shift+Enter")
            await box.press_sequentially(line)
        await box.press("Enter")

    @property
    def replies(self) -> Locator:
        return self.page.locator(".message-assistant")

    async def chat_id(self) -> str:
        await expect(self.page).to_have_url(re.compile(r"#conv_"))  # a chat is a conversation: one id, one prefix
        return self.page.url.partition("#")[2]


@asynccontextmanager
async def browsing(browser: Browser, *, viewport: ViewportSize = DESKTOP, **options: Any) -> AsyncIterator[Tab]:
    """A fresh browser context and page; at the end, the errors the page reported must be expected ones."""
    context = await browser.new_context(viewport=viewport, **options)
    try:
        page = await context.new_page()
        log = PageLog(page)
        yield Tab(context, page, log)
    finally:
        await context.close()
    assert log.unexpected() == []


async def chat_with(api: httpx.AsyncClient, title: str, *, turns: int = 0) -> str:
    """A chat made through the API, with `turns` questions answered by the fake LLM's echo."""
    response = await api.post("/chats", json={"title": title})
    chat_id: str = response.json()["id"]
    for n in range(1, turns + 1):
        posted = await api.post(f"/chats/{chat_id}/messages", json={"content": f"question {n}"})
        assert posted.status_code == 201, posted.text
    return chat_id


def words(count: int) -> str:
    return " ".join(f"word{n}" for n in range(1, count + 1))


async def test_a_new_chat_streams_its_reply(tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    reply = words(30)
    fake_llm.queue(Scripted(content=reply, chunk_delay=0.03))
    await tab.open(api)
    await tab.page.evaluate(RECORD_REPLY_TEXTS)

    await tab.send("Plan three days\nin Rome")

    await expect(tab.replies).to_have_attribute("data-status", "completed")
    shown = await tab.page.evaluate("window.replyTexts")
    assert len([text for text in shown if text != reply]) >= 3, shown
    assert all(reply.startswith(text) for text in shown), shown
    chat_id = await tab.chat_id()
    question, answer = await messages_of(api, chat_id)
    assert question["content"] == "Plan three days\nin Rome"
    assert answer["content"] == reply
    await expect(tab.replies.locator(".message-body")).to_have_text(reply)
    chats = tab.page.get_by_role("navigation", name="Chats")
    await expect(chats.get_by_role("link", name="Plan three days in Rome")).to_have_attribute("aria-current", "page")
    await expect(tab.page.get_by_role("heading", level=1)).to_have_text("Plan three days in Rome")


async def test_a_first_question_with_reordering_marks_still_makes_a_chat(tab: Tab, api: httpx.AsyncClient) -> None:
    """The server refuses a title that carries a right-to-left override; the page leaves it out of the title."""
    await tab.open(api)
    await tab.send("\u202eexe.txt is it safe?")
    await expect(tab.replies).to_have_attribute("data-status", "completed")
    chat = (await api.get(f"/chats/{await tab.chat_id()}")).json()
    assert chat["title"] == "exe.txt is it safe?"
    question, _ = await messages_of(api, chat["id"])
    assert question["content"] == "\u202eexe.txt is it safe?"  # the message itself is kept as written


async def test_stop_keeps_the_reply_written_so_far(tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    full = words(200)
    fake_llm.queue(Scripted(content=full, chunk_delay=0.05))
    await tab.open(api)
    await tab.send("Tell me a long story")
    await expect(tab.page.locator(".message-streaming .message-body")).to_contain_text("word5 ")

    await tab.page.get_by_role("button", name="Stop the reply").click()

    await expect(tab.replies).to_have_attribute("data-status", "incomplete")
    await expect(tab.replies.get_by_text("Stopped: incomplete reply")).to_be_visible()
    await expect(tab.page.get_by_role("button", name="Send")).to_be_visible()
    _, stored = await messages_of(api, await tab.chat_id())
    assert stored["status"] == "incomplete"
    assert full.startswith(stored["content"])
    assert len(words(5)) < len(stored["content"]) < len(full)
    await expect(tab.replies.locator(".message-body")).to_have_text(stored["content"].strip())


async def test_history_comes_back_on_reload_and_pages_upward(tab: Tab, api: httpx.AsyncClient) -> None:
    chat_id = await chat_with(api, "Long chat", turns=20)
    await tab.open(api, f"#{chat_id}")
    messages = tab.page.locator("#messages article")
    await expect(messages.last.locator(".message-body")).to_have_text("echo: question 20")
    await expect(messages).to_have_count(30)  # one page; the first ten messages are further up

    await tab.page.locator("#messages-scroll").evaluate("scroller => { scroller.scrollTop = 0; }")

    await expect(messages).to_have_count(40)
    await expect(messages.first.locator(".message-body")).to_have_text("question 1")
    await expect(tab.page.get_by_text("Start of the conversation")).to_be_visible()
    seqs = [int(seq) for seq in await messages.evaluate_all("all => all.map(m => m.dataset.seq)")]
    assert seqs == list(range(1, 41))

    await tab.page.reload()
    await expect(messages.last.locator(".message-body")).to_have_text("echo: question 20")
    await expect(tab.page.get_by_role("heading", level=1)).to_have_text("Long chat")


async def test_the_chat_list_pages_as_it_scrolls(tab: Tab, api: httpx.AsyncClient) -> None:
    for n in range(1, 46):
        await chat_with(api, f"Chat {n}")
    await tab.open(api)
    links = tab.page.get_by_role("list", name="Your chats").get_by_role("link")
    await expect(links).to_have_count(30)
    await expect(links.first).to_contain_text("Chat 45")

    await links.last.scroll_into_view_if_needed()
    await tab.page.locator("#chat-scroll").evaluate("list => { list.scrollTop = list.scrollHeight; }")

    await expect(links).to_have_count(45)
    titles = await tab.page.locator(".chat-link .chat-title").all_text_contents()
    assert titles == [f"Chat {n}" for n in range(45, 0, -1)]


async def test_the_summary_shows_exact_counts(tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await chat_with(api, "Rome", turns=2)
    fake_llm.queue(Scripted(content='{"summary": "Planning Rome.", "highlights": ["Colosseum", "Pantheon", "Trevi"]}'))
    await tab.open(api, f"#{chat_id}")

    await tab.page.get_by_role("button", name="Summary").click()

    panel = tab.page.get_by_role("complementary", name="Summary")
    await expect(panel.locator('[data-count="messages"]')).to_have_text("4")
    await expect(panel.locator('[data-count="user"]')).to_have_text("2")
    await expect(panel.locator('[data-count="assistant"]')).to_have_text("2")
    await expect(panel.get_by_text("Planning Rome.")).to_be_visible()
    await expect(panel.get_by_role("listitem")).to_have_text(["Colosseum", "Pantheon", "Trevi"])

    calls = len(fake_llm.requests)
    await panel.get_by_role("button", name="Refresh").click()  # nothing new: the same summary, no call
    await expect(panel.get_by_text("Planning Rome.")).to_be_visible()
    assert len(fake_llm.requests) == calls

    posted = await api.post(f"/chats/{chat_id}/messages", json={"content": "and Ostia?"})
    assert posted.status_code == 201
    fake_llm.queue(Scripted(content='{"summary": "Rome, again.", "highlights": ["Forum", "Vatican", "Ostia"]}'))
    await panel.get_by_role("button", name="Refresh").click()
    await expect(panel.get_by_text("Rome, again.")).to_be_visible()
    await expect(panel.get_by_role("listitem")).to_have_text(["Forum", "Vatican", "Ostia"])
    await expect(panel.locator('[data-count="messages"]')).to_have_text("6")

    await panel.get_by_role("button", name="Close the summary").click()
    await expect(panel).to_be_hidden()


async def test_a_chat_is_renamed_and_deleted_after_confirmation(tab: Tab, api: httpx.AsyncClient) -> None:
    chat_id = await chat_with(api, "Trip", turns=1)
    await tab.open(api, f"#{chat_id}")
    page = tab.page
    chats = page.get_by_role("navigation", name="Chats")

    await page.get_by_role("button", name="Rename").click()
    await page.get_by_label("Chat title").fill("Italy trip")
    await page.get_by_label("Chat title").press("Enter")

    await expect(page.get_by_role("heading", level=1)).to_have_text("Italy trip")
    await expect(chats.get_by_role("link", name="Italy trip")).to_be_visible()
    assert (await api.get(f"/chats/{chat_id}")).json()["title"] == "Italy trip"

    await page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete this chat?")
    await expect(dialog).to_contain_text("“Italy trip” and all its messages will be deleted for good.")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Delete")).to_be_focused()
    assert (await api.get(f"/chats/{chat_id}")).status_code == 200

    await page.get_by_role("button", name="Delete").click()
    await dialog.get_by_role("button", name="Delete").click()

    await expect(chats.get_by_role("link", name="Italy trip")).to_have_count(0)
    await expect(page.get_by_role("heading", level=1)).to_have_text("New chat")
    assert (await api.get(f"/chats/{chat_id}")).status_code == 404

    tab.log.expect_failed_requests("404")
    await tab.open(api, f"#{chat_id}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Chat not found")
    await expect(page.get_by_role("alert")).to_contain_text("This chat no longer exists")
    await page.get_by_role("button", name="Start a new chat").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("New chat")


async def test_a_delete_cancelled_leaves_the_focus_where_the_reader_has_gone_since(
    tab: Tab, api: httpx.AsyncClient
) -> None:
    """The delete dialog's close event comes a frame after Cancel hides it: a reader who has
    clicked in the message box by then keeps typing there, not on the Delete button."""
    chat_id = await chat_with(api, "Keep")
    await tab.open(api, f"#{chat_id}")
    release_close_event = await hold_close_event(tab.page, "delete-dialog")
    await tab.page.get_by_role("button", name="Delete").click()
    dialog = tab.page.get_by_role("dialog", name="Delete this chat?")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    box = tab.page.get_by_label("Message", exact=True)
    await box.click()
    await release_close_event()
    await expect(box).to_be_focused()
    assert (await api.get(f"/chats/{chat_id}")).status_code == 200


async def test_an_api_key_is_asked_for_and_kept(tab: Tab, fake_llm: FakeOpenAI) -> None:
    tab.log.expect_failed_requests("401")
    async with serve(llm_settings(fake_llm, api_keys=f"alice={API_KEY}")) as api:
        await tab.open(api)
        dialog = tab.page.get_by_role("dialog", name="API key")
        await expect(dialog).to_contain_text("asks for an API key")

        await dialog.get_by_label("API key").fill("not-the-right-key-at-all")
        await dialog.get_by_role("button", name="Save key").click()
        await expect(dialog).to_contain_text("refused the API key")

        await dialog.get_by_label("API key").fill(API_KEY)
        await dialog.get_by_role("button", name="Save key").click()
        await expect(dialog).to_be_hidden()
        await expect(tab.page.get_by_text("No chats yet")).to_be_visible()
        await tab.send("Hello with a key")
        await expect(tab.replies).to_have_attribute("data-status", "completed")

        assert await tab.page.evaluate("localStorage.getItem('chatkeep.apiKey')") == API_KEY
        listed = await api.get("/chats", headers={"Authorization": f"Bearer {API_KEY}"})
        assert [chat["title"] for chat in listed.json()["data"]] == ["Hello with a key"]
        await tab.page.reload()
        chats = tab.page.get_by_role("navigation", name="Chats")
        await expect(chats.get_by_role("link", name="Hello with a key")).to_be_visible()
        await expect(dialog).to_be_hidden()


class CuttableProxy:
    """A TCP proxy in front of chatkeep whose open connections a test cuts, as a network would.

    Chromium's offline emulation fails new requests but leaves a response already streaming
    alone, so a cut in the middle of a reply is made here, below HTTP.
    """

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.target = api.base_url
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        await asyncio.gather(*self.tasks)
        await self.server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection, both ways."""
        for writer in self.links:
            writer.transport.abort()

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        assert self.target.port is not None
        upstream_reader, upstream_writer = await asyncio.open_connection(self.target.host, self.target.port)
        self.links |= {client_writer, upstream_writer}
        pipes = [
            asyncio.create_task(self._pipe(client_reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, client_writer)),
        ]
        self.tasks.update(pipes)
        await asyncio.gather(*pipes)
        self.tasks.difference_update(pipes)
        self.links -= {client_writer, upstream_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()


async def test_a_cut_stream_resumes_without_doubling_text(
    tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    reply = words(60)
    fake_llm.queue(Scripted(content=reply, chunk_delay=0.04))
    resumes: list[str | None] = []

    def note_resume(request: Request) -> None:
        if request.url.endswith("/events"):
            resumes.append(request.headers.get("last-event-id"))

    tab.page.on("request", note_resume)
    tab.log.expect_failed_requests("ERR_INCOMPLETE_CHUNKED_ENCODING", "ERR_CONNECTION_RESET", "ERR_EMPTY_RESPONSE")
    proxy = CuttableProxy(api)
    async with proxy as url:
        await tab.page.goto(url)
        await tab.page.evaluate(RECORD_REPLY_TEXTS)
        await tab.send("Count for me")
        await expect(tab.page.locator(".message-streaming .message-body")).to_contain_text("word5 ")

        proxy.cut()

        await expect(tab.replies).to_have_attribute("data-status", "completed")
    _, stored = await messages_of(api, await tab.chat_id())
    assert stored["content"] == reply
    await expect(tab.replies.locator(".message-body")).to_have_text(reply)
    shown = await tab.page.evaluate("window.replyTexts")
    assert all(reply.startswith(text) for text in shown), shown
    assert len(resumes) == 1, resumes
    assert resumes[0] is not None
    assert 5 <= int(resumes[0]) < 60, resumes  # cut after word5, before the end


HOSTILE_REPLY = "\n\n".join(
    [
        '# Hi <img src=x onerror="window.pwned = 1">',
        "<script>window.pwned = 2</script>",
        "A [link](javascript:window.pwned=3) and [a safe one](https://example.com/a?b=1).",
        '<a href="javascript:window.pwned=4">raw link</a> <iframe src="javascript:window.pwned=5"></iframe>',
        "**bold <b onclick=alert(1)>html</b>** `<i>code</i>` ![pic](https://example.com/x.png)",
        '<svg onload="alert(2)"></svg> <div style="position:fixed;inset:0">cover</div>',
        "```html\n<script>alert(3)</script>\n```",
    ]
)
# Trusted Types (in the page's Content-Security-Policy) make every HTML sink throw.
WRITE_HTML = """() => {
    try {
        document.body.insertAdjacentHTML("beforeend", "<b>written</b>");
        return "written";
    } catch (error) {
        return error.name;
    }
}"""
TRUSTED_TYPES_REFUSAL = "This document requires 'TrustedHTML' assignment. The action has been blocked."
HOSTILE_QUESTION = '<img src=x onerror="window.pwned=6"><script>alert(4)</script> [x](javascript:alert(5)) **hi**'


async def test_hostile_markdown_and_html_stay_text(tab: Tab, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    dialogs: list[str] = []

    async def note_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    tab.page.on("dialog", note_dialog)
    fake_llm.queue(Scripted(content=HOSTILE_REPLY))
    await tab.open(api)

    await tab.send(HOSTILE_QUESTION)

    await expect(tab.replies).to_have_attribute("data-status", "completed")
    conversation = tab.page.get_by_role("region", name="Messages")
    await expect(conversation.locator(".message-user .message-body")).to_have_text(HOSTILE_QUESTION)
    reply = tab.replies.locator(".message-body")
    await expect(reply.locator("h3")).to_have_text('Hi <img src=x onerror="window.pwned = 1">')
    await expect(reply).to_contain_text("<script>window.pwned = 2</script>")
    await expect(reply).to_contain_text("[link](javascript:window.pwned=3)")
    await expect(reply).to_contain_text('<a href="javascript:window.pwned=4">raw link</a>')
    await expect(reply.locator("strong")).to_have_text("bold <b onclick=alert(1)>html</b>")
    await expect(reply.locator("pre code")).to_have_text("<script>alert(3)</script>")
    safe = reply.get_by_role("link", name="a safe one")
    await expect(safe).to_have_attribute("href", "https://example.com/a?b=1")
    await expect(safe).to_have_attribute("rel", "noopener noreferrer")
    await expect(safe).to_have_attribute("target", "_blank")

    for tag in ("img", "script", "iframe", "svg", "b", "i", "div[style]"):
        await expect(conversation.locator(f".message-body {tag}")).to_have_count(0)
    hrefs = await conversation.locator("a").evaluate_all("links => links.map(link => link.href)")
    assert hrefs == ["https://example.com/a?b=1", "https://example.com/x.png"]
    assert await tab.page.evaluate("window.pwned") is None
    assert dialogs == []
    tab.log.expect_message(TRUSTED_TYPES_REFUSAL)
    assert await tab.page.evaluate(WRITE_HTML) == "TypeError"  # the page refuses HTML strings outright
    await tab.page.reload()  # stored, then drawn from the store: still text
    await expect(tab.replies.locator(".message-body")).to_contain_text("<script>window.pwned = 2</script>")
    assert await tab.page.evaluate("window.pwned") is None


RENDER_MARKDOWN = """async (sources) => {
    const { renderMarkdown } = await import("/web/markdown.js");
    return sources.map((source) => {
        const box = document.createElement("div");
        box.append(renderMarkdown(source));
        return box.innerHTML;
    });
}"""
LINK = 'target="_blank" rel="noopener noreferrer"'
# What models write, and the exact elements it becomes: links only to http(s) and mailto.
MARKDOWN = [
    (
        "Hi **bold**, *em*, `x < y`, ~~old~~, snake_case",
        "<p>Hi <strong>bold</strong>, <em>em</em>, <code>x &lt; y</code>, <del>old</del>, snake_case</p>",
    ),
    ("# Title\nline one\nline two", '<h3 class="md-h1">Title</h3><p>line one<br>line two</p>'),
    (
        "- a\n- b\n  - c\n\n3. three",
        '<ul><li><p>a</p></li><li><p>b</p><ul><li><p>c</p></li></ul></li></ul><ol start="3"><li><p>three</p></li></ol>',
    ),
    (
        "```js\nif (a < b) {}\n```",
        '<pre><code class="language-js" data-language="js">if (a &lt; b) {}</code></pre>',
    ),
    ("```\nstill streaming <b>", "<pre><code>still streaming &lt;b&gt;</code></pre>"),
    (
        "| a | b |\n|---|--:|\n| 1 | 2 |",
        '<div class="md-table"><table><thead><tr><th>a</th><th class="align-right">b</th></tr></thead>'
        '<tbody><tr><td>1</td><td class="align-right">2</td></tr></tbody></table></div>',
    ),
    (
        "[a](https://x.org/) <mailto:me@x.org> https://y.org/p.",
        f'<p><a href="https://x.org/" {LINK}>a</a> <a href="mailto:me@x.org" {LINK}>mailto:me@x.org</a> '
        f'<a href="https://y.org/p" {LINK}>https://y.org/p</a>.</p>',
    ),
    (
        "[j](javascript:alert(1)) [d](data:text/html,x) [r](/chats) ![i](javascript:x)",
        "<p>[j](javascript:alert(1)) [d](data:text/html,x) [r](/chats) ![i](javascript:x)</p>",
    ),
    ("> <script>x</script>", "<blockquote><p>&lt;script&gt;x&lt;/script&gt;</p></blockquote>"),
]


async def test_markdown_renders_what_models_write_and_only_that(tab: Tab, api: httpx.AsyncClient) -> None:
    await tab.open(api)
    rendered = await tab.page.evaluate(RENDER_MARKDOWN, [source for source, _ in MARKDOWN])
    assert rendered == [html for _, html in MARKDOWN]


async def test_markdown_takes_little_time_on_hostile_input(tab: Tab, api: httpx.AsyncClient) -> None:
    await tab.open(api)
    seconds = await tab.page.evaluate("""async () => {
        const { renderMarkdown } = await import("/web/markdown.js");
        const inputs = ["*a ".repeat(10000), "[".repeat(30000), "`a".repeat(15000), "> ".repeat(5000) + "x"];
        const started = performance.now();
        for (const input of inputs) renderMarkdown(input);
        return (performance.now() - started) / 1000;
    }""")
    assert seconds < 2


async def test_the_offline_provider_says_how_to_connect_a_model(tab: Tab) -> None:
    async with serve(Settings(llm_provider="offline")) as api:
        await tab.open(api)
        await tab.send("Hello")
        await expect(tab.replies).to_have_attribute("data-status", "completed")

        notice = tab.page.get_by_role("note")
        await expect(notice).to_contain_text("No language model is connected")
        await expect(notice).to_contain_text("OPENAI_API_KEY for OpenAI")
        await expect(notice).to_contain_text("OPENAI_BASE_URL to the URL of Ollama, vLLM, LM Studio")
        await expect(notice).to_contain_text("restart chatkeep")
        await expect(tab.replies.get_by_text("offline, no model connected")).to_be_visible()


async def test_a_failed_reply_says_what_to_do_and_retries_once(tab: Tab, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(status=400, json_body=error_body("model not found", "invalid_request_error")))
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as api:
        await tab.open(api)
        await tab.send("Will this work?")
        alert = tab.replies.get_by_role("alert")
        await expect(alert).to_contain_text("The language model answered with an error. Try again")

        await alert.get_by_role("button", name="Retry").click()

        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(tab.replies.locator(".message-body")).to_have_text("echo: Will this work?")
        stored = await messages_of(api, await tab.chat_id())
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", "Will this work?"),
            ("assistant", "echo: Will this work?"),
        ]


async def test_a_lost_reply_reopened_after_a_reload_offers_a_retry_that_answers_it(
    tab: Tab, fake_llm: FakeOpenAI
) -> None:
    fake_llm.queue(Scripted(status=500))
    async with serve(llm_settings(fake_llm, llm_max_retries=0)) as api:
        chat_id = await chat_with(api, "Lost")
        failed = await api.post(f"/chats/{chat_id}/messages", json={"content": "Are you there?"})
        assert failed.status_code == 502
        await tab.open(api, f"#{chat_id}")
        alert = tab.replies.get_by_role("alert")
        await expect(alert).to_contain_text("The reply was lost")
        await expect(alert).to_contain_text("Your question is stored")
        await expect(alert).not_to_contain_text("deleted")

        await alert.get_by_role("button", name="Retry").click()

        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(tab.replies.locator(".message-body")).to_have_text("echo: Are you there?")
        stored = await messages_of(api, chat_id)
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", "Are you there?"),
            ("assistant", "echo: Are you there?"),
        ]


async def test_a_reply_cut_short_says_why_and_goes_on_with_continue_or_retry(tab: Tab, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(content=words(30), stall_after=6))  # the role, five words, then silence
    async with serve(llm_settings(fake_llm, llm_idle_timeout=0.5)) as api:
        await tab.open(api)
        await tab.send("Tell me everything")
        reply = tab.replies.first
        await expect(reply).to_have_attribute("data-status", "incomplete")
        await expect(reply.get_by_text("Cut short: the model went silent")).to_be_visible()
        await expect(reply.locator(".message-body")).to_have_text(words(5))

        await tab.page.reload()  # the offer comes back with the chat
        await expect(tab.replies.first.get_by_role("button", name="Retry")).to_be_visible()
        await tab.replies.first.get_by_role("button", name="Retry").click()  # a new reply in its place
        await expect(tab.replies).to_have_count(1)
        await expect(tab.replies).to_have_attribute("data-status", "completed")
        await expect(tab.page.get_by_role("button", name="Continue")).to_have_count(0)
        await expect(tab.replies.locator(".siblings-count")).to_have_text("2/2")  # the cut-short one kept

        chat_id = await tab.chat_id()
        stored = await messages_of(api, chat_id)
        assert [(m["role"], m["content"], m["incomplete_reason"]) for m in stored] == [
            ("user", "Tell me everything", None),
            ("assistant", "echo: Tell me everything", None),
        ]


async def test_a_model_that_never_answers_is_not_blamed_on_the_question(tab: Tab, fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Scripted(hang=True))
    async with serve(llm_settings(fake_llm, llm_first_token_timeout=0.5, llm_max_retries=0)) as api:
        await tab.open(api)
        await tab.send("Hello?")
        alert = tab.replies.get_by_role("alert")
        await expect(alert).to_contain_text("did not begin its reply in time")
        await expect(alert).not_to_contain_text("shorter")


async def test_a_rate_limited_question_says_when_to_try_again(tab: Tab, fake_llm: FakeOpenAI) -> None:
    tab.log.expect_failed_requests("429")
    async with serve(llm_settings(fake_llm, rate_limit="1/minute")) as api:
        await tab.open(api)
        await tab.send("One")
        await expect(tab.replies).to_have_attribute("data-status", "completed")

        await tab.send("Two")

        alert = tab.replies.last.get_by_role("alert")
        await expect(alert).to_contain_text("Too many requests right now. Try again in")
        await expect(alert.get_by_role("button", name=re.compile(r"^Retry in \d+ s$"))).to_be_disabled()
        await expect(tab.page.get_by_text("Not sent")).to_be_visible()
        assert len(await messages_of(api, await tab.chat_id())) == 2


async def test_an_unreachable_server_is_said_and_the_question_retried(tab: Tab, api: httpx.AsyncClient) -> None:
    chat_id = await chat_with(api, "Offline")
    tab.log.expect_failed_requests("ERR_INTERNET_DISCONNECTED")
    await tab.open(api, f"#{chat_id}")
    await expect(tab.page.get_by_role("heading", level=1)).to_have_text("Offline")

    await tab.context.set_offline(True)
    await tab.send("Are you there?")
    alert = tab.replies.get_by_role("alert")
    await expect(alert).to_contain_text("Can't reach chatkeep")
    await expect(alert).to_contain_text("This device is offline")
    await expect(tab.page.get_by_text("Not sent")).to_be_visible()

    await tab.context.set_offline(False)
    await alert.get_by_role("button", name="Retry").click()
    await expect(tab.replies).to_have_attribute("data-status", "completed")
    assert [m["content"] for m in await messages_of(api, chat_id)] == ["Are you there?", "echo: Are you there?"]


async def test_it_works_from_the_keyboard_alone(tab: Tab, api: httpx.AsyncClient) -> None:
    page = tab.page
    await tab.open(api)
    await expect(page.get_by_role("navigation", name="Chats")).to_be_visible()
    await expect(page.get_by_role("main", name="New chat")).to_be_visible()
    await expect(page.get_by_role("form", name="Send a message")).to_be_visible()
    await expect(page.get_by_label("Message", exact=True)).to_be_focused()

    await page.keyboard.type("Typed without a mouse")
    await page.keyboard.press("Enter")
    await expect(tab.replies).to_have_attribute("data-status", "completed")

    new_chat_button = page.get_by_role("button", name="New chat")
    await press_until_focused(page, "Shift+Tab", new_chat_button)
    outline = await new_chat_button.evaluate("button => getComputedStyle(button).outlineStyle")
    assert outline == "solid"  # focus is visible
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("New chat")
    await expect(page.get_by_label("Message", exact=True)).to_be_focused()

    link = page.get_by_role("link", name="Typed without a mouse")
    await press_until_focused(page, "Shift+Tab", link)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Typed without a mouse")
    await expect(page.get_by_label("Message", exact=True)).to_be_focused()
    await expect(page.get_by_role("region", name="Messages").locator("article")).to_have_count(2)


async def press_until_focused(page: Page, key: str, target: Locator, *, presses: int = 30) -> None:
    for _ in range(presses):
        await page.keyboard.press(key)
        if await target.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"{key} never reached {target}")


async def test_it_reads_at_360_px_and_follows_the_color_scheme(browser: Browser, api: httpx.AsyncClient) -> None:
    chat_id = await chat_with(api, "Small screen", turns=1)
    async with browsing(browser, viewport=PHONE, color_scheme="dark") as tab:
        page = tab.page
        await tab.open(api, f"#{chat_id}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Small screen")
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        chats = page.get_by_role("navigation", name="Chats")
        await expect(chats).to_be_hidden()
        assert await background_lightness(page) < 0.2

        await page.get_by_role("button", name="Show the chat list").click()
        await expect(chats).to_be_visible()
        await chats.get_by_role("link", name="Small screen").click()
        await expect(chats).to_be_hidden()

        await page.get_by_role("button", name="Summary").click()
        await expect(page.get_by_role("complementary", name="Summary")).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        await page.emulate_media(color_scheme="light")
        assert await background_lightness(page) > 0.9


async def background_lightness(page: Page) -> float:
    """The page background's lightness, 0 (black) to 1 (white)."""
    color: str = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in color[color.index("(") + 1 : color.index(")")].split(",")[:3])
    return (max(red, green, blue) + min(red, green, blue)) / 2 / 255
