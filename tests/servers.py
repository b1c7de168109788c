"""`chatkeep serve` as a real subprocess, for tests of what only a whole process shows.

Each server listens on 127.0.0.1 with port 0; the port is read from its log, so tests never race
for a port. A fake LLM runs in the test process and the servers reach it by URL.
"""

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CHATKEEP = str(Path(sys.executable).parent / "chatkeep")
LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")
STARTUP_SECONDS = 30


@dataclass
class Server:
    process: asyncio.subprocess.Process
    client: httpx.AsyncClient
    log: Path


@asynccontextmanager
async def chatkeep_server(env: dict[str, str], log: Path, *options: str) -> AsyncIterator[Server]:
    """`chatkeep serve [options]` in a subprocess for the block; killed at the end if still running,
    with its workers (`--workers N`): it leads a process group of its own, killed whole.

    It runs without an access log unless `options` ask for one (`--access-log true`).
    """
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            *(CHATKEEP, "serve", "--host", "127.0.0.1", "--port", "0", "--access-log", "false", *options),
            env={**os.environ, **env},
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        port = await _port_from(log, process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await _until_answering(client, process)
            yield Server(process, client, log)
    finally:
        with suppress(ProcessLookupError):  # the group is gone already
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def _port_from(log: Path, process: asyncio.subprocess.Process) -> int:
    for _ in range(STARTUP_SECONDS * 20):
        found = LISTENING.search(await asyncio.to_thread(log.read_bytes))
        if found:
            return int(found.group(1))
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"chatkeep did not start: {await asyncio.to_thread(log.read_text)}")


async def _until_answering(client: httpx.AsyncClient, process: asyncio.subprocess.Process) -> None:
    """Wait for /healthz: under --workers the port is bound before any worker listens on it."""
    for _ in range(STARTUP_SECONDS * 20):
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("chatkeep did not answer /healthz")


async def all_messages(client: httpx.AsyncClient, chat_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": messages[-1]["id"]} if messages else {})}
        response = await client.get(f"/chats/{chat_id}/messages", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        messages += page["data"]
        if not page["has_more"]:
            return messages
