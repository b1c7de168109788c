"""Another website, open in the same browser as the chat page, can neither run a turn nor frame the page.

chatkeep runs as it does by default (no API keys, on loopback), in front of the fake LLM; a page
of another origin (another port of 127.0.0.1) does what any website can do without asking the
server first: `fetch` with `mode: "no-cors"` and a Blob body, a form sent as text/plain, an
iframe. The server answers each request it gets (415 for the bodies, the page with headers that
forbid framing), so the tests see the requests arrive and still nothing stored, no call upstream,
and no chatkeep document in the frame. A JSON `fetch` is stopped by the browser before it is sent:
it would need a CORS preflight that chatkeep does not grant.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, Response

from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.asyncio(loop_scope="module")

ELSEWHERE = "<!doctype html><html><head><title>elsewhere</title></head><body><p>another website</p></body></html>"

# Posts `body` to `url` as a no-cors fetch would from any page: an opaque answer, never an error.
NO_CORS_POST = """async ([url, body, type]) => {
    const blob = type === null ? new Blob([body]) : new Blob([body], { type });
    const answer = await fetch(url, { method: "POST", mode: "no-cors", body: blob });
    return answer.type;
}"""
# The same body sent as JSON: the browser must ask first, and chatkeep grants no other origin.
CORS_JSON_POST = """async ([url, body]) => {
    try {
        await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body });
        return "sent";
    } catch (error) {
        return error.name;
    }
}"""
# A form whose one field's name and value make a JSON body when sent as text/plain (`name=value`).
TEXT_PLAIN_FORM = """([url, name, value]) => {
    const sink = Object.assign(document.createElement("iframe"), { name: "sink" });
    const form = Object.assign(document.createElement("form"), {
        method: "POST", action: url, enctype: "text/plain", target: "sink",
    });
    form.append(Object.assign(document.createElement("input"), { type: "hidden", name, value }));
    document.body.append(sink, form);
    form.submit();
}"""
FRAME = """async (url) => {
    const frame = Object.assign(document.createElement("iframe"), { src: url });
    const loaded = new Promise((resolve) => frame.addEventListener("load", resolve, { once: true }));
    document.body.append(frame);
    await loaded;
}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def elsewhere() -> AsyncIterator[str]:
    """Another website: a plain page on another port of 127.0.0.1, so another origin."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ELSEWHERE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class Visit:
    """A page of the other website, and every answer to a request it made that reached chatkeep."""

    page: Page
    origin: str
    answers: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status

    def answered(self, response: Response) -> None:
        if response.url.startswith(self.origin):
            self.answers.append((response.request.method, response.url.removeprefix(self.origin), response.status))


@pytest_asyncio.fixture(loop_scope="module")
async def visit(browser: Browser, elsewhere: str, api: httpx.AsyncClient) -> AsyncIterator[Visit]:
    """The other website open in a fresh browser context, watched for answers from chatkeep."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        visit = Visit(page, str(api.base_url).rstrip("/"))
        page.on("response", visit.answered)
        await page.goto(elsewhere)
        yield visit
    finally:
        await context.close()


async def new_chat(api: httpx.AsyncClient) -> str:
    response = await api.post("/chats", json={"title": "mine"})
    assert response.status_code == 201
    chat_id: str = response.json()["id"]
    return chat_id


async def assert_nothing_stored(api: httpx.AsyncClient, chat_id: str, fake_llm: FakeOpenAI) -> None:
    chats = (await api.get("/chats")).json()["data"]
    assert [(chat["id"], chat["title"], chat["message_count"]) for chat in chats] == [(chat_id, "mine", 0)]
    assert fake_llm.requests == []


async def test_a_no_cors_fetch_runs_no_turn(visit: Visit, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(api)
    turn = f"{visit.origin}/chats/{chat_id}/messages"
    response = f"{visit.origin}/v1/responses"
    sent = [
        (turn, '{"content": "spend the credits"}', None),
        (turn, '{"content": "spend the credits", "stream": true}', "text/plain"),
        (response, '{"model": "fake-model", "input": "spend the credits"}', None),
        (f"{visit.origin}/chats", '{"title": "planted"}', None),
    ]
    for url, body, kind in sent:
        async with visit.page.expect_response(url) as answer:
            assert await visit.page.evaluate(NO_CORS_POST, [url, body, kind]) == "opaque"
        assert (await answer.value).status == 415  # it reached chatkeep, which refused it
    assert [status for _, _, status in visit.answers] == [415] * len(sent)
    await assert_nothing_stored(api, chat_id, fake_llm)


async def test_a_json_fetch_is_stopped_by_the_browser(
    visit: Visit, api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    chat_id = await new_chat(api)
    url = f"{visit.origin}/chats/{chat_id}/messages"
    assert await visit.page.evaluate(CORS_JSON_POST, [url, '{"content": "spend the credits"}']) == "TypeError"
    assert [method for method, _, _ in visit.answers if method == "POST"] == []
    await assert_nothing_stored(api, chat_id, fake_llm)


async def test_a_text_plain_form_runs_no_turn(visit: Visit, api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    chat_id = await new_chat(api)
    for path in (f"/chats/{chat_id}/messages", "/chats"):
        url = f"{visit.origin}{path}"
        async with visit.page.expect_response(url) as answer:
            # sent as `{"content": "spend the credits", "title": "planted", "pad": "="}`
            await visit.page.evaluate(
                TEXT_PLAIN_FORM, [url, '{"content": "spend the credits", "title": "planted", "pad": "', '"}']
            )
        assert (await answer.value).status == 415
        assert (await answer.value).request.headers["content-type"] == "text/plain"
    await assert_nothing_stored(api, chat_id, fake_llm)


async def test_the_chat_page_cannot_be_framed(visit: Visit, api: httpx.AsyncClient, elsewhere: str) -> None:
    await new_chat(api)
    await visit.page.evaluate(FRAME, elsewhere + "/")  # a frame of its own origin shows its page
    own = visit.page.frames[1]
    assert await own.locator("p").text_content() == "another website"
    for path in ("/", "/docs"):
        async with visit.page.expect_response(f"{visit.origin}{path}") as answer:
            await visit.page.evaluate(FRAME, f"{visit.origin}{path}")
        served = await answer.value
        assert served.status == 200  # chatkeep answered, with headers that forbid any frame
        assert served.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in served.headers["content-security-policy"]
        frame = visit.page.frames[-1]
        assert await frame.locator("#app, #new-chat, #swagger-ui").count() == 0
        assert frame.url.startswith("chrome-error://")  # Chromium's page for a refused frame, in its place
    # the page never ran in the frame: it would have loaded its script and listed the chats
    assert [path for _, path, _ in visit.answers if path not in ("/", "/docs")] == []
