"""wrk, the load generator of the throughput measures: installed when missing, run, parsed.

wrk is C and event-driven, so on its own core it outruns any Python server by far; one thread
keeps it off the server's core. `turns.lua` spreads the posts over the chats and prints one
JSON line that `run_wrk` reads back.
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.processes import LOAD_CORE, Processes, pinned

SCRIPT = Path(__file__).with_name("turns.lua")
MARKER = "BENCH "
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
TIMEOUT_SECONDS = 10

TurnMode = Literal["json", "stream", "responses"]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def ensure_wrk() -> str:
    """The path of wrk, installed from Debian's packages first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("bench: wrk is missing; install it (apt-get install wrk) or run as root")
    print("bench: installing wrk (apt-get update && apt-get install -y wrk)", flush=True)
    env = {**os.environ, **APT_ENV}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: apt-get installed wrk but it is not on PATH")
    return found


def run_wrk(
    processes: Processes,
    wrk: str,
    url: str,
    chat_ids: Path,
    *,
    mode: TurnMode,
    connections: int,
    seconds: float,
    request_ids: bool = False,
) -> WrkResult:
    """Post turns to `url` for `seconds` over `connections` keep-alive connections, each with an
    X-Request-ID when `request_ids`: native ones (`json`, `stream`), or OpenAI's `responses`."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={TIMEOUT_SECONDS}s", "-s", str(SCRIPT)]
    argv += [url, "--", str(chat_ids), mode, "id" if request_ids else "no-id"]
    output = processes.run(pinned(LOAD_CORE, argv), timeout=seconds + 3 * TIMEOUT_SECONDS)
    line = next((line for line in output.splitlines() if line.startswith(MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-1000:]}")
    data = json.loads(line.removeprefix(MARKER))
    errors = sum(data[kind] for kind in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(data["requests"], data["duration_us"] / 1e6, errors, data["p50_us"] / 1e3, data["p99_us"] / 1e3)
