"""The measures of the README's performance table, each chatkeep against its baseline in one run.

Every measure takes the `Rig` and returns its rows. Medians are taken over the runs; the raw
runs go into the row too. A measure whose feature chatkeep lacks yet (streaming, SQL stores)
returns a row that says so and lights up by itself once chatkeep has it.
"""

import asyncio
import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from statistics import median

import asyncpg

from bench import client
from bench import search as search_bench
from bench.postgres import NoCluster, private_cluster, scratch_database
from bench.processes import LOAD_CORE, PYTHON, SERVER_CORE, Server, StartError, pinned
from bench.report import Row, Target
from bench.rig import LoadRun, Plan, Rig
from chatkeep.config import Settings

# Against the ceilings (bench.context_relay): the least code that keeps chatkeep's promise.
THROUGHPUT_TARGET = Target(">=", 0.7)
STREAMED_TARGET = Target(">=", 0.8)
STORE_TARGET = Target(">=", 0.6)
# chatkeep's SQL rows run with a rate limit configured (counted in the store, per owner), far above
# what any run reaches: the bench posts as one owner, so the window is the shortest (a second).
RATE_LIMIT = "1000000/second"
CEILING = "context relay"
BARE = "relay"
BURST_TARGET = Target("<=", 1.15)
HISTORY_TARGET = Target("<=", 1.2)
OBSERVED_TARGET = Target(">=", 0.95)
HTTP_LIMITS_TARGET = Target(">=", 0.95)
RESPONSES_TARGET = Target(">=", 0.9)
LIVE_STREAMS_TARGET = Target(">=", 0.9)
MEMORY_TARGET = Target("<=", 300, on="value")
# p99 of a search through the store, in ms: well under the pause a person notices after typing.
SEARCH_TARGET = Target("<=", 100, on="value")
SEARCH_DATABASE = "chatkeep_bench_search"
CEILING_DATABASE = "chatkeep_bench_ceiling"
SCALE_DATABASE = "chatkeep_bench_scale"
SCALE_WORKERS = (1, 2, 4)
FIFO_CHATS = 50
# p99 time to a 503, with 5x the bound offered at once, against the time the bare relay takes to
# answer every request of the same burst from an instant LLM (same client, machine and run). The
# 503s must come at once, as soon as a server that waits on nothing could answer at all; had they
# waited on the LLM (1 s), the ratio would be above 2x.
OVERLOAD_TARGET = Target("<=", 1.0)
LONG_CHATS = 8
LONGEST_CHATS = 2
SHORT_FILL_TURNS = 2
WARM_TURNS = 20
MEMORY_TIMEOUT_SECONDS = 600
NO_STREAMING = "n/a (no streaming yet)"
OVERLOAD_FACTOR = 5
OVERLOAD_SLACK = 3  # turns accepted beyond (or short of) the bound that still count as the bound held
# Live streams: replies of LIVE_CHUNKS deltas at LIVE_RATE a second, held open by one core until
# the p99 delay a chunk picks up between leaving the LLM and reaching the client passes LIVE_P99_MS.
LIVE_CHUNKS = 200
LIVE_RATE = 40
LIVE_P99_MS = 50.0
LIVE_FIRST = 100  # streams; doubled while held, then bisected
LIVE_MOST = 6400
DEFAULT_TURNS_IN_FLIGHT = int(Settings.model_fields["max_turns_in_flight"].default)
# What an overload run counts against the contract (each turn once per way it breaks it): any is a FAIL.
BREACHES = {
    "other": "answered neither 201 nor 503",
    "refused_without_retry_after": "503s without Retry-After",
    "refused_untyped": "503s not typed overloaded",
    "lost": "accepted turns not stored whole",
    "doubled": "turns stored twice",
    "stored_refused": "refused turns stored",
    "off_bound": "turns accepted off the bound",
}


def turns(rig: Rig) -> list[Row]:
    """1. Turns/s with an instant LLM, memory store, against the context relay (and the bare relay)."""
    llm = rig.llm()
    servers = {"chatkeep": rig.chatkeep(llm), CEILING: rig.context_relay(llm), BARE: rig.relay(llm)}
    results = rig.turn_rates(servers, stream=False, runs=rig.plan.runs)
    measure = f"turns/s, instant LLM, {rig.plan.connections} connections, {rig.plan.chats} chats"
    return [
        _rate_row("turns", measure, results, THROUGHPUT_TARGET, baseline=CEILING),
        _rate_row("turns_bare", f"{measure} (information)", results, None),
    ]


def streamed(rig: Rig) -> list[Row]:
    """2. Streamed turns/s with replies of `stream_chunks` chunks, against the streaming context relay."""
    llm = rig.llm()
    chatkeep, ceiling, relay = rig.chatkeep(llm), rig.context_relay(llm), rig.relay(llm)
    measure = f"streamed turns/s, {rig.plan.stream_chunks}-chunk replies, {rig.plan.connections} connections"
    gap = asyncio.run(client.streaming_gap(chatkeep.url))
    if gap is None:
        servers = {"chatkeep": chatkeep, CEILING: ceiling, BARE: relay}
        results = rig.turn_rates(servers, stream=True, runs=rig.plan.runs)
        return [
            _rate_row("streamed", measure, results, STREAMED_TARGET, baseline=CEILING),
            _rate_row("streamed_bare", f"{measure} (information)", results, None),
        ]
    print(f"bench: chatkeep does not stream a turn ({gap}); measuring the context relay alone", flush=True)
    results = rig.turn_rates({CEILING: ceiling}, stream=True, runs=max(1, rig.plan.runs // 2))
    rates = _rates(results)
    return [Row("streamed", measure, "turns/s", None, median(rates[CEILING]), CEILING, note=NO_STREAMING, runs=rates)]


def observed(rig: Rig) -> list[Row]:
    """8. Turns/s as in 1 with /metrics on and an X-Request-ID sent, against /metrics off and none sent."""
    llm = rig.llm()
    servers = {"observed": rig.chatkeep(llm), "unobserved": rig.chatkeep(llm, metrics=False)}
    # A cost of a few percent is measured against noise of about as much: twice the usual runs.
    results = rig.turn_rates(servers, stream=False, runs=2 * rig.plan.runs, request_ids={"observed"})
    rig.stop(servers["unobserved"])
    rates = _rates(results)
    failures = sum(_failed_requests(runs) for runs in results.values())
    return [
        Row(
            "observed",
            "turns/s as in 1, /metrics on and X-Request-ID sent vs /metrics off and none sent",
            "turns/s",
            median(rates["observed"]),
            median(rates["unobserved"]),
            chatkeep_name="metrics on",
            baseline_name="metrics off",
            target=OBSERVED_TARGET,
            note=f"{failures} failed requests" if failures else "",
            runs=rates,
            failures=failures,
            cpu_us=_cpu(results, "observed", "unobserved"),
        )
    ]


def http_limits(rig: Rig) -> list[Row]:
    """11. Turns/s as in 1 with the HTTP limits (head size, header and body timeouts) against without them."""
    llm = rig.llm()
    servers = {"limits": rig.chatkeep(llm), "no limits": rig.chatkeep(llm, http_limits=False)}
    # A cost of a few percent is measured against noise of about as much: twice the usual runs.
    results = rig.turn_rates(servers, stream=False, runs=2 * rig.plan.runs)
    rig.stop(servers["no limits"])
    rates = _rates(results)
    failures = sum(_failed_requests(runs) for runs in results.values())
    cpu = f"CPU us a turn: {median(rates['limits cpu_us']):.0f} vs {median(rates['no limits cpu_us']):.0f}"
    return [
        Row(
            "http_limits",
            "turns/s as in 1, with the HTTP limits (431, header and body timeouts) vs uvicorn's httptools alone",
            "turns/s",
            median(rates["limits"]),
            median(rates["no limits"]),
            chatkeep_name="limits",
            baseline_name="no limits",
            target=HTTP_LIMITS_TARGET,
            note="; ".join(part for part in (f"{failures} failed requests" if failures else "", cpu) if part),
            runs=rates,
            failures=failures,
            cpu_us=_cpu(results, "limits", "no limits"),
        )
    ]


def responses(rig: Rig) -> list[Row]:
    """9. Turns/s as in 1 through OpenAI's POST /v1/responses (each chat as the conversation) against native turns."""
    llm = rig.llm()
    servers = {"responses": rig.chatkeep(llm), "native": rig.chatkeep(llm)}
    results = rig.turn_rates(servers, stream=False, runs=rig.plan.runs, responses={"responses"})
    rig.stop(servers["native"])
    rates = _rates(results)
    failures = sum(_failed_requests(runs) for runs in results.values())
    return [
        Row(
            "responses",
            "turns/s as in 1, through POST /v1/responses with a conversation vs POST /chats/{id}/messages",
            "turns/s",
            median(rates["responses"]),
            median(rates["native"]),
            chatkeep_name="/v1/responses",
            baseline_name="native",
            target=RESPONSES_TARGET,
            note=f"{failures} failed requests" if failures else "",
            runs=rates,
            failures=failures,
            cpu_us=_cpu(results, "responses", "native"),
        )
    ]


def burst(rig: Rig) -> list[Row]:
    """3. Many chats post one turn each at once to a slow LLM: wall time until the last answer."""
    plan = rig.plan
    llm = rig.llm(latency=plan.burst_latency)
    servers = {"chatkeep": rig.chatkeep(llm), "relay": rig.relay(llm)}
    results = rig.bursts(servers, runs=plan.burst_runs)
    for server in [*servers.values(), llm]:
        rig.stop(server)
    seconds = {label: [run["seconds"] for run in runs] for label, runs in results.items()}
    failed = sum(int(run["failed"]) for runs in results.values() for run in runs)
    measure = f"{plan.burst_chats:,} chats post one turn each at once, {plan.burst_latency:g} s LLM: wall time"
    note = f"{failed} turns failed" if failed else ""
    chatkeep, relay = median(seconds["chatkeep"]), median(seconds["relay"])
    cpu = _burst_cpu(results, "chatkeep", "relay")
    return [
        Row(
            "burst",
            measure,
            "s",
            chatkeep,
            relay,
            target=BURST_TARGET,
            note=note,
            runs=seconds,
            failures=failed,
            cpu_us=cpu,
        )
    ]


def _burst_cpu(results: dict[str, list[dict[str, float]]], chatkeep: str, baseline: str) -> dict[str, float]:
    """The median CPU µs a turn of each side's bursts (bench.rig's `cpu_us`, `db_cpu_us`)."""
    cpu: dict[str, float] = {}
    for side, label in (("chatkeep", chatkeep), ("baseline", baseline)):
        for figure, key in (("cpu_us", side), ("db_cpu_us", f"{side} db")):
            found = [run[figure] for run in results.get(label, []) if figure in run]
            if found:
                cpu[key] = median(found)
    return cpu


def history(rig: Rig) -> list[Row]:
    """4. Turn latency on chats with 400 and with 5,000 messages of history against chats with 5
    (chatkeep alone, its rolling summaries on), the three kinds of chat taking turns."""
    plan = rig.plan
    url = rig.chatkeep(rig.llm()).url
    fills = {"short": (plan.history_samples, SHORT_FILL_TURNS), "warm": (1, WARM_TURNS)}
    fills |= {"long": (LONG_CHATS, plan.history_fill_turns), "longest": (LONGEST_CHATS, plan.longest_fill_turns)}
    chats = {kind: asyncio.run(client.create_chats(url, count)) for kind, (count, _) in fills.items()}
    for kind, (_, turns) in fills.items():
        asyncio.run(client.fill_chats(url, chats[kind], turns))
    order = [
        chat
        for i, short in enumerate(chats["short"])
        for chat in (chats["long"][i % LONG_CHATS], short, chats["longest"][i % LONGEST_CHATS])
    ]
    latencies = [seconds * 1000 for seconds in asyncio.run(client.turn_latencies(url, order, 1))]
    runs = {"long": latencies[0::3], "short": latencies[1::3], "longest": latencies[2::3]}
    return [
        _history_row("history", runs["long"], runs["short"], 2 * plan.history_fill_turns),
        _history_row("history_longest", runs["longest"], runs["short"], 2 * plan.longest_fill_turns),
    ]


def _history_row(key: str, long: list[float], short: list[float], long_messages: int) -> Row:
    short_messages = 2 * SHORT_FILL_TURNS + 1
    measure = f"turn latency at {long_messages:,} vs {short_messages} messages of history (sequential)"
    return Row(
        key,
        measure,
        "ms",
        median(long),
        median(short),
        chatkeep_name=f"at {long_messages:,} msgs",
        baseline_name=f"at {short_messages} msgs",
        target=HISTORY_TARGET,
        runs={"long": long, "short": short},
    )


def memory(rig: Rig) -> list[Row]:
    """5. Bytes per stored message beyond its content, in the memory store (its own process)."""
    turns = rig.plan.memory_turns
    argv = pinned(SERVER_CORE, [PYTHON, "-m", "bench.memory_probe", "--turns", str(turns)])
    found = json.loads(rig.processes.run(argv, timeout=MEMORY_TIMEOUT_SECONDS).strip().splitlines()[-1])
    measure = f"memory per stored message beyond its content (memory store, {turns:,} turns)"
    runs = {name: [float(value)] for name, value in found.items()}
    return [Row("memory", measure, "B", found["beyond_content_per_message"], None, target=MEMORY_TARGET, runs=runs)]


def stores(rig: Rig) -> list[Row]:
    """6. Turns/s as in 1 on the SQLite and PostgreSQL stores (a rate limit set), each against
    the durable relay on the same store (and the bare relay)."""
    workdir = rig.processes.workdir
    urls = {"sqlite": (f"sqlite:///{workdir / 'bench.db'}", f"sqlite:///{workdir / 'ceiling.db'}")}
    with ExitStack() as stack:
        try:
            urls["postgresql"] = (
                stack.enter_context(scratch_database()),
                stack.enter_context(scratch_database(name=CEILING_DATABASE)),
            )
        except (OSError, asyncpg.PostgresError) as error:
            print(f"bench: no scratch PostgreSQL database ({error}); measuring SQLite alone", flush=True)
        rows = _store_rows(rig, urls)
    if "postgresql" not in urls:
        unreachable = "n/a (PostgreSQL not reachable)"
        rows += [_store_row(key, "postgresql", {}, note=unreachable) for key in ("postgresql", "postgresql_bare")]
    return rows


def _store_rows(rig: Rig, urls: dict[str, tuple[str, str]]) -> list[Row]:
    llm = rig.llm()
    servers: dict[str, Server] = {}
    notes: dict[str, str] = {}
    for name, (url, ceiling_url) in urls.items():
        try:
            servers[name] = rig.chatkeep(llm, store=url, rate_limit=RATE_LIMIT)
        except StartError as error:
            print(f"bench: chatkeep refused {name} ({error.detail.splitlines()[-1]})", flush=True)
            notes[name] = f"n/a (chatkeep refused {name}://)"
            continue
        servers[f"{name} {CEILING}"] = rig.context_relay(llm, store=ceiling_url)
    if not servers:
        return [_store_row(key, name, {}, note=notes[name]) for name in urls for key in (name, f"{name}_bare")]
    results = rig.turn_rates({**servers, BARE: rig.relay(llm)}, stream=False, runs=rig.plan.store_runs)
    for server in servers.values():
        rig.stop(server)
    rows: list[Row] = []
    for name in urls:
        note = notes.get(name, "")
        rows.append(_store_row(name, name, results, note=note, baseline=f"{name} {CEILING}", target=STORE_TARGET))
        rows.append(_store_row(f"{name}_bare", name, results, note=note, baseline=BARE))
    return rows


def _store_row(
    key: str,
    name: str,
    results: dict[str, list[LoadRun]],
    *,
    note: str,
    baseline: str = BARE,
    target: Target | None = None,
) -> Row:
    store = "PostgreSQL" if name == "postgresql" else "SQLite"
    ceiling = baseline != BARE
    measure = f"turns/s as in 1, {store} store, rate limit set" + ("" if ceiling else " (information)")
    if name not in results:
        label = f"durable relay ({store})" if ceiling else BARE
        return Row(key, measure, "turns/s", None, None, label, target=target, note=note)
    row = _rate_row(key, measure, results, target, chatkeep=name, baseline=baseline)
    database = "" if name == "postgresql" else "SQLite runs in the server's process: its CPU is the server's"
    note = "; ".join(part for part in (note, row.note, database) if part)
    return replace(row, baseline_name=f"durable relay ({store})" if ceiling else BARE, note=note)


def overload(rig: Rig) -> list[Row]:
    """7. 5x the bound on turns in flight posted at once to a slow LLM: 503s at once, none lost."""
    plan = rig.plan
    offered = OVERLOAD_FACTOR * plan.overload_bound
    llm = rig.llm(latency=plan.overload_latency)
    servers = {"bounded": rig.chatkeep(llm, max_turns_in_flight=plan.overload_bound), "default": rig.chatkeep(llm)}
    results = rig.bursts(servers, runs=plan.overload_runs, chats=offered, client="bench.overload")
    for server in [*servers.values(), llm]:
        rig.stop(server)
    relay = rig.relay(rig.llm())
    relay_bursts = rig.bursts({"relay": relay}, runs=plan.overload_runs, chats=offered)["relay"]
    expected = {"bounded": plan.overload_bound, "default": min(offered, DEFAULT_TURNS_IN_FLIGHT)}
    for label, found in results.items():
        for run in found:
            run["off_bound"] = max(0, abs(run["accepted"] - expected[label]) - OVERLOAD_SLACK)
    figures = _figures(results) | {"relay instant ms": [run["seconds"] * 1000 for run in relay_bursts]}
    figures["relay instant cpu_us"] = [run["cpu_us"] for run in relay_bursts]
    return [_overload_row(plan, figures)]


def live_streams(rig: Rig) -> list[Row]:
    """10. Streamed turns held open at once by one core: replies of 200 chunks paced at 40 a
    second, the count stepped up until the p99 delay a chunk picks up on its way passes 50 ms;
    then, on a fresh server, that many again for the memory an open stream takes."""
    llm = rig.llm(chunks=LIVE_CHUNKS, chunk_delay=1 / LIVE_RATE)
    servers: dict[str, Callable[[], Server]] = {
        # Neither bound may be what stops chatkeep: the relays have none.
        "chatkeep": lambda: rig.chatkeep(llm, max_turns_in_flight=LIVE_MOST, llm_connections=LIVE_MOST),
        CEILING: lambda: rig.context_relay(llm),
        BARE: lambda: rig.relay(llm),
    }
    steps: dict[str, dict[int, dict[str, float]]] = {}
    held: dict[str, int] = {}
    memory: dict[str, float] = {}
    for label, start in servers.items():
        steps[label] = _most_streams(rig, start())
        held[label] = _held(steps[label])
        rig.stop(start())
        memory[label] = rig.streams(start(), held[label])["bytes_per_stream"] if held[label] else 0.0

    def at_most(label: str) -> str:
        if not held[label]:
            return f"{label}: none held"
        p99 = steps[label][held[label]]["p99_ms"]
        return f"{label}: p99 {p99:.0f} ms at {held[label]:,}, {memory[label] / 1024:.0f} KiB per open stream"

    measure = (
        f"live streams held by one core, {LIVE_CHUNKS}-chunk replies at {LIVE_RATE}/s, "
        f"p99 added delay <= {LIVE_P99_MS:g} ms"
    )
    runs = {label: [float(count) for count in tried] for label, tried in steps.items()}
    runs |= {f"{label} p99_ms": [result["p99_ms"] for result in tried.values()] for label, tried in steps.items()}
    runs |= {f"{label} bytes_per_stream": [memory[label]] for label in servers}
    note = "; ".join(map(at_most, servers))
    chatkeep = held["chatkeep"]
    rows = [
        Row("live_streams", measure, "streams", chatkeep, held[CEILING], CEILING, target=LIVE_STREAMS_TARGET),
        Row("live_streams_bare", f"{measure} (information)", "streams", chatkeep, held[BARE], BARE),
    ]
    return [replace(row, note=note, runs=runs) for row in rows]


def _most_streams(rig: Rig, server: Server) -> dict[int, dict[str, float]]:
    """Each count of streams tried on `server`, doubled from LIVE_FIRST while held, then bisected."""
    tried: dict[int, dict[str, float]] = {}
    count = LIVE_FIRST
    while count <= LIVE_MOST:
        tried[count] = rig.streams(server, count)
        if not _holds(tried[count]):
            break
        count *= 2
    failed = min((n for n in tried if not _holds(tried[n])), default=None)
    held = _held(tried)
    for _ in range(rig.plan.live_bisections):
        count = (held + failed) // 2 if failed is not None else held
        if count in (held, failed):
            break
        tried[count] = rig.streams(server, count)
        held, failed = (count, failed) if _holds(tried[count]) else (held, count)
    return tried


def _holds(result: dict[str, float]) -> bool:
    return result["failed"] == 0 and result["p99_ms"] <= LIVE_P99_MS


def _held(tried: dict[int, dict[str, float]]) -> int:
    return max((count for count, result in tried.items() if _holds(result)), default=0)


def _figures(results: dict[str, list[dict[str, float]]]) -> dict[str, list[float]]:
    """Every figure of every run as `label figure`: one value per run that has it."""
    runs: dict[str, list[float]] = {}
    for label, found in results.items():
        for run in found:
            for name, value in run.items():
                runs.setdefault(f"{label} {name}", []).append(value)
    return runs


def _overload_row(plan: Plan, runs: dict[str, list[float]]) -> Row:
    def shown(key: str, spec: str) -> str:
        return "n/a" if key not in runs else format(median(runs[key]), spec)

    offered = OVERLOAD_FACTOR * plan.overload_bound
    breaches = {
        name: sum(sum(runs.get(f"{label} {name}", [])) for label in ("bounded", "default")) for name in BREACHES
    }
    refusals = (
        f"503 in p50 {shown('bounded refused_p50_ms', '.1f')} ms, p99 {shown('bounded refused_p99_ms', '.1f')} ms"
    )
    accepted = f"accepted {shown('bounded accepted', 'g')}, refused {shown('bounded refused', 'g')} ({refusals})"
    default = f"accepted {shown('default accepted', 'g')} of {offered} (default bound {DEFAULT_TURNS_IN_FLIGHT:,})"
    measure = f"overload: {offered} turns at once, {OVERLOAD_FACTOR}x a bound of {plan.overload_bound}"
    relay_ms = median(runs["relay instant ms"])
    return Row(
        "overload",
        f"{measure}, {plan.overload_latency:g} s LLM: p99 time to a 503, vs the relay answering all, instant LLM",
        "ms",
        median(runs["bounded refused_p99_ms"]) if "bounded refused_p99_ms" in runs else None,
        relay_ms,
        chatkeep_name="503 p99",
        baseline_name="relay, instant LLM",
        target=OVERLOAD_TARGET,
        note="; ".join(f"{count:g} {BREACHES[name]}" for name, count in breaches.items() if count)
        or "Retry-After on every 503, none lost or doubled",
        runs=runs,
        failures=int(sum(breaches.values())),
        chatkeep_text=f"{accepted}, accepted done in {shown('bounded accepted_seconds', '.2f')} s; "
        f"{default}, done in {shown('default accepted_seconds', '.2f')} s",
        baseline_text=f"the relay answered all {offered} from an instant LLM in {relay_ms:.1f} ms",
        cpu_us={"chatkeep": median(runs["bounded cpu_us"]), "baseline": median(runs["relay instant cpu_us"])},
    )


def _failed_requests(runs: list[LoadRun]) -> int:
    return sum(run.wrk.errors for run in runs)


def _rates(results: dict[str, list[LoadRun]]) -> dict[str, list[float]]:
    """Turns/s of each run by label, the server's CPU microseconds per turn as `label cpu_us`, and
    its database's (PostgreSQL backends) as `label db_cpu_us`."""
    rates = {label: [run.rate for run in runs] for label, runs in results.items()}
    rates |= {f"{label} cpu_us": [run.cpu_us_per_turn for run in runs] for label, runs in results.items()}
    for label, runs in results.items():
        database = [spent for run in runs if (spent := run.database_cpu_us_per_turn) is not None]
        if database:
            rates[f"{label} db_cpu_us"] = database
    return rates


def _cpu(results: dict[str, list[LoadRun]], chatkeep: str, baseline: str) -> dict[str, float]:
    """The median CPU µs a turn of each side's server, and of its database when it has one."""
    cpu: dict[str, float] = {}
    for side, label in (("chatkeep", chatkeep), ("baseline", baseline)):
        runs = results.get(label, [])
        if runs:
            cpu[side] = median(run.cpu_us_per_turn for run in runs)
        database = [spent for run in runs if (spent := run.database_cpu_us_per_turn) is not None]
        if database:
            cpu[f"{side} db"] = median(database)
    return cpu


def _rate_row(
    key: str,
    measure: str,
    results: dict[str, list[LoadRun]],
    target: Target | None,
    *,
    chatkeep: str = "chatkeep",
    baseline: str = BARE,
) -> Row:
    """chatkeep's runs (`chatkeep`) against `baseline`'s, with the raw runs of both."""
    rates = {name: values for name, values in _rates(results).items() if _of(name, (chatkeep, baseline))}
    failures = _failed_requests(results[chatkeep]) + _failed_requests(results[baseline])
    note = f"{failures} failed requests" if failures else ""
    return Row(
        key,
        measure,
        "turns/s",
        median(rates[chatkeep]),
        median(rates[baseline]),
        baseline,
        target=target,
        note=note,
        runs=rates,
        failures=failures,
        cpu_us=_cpu(results, chatkeep, baseline),
    )


def _of(name: str, labels: tuple[str, ...]) -> bool:
    """Whether the figure `name` (`label` or `label figure`) is one of `labels`'."""
    return any(
        name == label or (name.startswith(label + " ") and " " not in name[len(label) + 1 :]) for label in labels
    )


def search(rig: Rig) -> list[Row]:
    """12. p99 search latency at a million messages on PostgreSQL, against the bare statement's."""
    plan = rig.plan
    try:
        with scratch_database(name=SEARCH_DATABASE) as url:
            found = search_bench.measure(url, count=plan.search_messages, queries=plan.search_queries)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"bench: no scratch PostgreSQL database ({error})", flush=True)
        unreachable = "n/a (PostgreSQL not reachable)"
        return [Row("search", "search p99 latency, PostgreSQL", "ms", None, None, note=unreachable)]
    realistic = [ms for shape in search_bench.SHAPES for ms in found.store_ms[shape]]
    raw = [ms for shape in search_bench.SHAPES for ms in found.raw_ms[shape]]
    shapes = "; ".join(
        f"{shape} p50/p99 {median(found.store_ms[shape]):.1f}/{search_bench.p99(found.store_ms[shape]):.1f} ms"
        f" ({found.hits[shape]:g} hits)"
        for shape in (*search_bench.SHAPES, search_bench.WORST)
    )
    built = f"COPY {found.load_seconds:.0f} s, the index built over them by m015 in {found.index_seconds:.0f} s"
    note = f"{shapes} (outside the target); {built}"
    measure = f"search p99, {plan.search_messages:,} messages of one owner, PostgreSQL (4 query shapes)"
    runs = {f"store {shape}": ms for shape, ms in found.store_ms.items()}
    runs |= {f"raw {shape}": ms for shape, ms in found.raw_ms.items()}
    row = Row(
        "search",
        measure,
        "ms",
        search_bench.p99(realistic),
        search_bench.p99(raw),
        baseline_name="bare SQL",
        target=SEARCH_TARGET,
        note=note,
        runs=runs,
    )
    return [row]


def scale_out(rig: Rig) -> list[Row]:
    """13. chatkeep --workers N on PostgreSQL (N = 1, 2, 4, as many as the machine has cores),
    the database on cores of its own where there are enough, and the per-chat FIFO checked after."""
    cores = os.cpu_count() or 1
    counts = [workers for workers in SCALE_WORKERS if workers <= cores]
    llm = rig.llm()
    rows: list[Row] = []
    try:
        with private_cluster(rig.processes, range(cores)) as cluster:
            for workers in counts:
                server_cores, database_cores, layout = scale_layout(workers, cores)
                cluster.pin(database_cores)
                with scratch_database(cluster.admin_url, SCALE_DATABASE) as url:
                    rows.append(_scale_row(rig, llm, url, workers, server_cores, layout, rows))
    except NoCluster as error:
        print(f"bench: no PostgreSQL server of its own ({error}); on the machine's, not pinned", flush=True)
        for workers in counts:
            server_cores, _, _ = scale_layout(workers, cores)
            layout = "the machine's PostgreSQL, shared and not pinned (no server programs to start one)"
            with scratch_database(name=SCALE_DATABASE) as url:
                rows.append(_scale_row(rig, llm, url, workers, server_cores, layout, rows))
    return rows


def scale_layout(workers: int, cores: int) -> tuple[set[int], set[int], str]:
    """The cores of chatkeep's workers and of PostgreSQL, and how they share the machine. Load (wrk,
    the fake LLM) keeps its core; workers get one each, the database as many again when there are
    enough, else what is left, else it shares the workers'; with too few cores for the workers
    alone, everything shares every core."""
    free = [core for core in range(cores) if core != LOAD_CORE]
    if len(free) < workers:
        return set(range(cores)), set(range(cores)), f"{cores} cores: workers, PostgreSQL and load share them all"
    server, rest = set(free[:workers]), free[workers:]
    if not rest:
        return server, server, f"PostgreSQL shares the workers' core(s) {_cores(server)}"
    database = set(rest[:workers])
    return server, database, f"workers on cores {_cores(server)}, PostgreSQL on {_cores(database)}"


def _cores(cores: set[int]) -> str:
    return ",".join(map(str, sorted(cores)))


def _scale_row(rig: Rig, llm: Server, url: str, workers: int, cores: set[int], layout: str, earlier: list[Row]) -> Row:
    server = rig.chatkeep(llm, store=url, workers=workers, cores=cores)
    results = rig.turn_rates({"chatkeep": server}, stream=False, runs=rig.plan.store_runs)
    fifo_chats = asyncio.run(client.create_chats(server.url, FIFO_CHATS))
    breaches = asyncio.run(client.fifo_breaches(server.url, fifo_chats))
    rig.stop(server)
    rates = _rates(results)
    rate = median(rates["chatkeep"])
    one = earlier[0].chatkeep if earlier else rate
    failures = _failed_requests(results["chatkeep"])
    fifo = f"FIFO held on {FIFO_CHATS} chats" if not breaches else f"FIFO broken on {breaches} of {FIFO_CHATS} chats"
    note = "; ".join(part for part in (f"{failures} failed requests" if failures else "", layout, fifo) if part)
    cpu = _cpu(results, "chatkeep", "-")
    # What the turns kept busy: past what the cores given could run, more workers cannot help.
    busy = (cpu.get("chatkeep", 0.0) + cpu.get("chatkeep db", 0.0)) * rate / 1e6
    note += f"; chatkeep and PostgreSQL kept {busy:.1f} cores busy"
    return Row(
        f"scale_out_{workers}",
        f"turns/s as in 1, PostgreSQL, --workers {workers} (information: the ratio is to 1 worker)",
        "turns/s",
        rate,
        one if earlier else None,
        "1 worker",
        note=note,
        runs=rates,
        failures=failures + breaches,
        cpu_us=cpu,
    )


MEASURES: dict[str, Callable[[Rig], list[Row]]] = {
    "turns": turns,
    "streamed": streamed,
    "burst": burst,
    "history": history,
    "memory": memory,
    "stores": stores,
    "overload": overload,
    "observed": observed,
    "responses": responses,
    "live_streams": live_streams,
    "http_limits": http_limits,
    "search": search,
    "scale_out": scale_out,
}
