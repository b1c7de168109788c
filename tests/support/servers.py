"""`chatkeep` as a real subprocess, for tests of what only a whole process shows.

`chatkeep_server` runs `chatkeep serve` on 127.0.0.1 with port 0; the port is read from its log,
so tests never race for a port. A fake LLM runs in the test process and the servers reach it by
URL. `run_chat` runs the `chatkeep chat` client against a server.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

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


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CHATKEEP_* or OPENAI_* setting, and with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATKEEP_", "OPENAI_"))}
    return env | extra


def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


async def run_chat(client: httpx.AsyncClient, typed: str, *args: str) -> str:
    """What `chatkeep chat` against `client`'s server prints when `typed` is typed in."""
    process = await asyncio.create_subprocess_exec(
        CHATKEEP, "chat", "--url", str(client.base_url), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(typed.encode()), 30)
    assert process.returncode == 0
    return stdout.decode()
