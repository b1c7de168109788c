"""`chatkeep chat`: a terminal client that talks to a running chatkeep server.

Each line typed is sent as a message and the reply streams in; lines starting with `/` are
commands (`/help`). A chat is created on the server only when its first message is sent, so
starting and leaving creates nothing. It speaks the public HTTP API only, so it doubles as a
worked example of a streaming client, stopping a reply included.

The prompt is a plain `input()` in the event loop's thread, on purpose: that is what gives
readline's line editing and history, and nothing has to run while the user types. One SIGINT
handler decides what Ctrl+C means: at the prompt a KeyboardInterrupt that ends `input()` (leave),
at any other moment a call into the loop (stop the reply, or leave), never a traceback.
"""

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment

PROMPT = "you> "
HISTORY_SHOWN = 4  # messages shown when a chat is opened
LIST_PAGE = 20
HISTORY_LINES = 1000
PROBLEM = "application/problem+json"
HELP = """\
Type a message and press Enter. Commands:
  /list         the most recent chats, numbered
  /open N       continue chat N of the last /list (or /open CHAT_ID)
  /new          start a new chat (created when you send its first message)
  /summary      counts, summary and highlights of this chat
  /help         this list
  /quit         leave (also Ctrl+D, or Ctrl+C at the prompt)
Ctrl+C while a reply is written stops it; the server keeps what was written."""

T = TypeVar("T")


class Failure(Exception):
    """What went wrong, as the one line the user reads instead of a traceback."""


class Api:
    """The chatkeep HTTP API as this client uses it. Every failure becomes a `Failure`: the
    server's problem details, or why the URL is not a chatkeep server we can talk to."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, keyed: bool) -> None:
        self._session = session
        self.url = url.rstrip("/")
        self._keyed = keyed

    async def call(self, method: str, path: str, *, tolerate: int | None = None) -> Any:
        """The JSON answer of a request; None when the status is `tolerate`."""
        try:
            async with self._session.request(method, self.url + path) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if response.status == tolerate:
            return None
        return self._decode(response, raw)

    async def probe(self) -> None:
        """Fail early, in one line, when the URL is not a chatkeep server this client may use."""
        page = await self.call("GET", "/chats?limit=1")
        if not (isinstance(page, dict) and isinstance(page.get("data"), list)):
            raise Failure(f"{self.url} does not answer like a chatkeep server (GET /chats is no list of chats)")

    async def turn_events(self, chat_id: str, content: str) -> AsyncIterator[tuple[str, Any]]:
        """A streamed turn's server-sent events, as (event, data)."""
        body = {"content": content, "stream": True}
        try:
            async with self._session.post(f"{self.url}/chats/{chat_id}/messages", json=body) as response:
                if response.status != 200 or response.content_type != "text/event-stream":
                    self._decode(response, await response.read())
                    raise Failure(f"{self.url} answered a turn without streaming it (HTTP {response.status})")
                async for event in _events(response.content):
                    yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    def _decode(self, response: aiohttp.ClientResponse, raw: bytes) -> Any:
        """chatkeep answers JSON, and problem details for errors; anything else is another server."""
        if response.status == 401:
            advice = "check" if self._keyed else "pass"
            raise Failure(f"chatkeep at {self.url} refused the request: {advice} --api-key or CHATKEEP_API_KEY")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._stranger(response) from None
        if response.status < 400:
            return data
        if response.content_type == PROBLEM:
            raise Failure(problem_text(data, f"HTTP {response.status}"))
        raise self._stranger(response)

    def _stranger(self, response: aiohttp.ClientResponse) -> Failure:
        kind = response.content_type or "no content type"
        return Failure(f"{self.url} does not answer like a chatkeep server (HTTP {response.status}, {kind})")

    def _unreachable(self, exc: BaseException) -> Failure:
        if isinstance(exc, aiohttp.ClientConnectorError | TimeoutError):
            return Failure(f"cannot reach chatkeep at {self.url} ({_reason(exc)})")
        return Failure(f"lost the connection to chatkeep at {self.url} ({_reason(exc)})")


CUT_SHORT = {
    "stopped": "stopped",
    "max_tokens": "cut short at the token limit",
    "content_filter": "cut short by the model's content filter",
    "timeout": "cut short: the model went silent",
    "upstream_error": "cut short: the model's stream broke off",
    "shutdown": "cut short: the server shut down",
}


def cut_short(message: dict[str, Any]) -> str:
    """Why an incomplete reply ended early, in a few words."""
    return CUT_SHORT.get(message.get("incomplete_reason") or "", "cut short")


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: "Connection refused", not asyncio's "Connect call failed"."""
    os_error = getattr(exc, "os_error", None)
    if not isinstance(os_error, OSError):
        return str(exc) or type(exc).__name__
    if os_error.errno and os_error.errno > 0:
        return os.strerror(os_error.errno)
    return os_error.strerror or str(os_error)  # a resolver's error


def problem_text(problem: Any, fallback: str) -> str:
    """A problem details body as one line: its title, and its detail when it has one."""
    title = problem.get("title") if isinstance(problem, dict) else None
    if not title:
        return fallback
    detail = problem.get("detail")
    return f"{title}: {detail}" if detail else str(title)


async def _events(body: aiohttp.StreamReader) -> AsyncIterator[tuple[str, Any]]:
    event, data = "", b""
    async for raw in body:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b"event:"):
            event = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
        elif not line and event:
            yield event, orjson.loads(data)
            event, data = "", b""


class PlainReply:
    """A reply written as plain text while it arrives: what pipes and logs want."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __enter__(self) -> "PlainReply":
        self._write("assistant> ")
        return self

    def add(self, text: str) -> None:
        self._write(text)

    def __exit__(self, *exc_info: object) -> None:
        self._write("\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class LiveReply:
    """A reply on a terminal: while it streams, its end rendered in place (Live can only redraw
    what fits the screen); once it ended, the whole of it rendered once, into the scrollback."""

    def __init__(self, console: Console) -> None:
        self.text = ""
        self._console = console
        self._live = Live(
            self, console=console, transient=True, refresh_per_second=8, redirect_stdout=False, redirect_stderr=False
        )

    def __enter__(self) -> "LiveReply":
        self._live.start()
        return self

    def add(self, text: str) -> None:
        self.text += text

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._live.stop()
        if self.text:
            self._console.print(Markdown(self.text))
        self._console.line()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(Markdown(self.text), options, pad=False)
        for line in lines[-max(1, console.size.height - 2) :]:
            yield from line
            yield Segment.line()


class Screen:
    """Where the session writes: Markdown and colour on a terminal, plain lines anywhere else."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.console = Console(file=out, highlight=False)
        self.rich = self.console.is_terminal

    def line(self, text: str = "", style: str = "") -> None:
        if self.rich:
            self.console.print(text, style=style, markup=False)
        else:
            self._out.write(text + "\n")
            self._out.flush()

    def note(self, text: str) -> None:
        self.line(text, "dim")

    def error(self, text: str) -> None:
        self.line(f"error: {text}", "red")

    def message(self, message: dict[str, Any]) -> None:
        """A stored message, as the chat is opened."""
        if self.rich and message["role"] == "assistant":
            self.console.print(Markdown(message["content"]))
            self.console.line()
        else:
            label = "you" if self.rich else message["role"]
            self.line(f"{label}> {message['content']}", "bold" if self.rich else "")
        if message.get("status") == "incomplete":
            self.note(f"({cut_short(message)}: incomplete)")

    def reply(self) -> PlainReply | LiveReply:
        return LiveReply(self.console) if self.rich else PlainReply(self._out)


@dataclass
class Turn:
    """A reply being streamed, and whether Ctrl+C asked to stop it. The stop goes to the server
    as soon as the user message's id is known, so that what was written is stored."""

    chat_id: str
    user_message_id: str | None = None
    stopping: bool = False
    ended: dict[str, Any] | None = None  # the assistant message
    problem: Any = None


class Session:
    """One user's conversation: the chat being continued (None until its first message is
    sent), the chats of the last /list by number, and what Ctrl+C means at each moment."""

    def __init__(self, api: Api, screen: Screen) -> None:
        self.api = api
        self.screen = screen
        self.chat_id: str | None = None
        self.listed: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._at_prompt = False
        self._job: asyncio.Task[Any] | None = None
        self._turn: Turn | None = None
        self._stop: asyncio.Task[Any] | None = None  # the request that stops the reply
        self._leaving = False

    async def start(self, chat_id: str | None) -> bool:
        """Check the server, then open `chat_id`; no chat is created before a message is sent."""
        await self.api.probe()
        if chat_id:
            await self.open(chat_id)
        elif self.screen.rich:
            self.screen.note(f"chatkeep at {self.api.url}: a new chat starts with your first message.")
        if self.screen.rich:
            self.screen.note("/help lists the commands.")
        return True

    async def converse(self, prompt: str, history: "History") -> None:
        """Read and act on lines until /quit, Ctrl+D, or Ctrl+C at the prompt or during a stop."""
        with suppress(KeyboardInterrupt):  # a Ctrl+C just before or after input() is one at the prompt
            while not self._leaving and (line := self._read(prompt)) is not None:
                history.add(line)
                result = await self.guarded(self.act(line.strip()))
                if result is False:
                    return
                if result is None and not self._leaving:
                    self.screen.note("interrupted")
        await self._stop_sent()
        if prompt:
            self.screen.line()  # past the "you> " that Ctrl+D or Ctrl+C left

    def _read(self, prompt: str) -> str | None:
        """A typed line (readline edits it when stdin is a terminal), or None for Ctrl+D and Ctrl+C."""
        try:
            self._at_prompt = True
            return input(prompt)
        except (EOFError, KeyboardInterrupt):
            return None
        finally:
            self._at_prompt = False

    async def guarded(self, action: Coroutine[Any, Any, T]) -> T | None:
        """Run `action` as a task Ctrl+C can reach (see `interrupt`); None when it was interrupted."""
        job = asyncio.create_task(action)
        self._job = job
        try:
            await asyncio.wait([job])
        finally:
            self._job = None
        if job.cancelled():
            return None
        return job.result()

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT's handler for the whole session: Python runs it between any two bytecodes, so
        only at the prompt may it raise; anywhere else it hands Ctrl+C to the loop."""
        if self._at_prompt:
            raise KeyboardInterrupt
        self._loop.call_soon_threadsafe(self.interrupt)

    def interrupt(self) -> None:
        """Ctrl+C while a line is acted on. The first one during a reply asks the server to stop
        it, so what was written is kept; a second one leaves. During anything else it stops
        waiting; between lines it leaves, as at the prompt."""
        job, turn = self._job, self._turn
        if job is None or job.done():
            self._leaving = True
        elif turn is not None and not turn.stopping:
            turn.stopping = True
            self.screen.note("stopping the reply...")
            self._request_stop(turn)
        else:
            self._leaving = turn is not None
            job.cancel()

    async def act(self, line: str) -> bool:
        """Act on one typed line; False ends the session. A failure is shown and the session goes on."""
        command, _, argument = line.partition(" ")
        commands: dict[str, Callable[[str], Coroutine[Any, Any, None]]] = {
            "/list": self.list_chats,
            "/open": self.open,
            "/new": self.new_chat,
            "/summary": self.summary,
            "/help": self.help,
        }
        try:
            if command in ("/quit", "/exit"):
                return False
            if command in commands:
                await commands[command](argument.strip())
            elif line.startswith("/"):
                self.screen.note(f"unknown command {command}: /help lists them")
            elif line:
                await self.send(line)
        except Failure as failure:
            self.screen.error(str(failure))
        return True

    async def send(self, content: str) -> None:
        """Send a message, creating the chat first when it is its first one, and show the reply."""
        if self.chat_id is None:
            self.chat_id = (await self.api.call("POST", "/chats"))["id"]
            self.screen.note(f"new chat {self.chat_id}")
        turn = self._turn = Turn(self.chat_id)
        self._stop = None
        try:
            await self._stream(turn, content)
            if self._stop is not None:
                await self._stop
        finally:
            self._turn = None
        self._report(turn)

    async def _stream(self, turn: Turn, content: str) -> None:
        with self.screen.reply() as reply:
            async for event, data in self.api.turn_events(turn.chat_id, content):
                if event == "delta":
                    reply.add(data["content"])
                elif event == "user_message":
                    turn.user_message_id = data["id"]
                    if turn.stopping:
                        self._request_stop(turn)
                elif event == "assistant_message":
                    turn.ended = data
                elif event == "error":
                    turn.problem = data

    def _request_stop(self, turn: Turn) -> None:
        """Ask the server to stop the reply: it stores what was written and ends the stream."""
        if turn.user_message_id is not None and self._stop is None:
            path = f"/chats/{turn.chat_id}/messages/{turn.user_message_id}/cancel"
            self._stop = asyncio.create_task(self.api.call("POST", path, tolerate=409))  # 409: it had ended

    async def _stop_sent(self) -> None:
        """Before leaving, let a stop already asked for reach the server: briefly, and quietly."""
        if self._stop is not None:
            with suppress(Failure, TimeoutError):
                await asyncio.wait_for(self._stop, 2)

    def _report(self, turn: Turn) -> None:
        if turn.problem is not None:
            self.screen.error(problem_text(turn.problem, "the reply failed"))
        elif turn.ended is None:
            self.screen.error("the reply's stream ended early; /open the chat to see what was stored")
        elif turn.ended.get("status") == "incomplete":
            self.screen.note(f"{cut_short(turn.ended)}: the stored reply is incomplete")

    async def open(self, argument: str) -> None:
        """`/open N` continues chat N of the last /list, `/open chat_...` any chat by its id."""
        chat_id = quote(self._chosen(argument), safe="")
        chat = await self.api.call("GET", f"/chats/{chat_id}")
        recent = await self.api.call("GET", f"/chats/{chat_id}/messages?order=desc&limit={HISTORY_SHOWN}")
        self.chat_id = chat["id"]
        title = f": {chat['title']}" if chat.get("title") else ""
        self.screen.line(f"chat {chat['id']} ({chat['message_count']} messages){title}", "bold")
        if chat["message_count"] > len(recent["data"]):
            self.screen.note(f"... the last {len(recent['data'])} of them:")
        for message in reversed(recent["data"]):
            self.screen.message(message)

    def _chosen(self, argument: str) -> str:
        if not argument:
            raise Failure("/open N (a number of the last /list) or /open CHAT_ID")
        if not (argument.isascii() and argument.isdigit()):
            return argument
        number = int(argument)
        if not 1 <= number <= len(self.listed):
            raise Failure(f"no chat {number} in the last /list" if self.listed else "/list the chats first")
        return self.listed[number - 1]

    async def list_chats(self, _: str = "") -> None:
        """The newest chats, numbered for /open; `*` marks the one being continued."""
        page = await self.api.call("GET", f"/chats?limit={LIST_PAGE}")
        self.listed = [chat["id"] for chat in page["data"]]
        if not self.listed:
            self.screen.note("no chats yet: the first message you send starts one")
            return
        for number, chat in enumerate(page["data"], 1):
            marker = "*" if chat["id"] == self.chat_id else " "
            when = _local_time(chat["updated_at"])
            title = chat["title"] or "(untitled)"
            self.screen.line(f"{marker}{number:>3}  {title}  ({chat['message_count']} messages, {when})  {chat['id']}")
        more = f"the {LIST_PAGE} most recent; " if page["has_more"] else ""
        self.screen.note(f"{more}/open N continues one")

    async def new_chat(self, _: str = "") -> None:
        self.chat_id = None
        self.screen.note("new chat: it is created when you send its first message")

    async def summary(self, _: str = "") -> None:
        if self.chat_id is None:
            raise Failure("no chat yet: send a message first, or /open one")
        summary = await self.api.call("GET", f"/chats/{self.chat_id}/summary")
        stale = " [stale]" if summary["stale"] else ""
        self.screen.line(f"{summary['message_count']} messages ({summary['user_message_count']} yours){stale}")
        self.screen.line(summary["summary"] or "(no summary yet)")
        for highlight in summary["highlights"]:
            self.screen.line(f"  - {highlight}")

    async def help(self, _: str = "") -> None:
        self.screen.line(HELP)


def _local_time(stamp: str) -> str:
    with suppress(ValueError):
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    return stamp


class History:
    """The lines typed in earlier sessions, for the Up arrow: read at the start, each new line
    appended at once (a closed terminal loses nothing). Best effort: a state directory that cannot
    be written costs the saved history, never the session."""

    def __init__(self, path: Path | None) -> None:
        self._path = path if path is not None and _history_started(path) else None

    @classmethod
    def for_terminal(cls) -> "History":
        """History when a person types at a terminal; none for piped input or without readline."""
        if not sys.stdin.isatty():
            return cls(None)
        try:
            import readline  # noqa: F401 - importing it gives input() line editing
        except ImportError:  # pragma: no cover - platforms without readline
            return cls(None)
        state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
        return cls(Path(state) / "chatkeep" / "history")

    def add(self, line: str) -> None:
        if self._path is None or not line:  # readline keeps non-empty lines only
            return
        import readline

        try:
            readline.append_history_file(1, self._path)
        except OSError:
            self._path = None


def _history_started(path: Path) -> bool:
    """Load the saved lines; then write them back, which creates the file and trims it."""
    import readline

    with suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LINES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
    except OSError:
        return False
    return True


async def run(url: str, chat_id: str | None, *, api_key: str | None = None, out: TextIO = sys.stdout) -> int:
    """The session; 1 with one line on stderr when the server cannot be used, else 0."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)  # a reply may take minutes
    # A new connection per request: the loop sleeps while the prompt waits, so it would not see
    # the server close a kept-alive one, and the next request would fail on it.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        session = Session(Api(http, url, keyed=bool(api_key)), Screen(out))
        signal.signal(signal.SIGINT, session.on_sigint)
        try:
            return await _talk(session, chat_id)
        finally:  # leaving: a Ctrl+C pressed twice must not turn a clean exit into a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _talk(session: Session, chat_id: str | None) -> int:
    try:
        started = await session.guarded(session.start(chat_id))
    except Failure as failure:
        print(f"chatkeep chat: {failure}", file=sys.stderr)
        return 1
    if started is not None:  # None: Ctrl+C while connecting
        await session.converse(PROMPT if sys.stdin.isatty() else "", History.for_terminal())
    return 0
