"""`chatkeep chat`: a terminal client that talks to a running chatkeep server.

It creates a chat (or resumes one with `--chat`), sends each line typed as a message and
prints the reply as it streams in. Lines starting with `/` are commands. It speaks the public
HTTP API only, so it doubles as a worked example of a streaming client.
"""

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import aiohttp
import orjson

HELP = "commands: /new (start a chat), /list (recent chats), /summary, /quit"
HISTORY_SHOWN = 4


class ChatClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, out: TextIO) -> None:
        self._session = session
        self._url = url.rstrip("/")
        self._out = out
        self.chat_id = ""

    def say(self, text: str = "", *, end: str = "\n") -> None:
        self._out.write(text + end)
        self._out.flush()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self._url + path, json=body) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{data.get('title', response.status)}: {data.get('detail', '')}")
            return data

    async def new_chat(self) -> None:
        self.chat_id = (await self.request("POST", "/chats"))["id"]
        self.say(f"new chat {self.chat_id}")

    async def resume(self, chat_id: str) -> None:
        chat = await self.request("GET", f"/chats/{chat_id}")
        self.chat_id = chat["id"]
        recent = await self.request("GET", f"/chats/{chat_id}/messages?order=desc&limit={HISTORY_SHOWN}")
        self.say(f"chat {chat_id} ({chat['message_count']} messages)")
        for message in reversed(recent["data"]):
            self.say(f"{message['role']}> {message['content']}")

    async def send(self, content: str) -> None:
        body = {"content": content, "stream": True}
        async with self._session.post(f"{self._url}/chats/{self.chat_id}/messages", json=body) as response:
            if response.status != 200:
                problem = await response.json(content_type=None)
                self.say(f"error: {problem.get('title')}: {problem.get('detail')}")
                return
            self.say("assistant> ", end="")
            async for event, data in _events(response.content):
                if event == "delta":
                    self.say(data["content"], end="")
                elif event == "error":
                    self.say(f"\nerror: {data.get('title')}: {data.get('detail')}")
            self.say()

    async def list_chats(self) -> None:
        chats = await self.request("GET", "/chats?limit=10")
        for chat in chats["data"]:
            marker = "*" if chat["id"] == self.chat_id else " "
            self.say(f"{marker} {chat['id']}  {chat['message_count']:>4} messages  {chat['title'] or ''}")

    async def summary(self) -> None:
        summary = await self.request("GET", f"/chats/{self.chat_id}/summary")
        self.say(
            f"{summary['message_count']} messages ({summary['user_message_count']} yours)"
            + (" [stale]" if summary["stale"] else "")
        )
        self.say(summary["summary"] or "(no summary yet)")
        for highlight in summary["highlights"]:
            self.say(f"  - {highlight}")


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


async def run(url: str, chat_id: str | None, *, api_key: str | None = None, out: TextIO = sys.stdout) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with aiohttp.ClientSession(headers=headers) as session:
        client = ChatClient(session, url, out)
        try:
            await (client.resume(chat_id) if chat_id else client.new_chat())
        except (aiohttp.ClientError, RuntimeError) as exc:
            client.say(f"cannot start a chat at {url}: {exc}")
            return 1
        client.say(HELP)
        while (line := await _read_line()) is not None:
            if not await _handle(client, line.strip()):
                break
    return 0


async def _handle(client: ChatClient, line: str) -> bool:
    """Act on one typed line; False ends the session."""
    commands = {"/new": client.new_chat, "/list": client.list_chats, "/summary": client.summary}
    try:
        if line in ("/quit", "/exit"):
            return False
        if line in commands:
            await commands[line]()
        elif line.startswith("/"):
            client.say(HELP)
        elif line:
            await client.send(line)
    except (aiohttp.ClientError, RuntimeError) as exc:
        client.say(f"error: {exc}")
    return True


async def _read_line() -> str | None:
    line = await asyncio.to_thread(sys.stdin.readline)
    return line or None
