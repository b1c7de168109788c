"""The servers of a run and the timed runs against them, shared by every measure.

A `Rig` starts each fake LLM, relay and chatkeep once (keyed by what they differ in) and keeps
them for the measures that follow. Timed runs alternate between the servers compared, round
after round, so a burst of noise from elsewhere on the machine hits both sides alike, and every
run posts to chats created for it, so no run inherits the history of the one before.
"""

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from bench import client
from bench.load import TurnMode, WrkResult, run_wrk
from bench.processes import LOAD_CORE, PYTHON, SERVER_CORE, Processes, Server, free_port, pinned

CHATKEEP = str(Path(sys.executable).with_name("chatkeep"))
BENCH_API_KEY = "bench"
BURST_TIMEOUT_SECONDS = 300
STREAMS_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class LoadRun:
    """One wrk run, with the CPU the server spent on it: a figure that noise elsewhere barely moves."""

    wrk: WrkResult
    cpu_seconds: float  # by the server's processes (a SQLite store's thread included)
    database_cpu_seconds: float | None  # by the PostgreSQL backends of its database; None: it has none

    @property
    def rate(self) -> float:
        return self.wrk.rate

    @property
    def cpu_us_per_turn(self) -> float:
        return per_turn(self.cpu_seconds, self.wrk.requests)

    @property
    def database_cpu_us_per_turn(self) -> float | None:
        if self.database_cpu_seconds is None:
            return None
        return per_turn(self.database_cpu_seconds, self.wrk.requests)


def per_turn(seconds: float, turns: float) -> float:
    return seconds / turns * 1e6 if turns else 0.0


class CpuMeter:
    """CPU seconds spent by a server's processes (its workers too) and its database's backends
    since the meter was made."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._before = _tree_cpu(server.process.pid)
        self._database_before = _backend_cpu(server.database) if server.database else {}

    def read(self) -> tuple[float, float | None]:
        spent = _spent(self._before, _tree_cpu(self._server.process.pid))
        if not self._server.database:
            return spent, None
        return spent, _spent(self._database_before, _backend_cpu(self._server.database))


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by process (one that started in between, all of its own)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass(frozen=True)
class Plan:
    """How long and how often each measure runs; `quick()` is for trying the benchmark out."""

    runs: int = 5
    seconds: float = 5.0
    warmup_seconds: float = 3.0
    connections: int = 64
    chats: int = 200
    stream_chunks: int = 70
    burst_chats: int = 1000
    burst_runs: int = 3
    burst_latency: float = 1.0
    history_fill_turns: int = 200
    longest_fill_turns: int = 2500
    live_bisections: int = 3
    history_samples: int = 100
    memory_turns: int = 100_000
    store_runs: int = 3
    overload_bound: int = 100
    overload_latency: float = 1.0
    overload_runs: int = 3
    search_messages: int = 1_000_000
    search_queries: int = 100  # of each shape

    @classmethod
    def quick(cls) -> "Plan":
        return cls(
            runs=1,
            seconds=2,
            warmup_seconds=1,
            burst_runs=1,
            history_samples=10,
            store_runs=1,
            overload_runs=1,
            live_bisections=1,
            search_messages=100_000,
            search_queries=20,
        )


class Rig:
    def __init__(self, processes: Processes, wrk: str, plan: Plan) -> None:
        self.processes = processes
        self.wrk = wrk
        self.plan = plan
        self._servers: dict[str, Server] = {}

    def llm(self, *, latency: float = 0.0, chunks: int | None = None, chunk_delay: float = 0.0) -> Server:
        """The fake LLM; with a `chunk_delay`, its streamed chunks are paced and stamped (bench.streams)."""
        chunks = chunks or self.plan.stream_chunks
        key = f"llm-{latency:g}s" + (f"-{chunks}x{chunk_delay:g}s" if chunk_delay else "")
        if key not in self._servers:
            argv = [PYTHON, "-m", "bench.fake_llm", "--latency", str(latency), "--chunks", str(chunks)]
            if chunk_delay:
                argv += ["--chunk-delay", str(chunk_delay), "--stamp"]
            self._servers[key] = self._serve(key, argv, LOAD_CORE)
        return self._servers[key]

    def relay(self, llm: Server) -> Server:
        key = f"relay-{llm.name}"
        if key not in self._servers:
            argv = [PYTHON, "-m", "bench.relay", "--llm-url", llm.url + "/v1"]
            self._servers[key] = self._serve(key, argv, SERVER_CORE)
        return self._servers[key]

    def context_relay(self, llm: Server, *, store: str = "memory://") -> Server:
        """The context relay (bench.context_relay) on `llm`, keeping its chats in `store`: the
        ceiling of chatkeep on the same store."""
        key = f"ceiling-{store.partition(':')[0]}-{llm.name}"
        if key not in self._servers:
            argv = [PYTHON, "-m", "bench.context_relay", "--llm-url", llm.url + "/v1", "--store", store]
            self._servers[key] = self._serve(key, argv, SERVER_CORE, database=database_of(store))
        return self._servers[key]

    def chatkeep(
        self,
        llm: Server,
        *,
        store: str = "memory://",
        max_turns_in_flight: int | None = None,
        metrics: bool = True,
        llm_connections: int | None = None,
        http_limits: bool = True,
        rate_limit: str | None = None,
        workers: int = 1,
        cores: Collection[int] = (SERVER_CORE,),
    ) -> Server:
        """chatkeep on `llm` and `store`, with its default bounds on turns in flight and on
        connections to the LLM unless given, and /metrics and its HTTP limits on unless told;
        with `rate_limit` (CHATKEEP_RATE_LIMIT) when given, in `workers` processes pinned to
        `cores`; raises StartError when it refuses to start."""
        key = f"chatkeep-{store.partition(':')[0]}-{llm.name}"
        options: list[str] = []
        extra_env: dict[str, str] = {}
        if rate_limit is not None:
            key += "-limited"
            extra_env["CHATKEEP_RATE_LIMIT"] = rate_limit
        if workers != 1:
            key += f"-workers{workers}"
            options += ["--workers", str(workers)]
        if llm_connections is not None:
            key += f"-pool{llm_connections}"
            extra_env["CHATKEEP_LLM_MAX_CONNECTIONS"] = str(llm_connections)
        if max_turns_in_flight is not None:
            key += f"-bound{max_turns_in_flight}"
            options += ["--max-turns-in-flight", str(max_turns_in_flight)]
        if not metrics:
            key += "-unobserved"
            options += ["--metrics", "false"]
        command = [CHATKEEP]
        if not http_limits:
            key += "-unlimited"
            command = [PYTHON, "-m", "bench.unguarded"]
        if key not in self._servers:
            argv = [*command, "serve", "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning", *options]
            env = {name: value for name, value in os.environ.items() if not name.startswith("CHATKEEP_")}
            env |= {"OPENAI_API_KEY": BENCH_API_KEY, "OPENAI_BASE_URL": llm.url + "/v1", "CHATKEEP_STORE": store}
            env |= extra_env
            self._servers[key] = self._serve(key, argv, cores, env=env, database=database_of(store))
        return self._servers[key]

    def stop(self, server: Server) -> None:
        self.processes.stop(server.process)
        self._servers.pop(server.name, None)

    def _serve(
        self,
        name: str,
        argv: list[str],
        cores: int | Collection[int],
        *,
        env: dict[str, str] | None = None,
        database: str | None = None,
    ) -> Server:
        port = free_port()
        server = self.processes.serve(name, pinned(cores, [*argv, "--port", str(port)]), port, env=env)
        server.database = database
        return server

    def chat_file(self, server: Server, count: int) -> Path:
        """A file of `count` new chats of `server`, one id per line (for wrk and the burst client)."""
        chat_ids = asyncio.run(client.create_chats(server.url, count))
        path = self.processes.workdir / f"chats-{server.name}-{free_port()}.txt"
        path.write_text("\n".join(chat_ids) + "\n")
        return path

    def turn_rates(
        self,
        servers: dict[str, Server],
        *,
        stream: bool,
        runs: int,
        request_ids: Collection[str] = (),
        responses: Collection[str] = (),
    ) -> dict[str, list[LoadRun]]:
        """wrk runs against each server, alternating, after one warm-up run each; the servers
        labelled in `request_ids` are sent an X-Request-ID with every turn, those labelled in
        `responses` get their turns through OpenAI's POST /v1/responses."""
        results: dict[str, list[LoadRun]] = {label: [] for label in servers}
        modes: dict[str, TurnMode] = {
            label: "responses" if label in responses else "stream" if stream else "json" for label in servers
        }
        for label, server in servers.items():
            self._wrk(server, mode=modes[label], seconds=self.plan.warmup_seconds, request_ids=label in request_ids)
        for round_ in range(runs):
            order = list(servers.items())
            for label, server in order if round_ % 2 == 0 else reversed(order):
                run = self._wrk(server, mode=modes[label], seconds=self.plan.seconds, request_ids=label in request_ids)
                results[label].append(run)
        return results

    def _wrk(self, server: Server, *, mode: TurnMode, seconds: float, request_ids: bool) -> LoadRun:
        chats = self.chat_file(server, self.plan.chats)
        meter = CpuMeter(server)
        result = run_wrk(
            self.processes,
            self.wrk,
            server.url,
            chats,
            mode=mode,
            connections=self.plan.connections,
            seconds=seconds,
            request_ids=request_ids,
        )
        return LoadRun(result, *meter.read())

    def streams(self, server: Server, count: int) -> dict[str, float]:
        """`count` streamed turns held open at once on `server` by bench.streams, on new chats."""
        chat_file = self.chat_file(server, count)
        argv = pinned(LOAD_CORE, [PYTHON, "-m", "bench.streams", server.url, str(chat_file), str(server.process.pid)])
        output = self.processes.run(argv, timeout=STREAMS_TIMEOUT_SECONDS)
        result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
        return result

    def bursts(
        self, servers: dict[str, Server], *, runs: int, chats: int | None = None, client: str = "bench.burst"
    ) -> dict[str, list[dict[str, float]]]:
        """Runs of `client` against each server, alternating; each on `chats` chats (by default
        `burst_chats`) created for it. The client takes URL CHATS_FILE and prints one JSON line."""
        results: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        for round_ in range(runs):
            order = list(servers.items())
            for label, server in order if round_ % 2 == 0 else reversed(order):
                count = chats or self.plan.burst_chats
                chat_file = self.chat_file(server, count)
                argv = pinned(LOAD_CORE, [PYTHON, "-m", client, server.url, str(chat_file)])
                meter = CpuMeter(server)
                output = self.processes.run(argv, timeout=BURST_TIMEOUT_SECONDS)
                found = json.loads(output.strip().splitlines()[-1])
                cpu, database = meter.read()
                found["cpu_us"] = per_turn(cpu, count)  # a turn posted, answered or refused
                if database is not None:
                    found["db_cpu_us"] = per_turn(database, count)
                results[label].append(found)
        return results


def database_of(store: str) -> str | None:
    """The PostgreSQL database a store URL names; None for any other store."""
    if not store.startswith(("postgresql:", "postgres:")):
        return None
    return urlsplit(store).path.lstrip("/") or None


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user and system) each process of the tree under `pid` has spent so far."""
    found: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            found[process.pid] = sum(process.cpu_times()[:2])
    return found


def _backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds each PostgreSQL backend connected to `database` has spent so far. A backend's
    process title names its database (`postgres: [cluster:] user database host(port) state`); the
    server's shared processes (WAL writer, checkpointer) are left out: other databases use them too."""
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        info = process.info
        if info["name"] != "postgres" or info["cpu_times"] is None or not info["cmdline"]:
            continue
        words = " ".join(info["cmdline"]).split()
        if words[0] == "postgres:" and database in words[1:5]:
            found[process.pid] = sum(info["cpu_times"][:2])
    return found
