"""`chatkeep chat` as a person uses it: typed at in a pseudo-terminal, against a `chatkeep serve`
subprocess. The fake LLM answers from this process's event loop, so every wait on the terminal
runs in a thread."""

import asyncio
import io
import re
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from tests.support.fake_openai import FakeOpenAI, Scripted, error_body
from tests.support.ports import free_port
from tests.support.servers import CHATKEEP, Server, chatkeep_server, clean_env

PROMPT = "you> "
UP = "\x1b[A"
BOLD = "\x1b[1m"


class Terminal:
    """`chatkeep chat` in a pseudo-terminal, with HOME (so its history) under the test's tmp_path."""

    def __init__(self, url: str, home: Path, *args: str) -> None:
        env = clean_env(HOME=str(home), TERM="xterm-256color")
        for name in ("XDG_STATE_HOME", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"):
            env.pop(name, None)
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(
            CHATKEEP, ["chat", "--url", url, *args], env=env, dimensions=(40, 120), encoding="utf-8", timeout=15
        )
        self.child.logfile_read = self.transcript

    async def expect(self, pattern: str | type[pexpect.EOF]) -> str:
        """What came before `pattern` (a regular expression) since the last wait."""
        await asyncio.to_thread(self.child.expect, pattern)
        return str(self.child.before)

    async def turn(self, line: str) -> str:
        """Type `line` and wait for the next prompt; what was shown in between."""
        self.child.sendline(line)
        return await self.expect(PROMPT)

    async def exit_status(self) -> int:
        await self.expect(pexpect.EOF)
        self.child.close()
        transcript = self.transcript.getvalue()
        assert "Traceback" not in transcript
        assert self.child.signalstatus is None, transcript  # not killed by a Ctrl+C
        return int(self.child.exitstatus)


@pytest.fixture
async def offline(tmp_path: Path) -> AsyncIterator[Server]:
    async with chatkeep_server({"CHATKEEP_LLM_PROVIDER": "offline"}, tmp_path / "server.log") as server:
        yield server


@pytest.fixture
async def with_llm(fake_llm: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Server]:
    env = {"OPENAI_BASE_URL": fake_llm.url, "OPENAI_API_KEY": "sk-test", "CHATKEEP_LLM_MAX_RETRIES": "0"}
    async with chatkeep_server(env, tmp_path / "server.log") as server:
        yield server


def url_of(server: Server) -> str:
    return str(server.client.base_url)


async def chats_of(server: Server) -> list[dict[str, Any]]:
    chats: list[dict[str, Any]] = (await server.client.get("/chats")).json()["data"]
    return chats


async def messages_of(server: Server, chat_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await server.client.get(f"/chats/{chat_id}/messages")).json()["data"]
    return messages


async def test_the_prompt_shows_and_leaving_without_a_message_creates_no_chat(offline: Server, tmp_path: Path) -> None:
    for leave in ("\x04", "\x03"):  # Ctrl+D, then Ctrl+C, at the prompt
        terminal = Terminal(url_of(offline), tmp_path)
        await terminal.expect(PROMPT)
        terminal.child.send(leave)
        assert await terminal.exit_status() == 0
    assert await chats_of(offline) == []


async def test_a_message_creates_one_chat_and_its_reply_shows_as_markdown(
    with_llm: Server, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.queue(
        Scripted(status=400, json_body=error_body("the model refused", "invalid_request_error")),
        Scripted(content="Some **bold words** and `code`."),
    )
    terminal = Terminal(url_of(with_llm), tmp_path)
    await terminal.expect(PROMPT)
    failed = await terminal.turn("first try")
    assert re.search(r"error: .+", failed)  # the problem, in one line, and the session goes on
    shown = await terminal.turn("second try")
    assert f"{BOLD}bold words" in shown
    assert "**" not in shown
    terminal.child.sendline("/quit")
    assert await terminal.exit_status() == 0
    [chat] = await chats_of(with_llm)
    assert [m["content"] for m in await messages_of(with_llm, chat["id"])][-2:] == [
        "second try",
        "Some **bold words** and `code`.",
    ]


async def test_ctrl_c_stops_a_streaming_reply_and_at_the_prompt_leaves(
    with_llm: Server, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    words = " ".join(f"w{n}" for n in range(400))
    fake_llm.queue(Scripted(content=words, chunk_delay=0.02))  # 8 s when not stopped
    terminal = Terminal(url_of(with_llm), tmp_path)
    await terminal.expect(PROMPT)
    terminal.child.sendline("a long answer, please")
    await terminal.expect(r"w\d+ w\d+")  # it streams
    terminal.child.sendintr()
    assert "stopped: the stored reply is incomplete" in await terminal.expect(PROMPT)
    [chat] = await chats_of(with_llm)
    reply = (await messages_of(with_llm, chat["id"]))[-1]
    assert reply["status"] == "incomplete"
    assert reply["content"].startswith("w0 w1")
    assert len(reply["content"]) < len(words)
    assert "echo: still here?" in await terminal.turn("still here?")
    terminal.child.sendintr()
    assert await terminal.exit_status() == 0

    fake_llm.queue(Scripted(content=words, chunk_delay=0.02))
    hasty = Terminal(url_of(with_llm), tmp_path)
    await hasty.expect(PROMPT)
    hasty.child.sendline("another long one")
    await hasty.expect(r"w\d+ w\d+")
    hasty.child.sendintr()
    await asyncio.sleep(0.02)  # two signals sent at once would arrive as one
    hasty.child.sendintr()  # while the stop is pending: leave
    assert await hasty.exit_status() == 0


async def test_list_numbers_the_chats_and_open_continues_one(offline: Server, tmp_path: Path) -> None:
    for title in ("Alpha", "Beta"):
        chat_id = (await offline.client.post("/chats", json={"title": title})).json()["id"]
        await offline.client.post(f"/chats/{chat_id}/messages", json={"content": f"about {title}"})
    alpha = next(chat for chat in await chats_of(offline) if chat["title"] == "Alpha")
    terminal = Terminal(url_of(offline), tmp_path)
    await terminal.expect(PROMPT)
    listed = await terminal.turn("/list")
    number = re.search(r"(\d+)  Alpha", listed)
    assert number, listed
    terminal.child.sendline(f"/open {number.group(1)}")
    await terminal.expect("Alpha")
    await terminal.expect(f"{PROMPT}about Alpha")  # its messages, the stored question shown as typed
    await terminal.expect(PROMPT)
    assert "Chat not found" in await terminal.turn("/open chat_none")  # a problem shown; the session goes on
    await terminal.turn("more on this")
    terminal.child.sendline("/quit")
    assert await terminal.exit_status() == 0
    assert len(await chats_of(offline)) == 2
    contents = [m["content"] for m in await messages_of(offline, alpha["id"]) if m["role"] == "user"]
    assert contents == ["about Alpha", "more on this"]


async def test_up_arrow_recalls_earlier_lines_across_sessions(offline: Server, tmp_path: Path) -> None:
    terminal = Terminal(url_of(offline), tmp_path)
    await terminal.expect(PROMPT)
    await terminal.turn("say it twice")
    await terminal.turn(UP)  # the same line again, not an escape sequence
    terminal.child.sendline("/quit")
    assert await terminal.exit_status() == 0
    [chat] = await chats_of(offline)
    asked = [m["content"] for m in await messages_of(offline, chat["id"]) if m["role"] == "user"]
    assert asked == ["say it twice", "say it twice"]
    history = tmp_path / ".local" / "state" / "chatkeep" / "history"
    assert history.read_text().splitlines()[-1] == "/quit"
    again = Terminal(url_of(offline), tmp_path)
    await again.expect(PROMPT)
    again.child.sendline(UP)  # the last session's last line: /quit
    assert await again.exit_status() == 0


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain web server: it answers HTML, not chatkeep's JSON."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("file server", "does not answer like a chatkeep server (HTTP 404, text/html)"),
        ("fake LLM's root", "does not answer like a chatkeep server (HTTP 404, text/plain)"),
        ("closed port", "cannot reach chatkeep at http://127.0.0.1:"),
    ],
)
async def test_a_url_that_is_no_chatkeep_server_gets_one_line(
    where: str, said: str, file_server: str, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    url = {
        "file server": file_server,
        "fake LLM's root": fake_llm.url.removesuffix("/v1"),
        "closed port": f"http://127.0.0.1:{free_port()}",
    }[where]
    terminal = Terminal(url, tmp_path)
    assert await terminal.exit_status() == 1
    [line] = terminal.transcript.getvalue().strip().splitlines()
    assert said in line


async def test_a_server_with_keys_says_how_to_pass_one(tmp_path: Path) -> None:
    env = {"CHATKEEP_LLM_PROVIDER": "offline", "CHATKEEP_API_KEYS": "alice=alice-key-0123456789"}
    async with chatkeep_server(env, tmp_path / "server.log") as server:
        terminal = Terminal(url_of(server), tmp_path)
        assert await terminal.exit_status() == 1
    [line] = terminal.transcript.getvalue().strip().splitlines()
    assert "pass --api-key or CHATKEEP_API_KEY" in line


async def test_a_reply_cut_short_by_the_model_says_why(fake_llm: FakeOpenAI, tmp_path: Path) -> None:
    fake_llm.queue(Scripted(content="one two three four five", stall_after=3))  # the role, two words, silence
    env = {"OPENAI_BASE_URL": fake_llm.url, "CHATKEEP_LLM_IDLE_TIMEOUT": "0.5"}
    async with chatkeep_server(env, tmp_path / "server.log") as server:
        terminal = Terminal(url_of(server), tmp_path)
        await terminal.expect(PROMPT)
        assert "cut short: the model went silent" in await terminal.turn("tell me")
        terminal.child.sendline("/quit")
        assert await terminal.exit_status() == 0
