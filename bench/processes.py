"""Every process a benchmark starts, pinned to its core, and ended by its pid when the run ends.

Servers (chatkeep, the relay) run on `SERVER_CORE`; whatever makes load (wrk, the clients, the
fake LLM) runs on `LOAD_CORE`, so a server's CPU is its own. Each child gets its own session, so
a Ctrl-C in the terminal reaches the benchmark, which then stops its children one by one.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

SERVER_CORE = 0
LOAD_CORE = 1 if (os.cpu_count() or 1) > 1 else 0
PYTHON = sys.executable
STOP_SECONDS = 10.0
READY_SECONDS = 60.0
LOG_TAIL_CHARS = 600
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy


class StartError(Exception):
    """A server exited, or never answered its health check; `detail` is the end of its log."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name} did not start: {detail}")
        self.detail = detail


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cores: int | Collection[int], argv: Sequence[str]) -> list[str]:
    listed = str(cores) if isinstance(cores, int) else ",".join(map(str, sorted(cores)))
    return ["taskset", "-c", listed, *argv]


@dataclass
class Server:
    name: str
    port: int
    process: "subprocess.Popen[bytes]"
    log: Path
    database: str | None = None  # the PostgreSQL database it keeps chats in, whose backends serve it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        text = self.log.read_text(errors="replace").strip() if self.log.exists() else ""
        return text[-LOG_TAIL_CHARS:] or "(no output)"


class Processes:
    """The children of this run; `close()` (or leaving the `with`) ends every one still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        signal.signal(signal.SIGTERM, _exit_on_signal)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout: IO[bytes] | int | None = None
    ) -> "subprocess.Popen[bytes]":
        """Start `argv` (with exactly `env` when given, else this process's environment)."""
        child = subprocess.Popen(
            argv,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
        self._children.append(child)
        return child

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> str:
        """Run a command to its end and return its stdout; raises CalledProcessError on failure."""
        child = self.popen(argv, env=env, stdout=subprocess.PIPE)
        try:
            output, _ = child.communicate(timeout=timeout)
        finally:
            self.stop(child)
        if child.returncode != 0:
            raise subprocess.CalledProcessError(child.returncode, list(argv), output)
        return output.decode(errors="replace")

    def serve(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        health: str = "/healthz",
        env: Mapping[str, str] | None = None,
    ) -> Server:
        """Start a server and wait until `health` answers 200. Raises StartError."""
        log = self.workdir / f"{name}-{port}.log"
        with log.open("wb") as out:
            server = Server(name, port, self.popen(argv, env=env, stdout=out), log)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                self.stop(server.process)
                raise StartError(name, server.log_tail())
            if _answers(server.url + health):
                return server
            time.sleep(0.1)
        self.stop(server.process)
        raise StartError(name, f"no answer on {health} within {READY_SECONDS:g}s; " + server.log_tail())

    def stop(self, child: "subprocess.Popen[bytes]") -> None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if child in self._children:
            self._children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def _answers(url: str) -> bool:
    try:
        with DIRECT.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)
