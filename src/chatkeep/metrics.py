"""What operators count: requests, LLM calls, tokens, turns queued, replays, breaker, summaries.

`Metrics` is the seam: the HTTP layer, the service, the turn queue and the LLM wrappers report
through it and never touch a metrics library themselves. `NoMetrics` is the same seam doing
nothing, for `CHATKEEP_METRICS=false`.

`PrometheusMetrics` keeps its figures in plain Python (a turn's updates are a few dict
operations) and lets prometheus-client render them, through a collector, when `/metrics` is
scraped: prometheus-client's own metric objects take a lock and several calls per update, a
dozen updates a turn, which cost a visible share of a turn (docs/performance.md). Under
`chatkeep serve --workers N` each worker also writes its figures to a file in a shared directory
every SNAPSHOT_SECONDS and when it stops, and a scrape of any worker adds up every worker's:
counts and histograms over all of them, gauges over the workers still alive (the same rules as
prometheus-client's multiprocess mode). Other workers' figures are then at most SNAPSHOT_SECONDS
old.

Routes are labelled by their template (`/chats/{chat_id}`), never by the raw path, so the
number of series stays bounded whatever clients send.
"""

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from chatkeep.domain import Usage

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
DIRECTORY_VARIABLE = "CHATKEEP_METRICS_DIR"  # set by `chatkeep serve --workers N` for its workers
SNAPSHOT_SECONDS = 1.0
REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LLM_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
FIRST_TOKEN_SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WAIT_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics(Protocol):
    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is the matched template, or "unmatched"."""
        ...

    def llm_call(self, outcome: str, seconds: float, *, first_token_seconds: float | None, usage: Usage | None) -> None:
        """One call to the LLM: "ok" or the error's slug; streamed calls tell when the first token came."""
        ...

    def turns_in_flight(self, change: int) -> None: ...

    def turns_waiting(self, change: int) -> None: ...

    def turn_waited(self, seconds: float) -> None:
        """How long a turn waited for its chat (this process's queue and other processes' turns)."""
        ...

    def idempotent_replay(self) -> None: ...

    def breaker_open(self, is_open: bool) -> None: ...

    def summary_made(self, outcome: str) -> None:
        """A chat summary refreshed: "made", or "failed" when the LLM could not make it."""
        ...

    def rolling_summary_updated(self, outcome: str) -> None:
        """A batch of older messages summarized into a chat's rolling summary ("updated"), or "failed"."""
        ...

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (of every worker, under --workers N)."""
        ...

    def start(self) -> None:
        """Begin sharing this process's figures with the other workers (under --workers N)."""
        ...

    async def aclose(self) -> None:
        """Stop counting; other workers' scrapes keep this one's counts but not its gauges."""
        ...


class NoMetrics:
    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        pass

    def llm_call(self, outcome: str, seconds: float, *, first_token_seconds: float | None, usage: Usage | None) -> None:
        pass

    def turns_in_flight(self, change: int) -> None:
        pass

    def turns_waiting(self, change: int) -> None:
        pass

    def turn_waited(self, seconds: float) -> None:
        pass

    def idempotent_replay(self) -> None:
        pass

    def breaker_open(self, is_open: bool) -> None:
        pass

    def summary_made(self, outcome: str) -> None:
        pass

    def rolling_summary_updated(self, outcome: str) -> None:
        pass

    def render(self) -> bytes:
        return b""

    def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]
Values = dict[Labels, float] | dict[Labels, list[float]]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its kind, help text, label names and (for a histogram) bucket bounds."""

    name: str
    kind: Kind
    help: str
    labels: Labels = ()
    buckets: tuple[float, ...] = ()
    combine: Literal["sum", "max"] = "sum"  # across live workers, for a gauge


FAMILIES = (
    Family("chatkeep_http_requests", "counter", "HTTP requests answered", ("method", "route", "status")),
    Family(
        "chatkeep_http_request_duration_seconds",
        "histogram",
        "Time to answer (streams: to their end)",
        ("method", "route"),
        REQUEST_SECONDS,
    ),
    Family("chatkeep_llm_calls", "counter", "Calls to the LLM by outcome", ("outcome",)),
    Family("chatkeep_llm_call_duration_seconds", "histogram", "Time of an LLM call, retries included", (), LLM_SECONDS),
    Family(
        "chatkeep_llm_time_to_first_token_seconds",
        "histogram",
        "Time to the first streamed token",
        (),
        FIRST_TOKEN_SECONDS,
    ),
    Family("chatkeep_llm_prompt_tokens", "counter", "Prompt tokens the LLM reported"),
    Family("chatkeep_llm_completion_tokens", "counter", "Completion tokens the LLM reported"),
    Family("chatkeep_turns_in_flight", "gauge", "Turns running or waiting"),
    Family("chatkeep_turns_waiting", "gauge", "Turns waiting for their chat"),
    Family("chatkeep_turn_wait_seconds", "histogram", "Time a turn waited for its chat", (), WAIT_SECONDS),
    Family("chatkeep_idempotent_replays", "counter", "Requests answered with an Idempotency-Key's stored answer"),
    Family("chatkeep_llm_breaker_open", "gauge", "1 while the LLM circuit breaker is open", combine="max"),
    Family("chatkeep_summaries", "counter", "Chat summary refreshes by outcome", ("outcome",)),
    Family("chatkeep_rolling_summary_updates", "counter", "Rolling summary updates by outcome", ("outcome",)),
)
NO_LABELS: Labels = ()


class PrometheusMetrics:
    def __init__(self, directory: str | None = None) -> None:
        self._directory = Path(directory) if directory else None
        self._values: dict[str, Values] = {family.name: {} for family in FAMILIES}
        # The hot ones, by name: a turn touches each of these once.
        self._requests: dict[Labels, float] = self._counter("chatkeep_http_requests")
        self._request_seconds = self._histogram("chatkeep_http_request_duration_seconds")
        self._llm_calls = self._counter("chatkeep_llm_calls")
        self._llm_seconds = self._histogram("chatkeep_llm_call_duration_seconds")
        self._first_token = self._histogram("chatkeep_llm_time_to_first_token_seconds")
        self._waited = self._histogram("chatkeep_turn_wait_seconds")
        self._gauges = self._counter("chatkeep_turns_in_flight"), self._counter("chatkeep_turns_waiting")
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(_Collector(self))
        self._snapshots: asyncio.Task[None] | None = None

    def _counter(self, name: str) -> dict[Labels, float]:
        values: dict[Labels, float] = self._values[name]  # type: ignore[assignment]
        return values

    def _histogram(self, name: str) -> dict[Labels, list[float]]:
        values: dict[Labels, list[float]] = self._values[name]  # type: ignore[assignment]
        return values

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        self._requests[key] = self._requests.get(key, 0.0) + 1
        _observe(self._request_seconds, (method, route), REQUEST_SECONDS, seconds)

    def llm_call(self, outcome: str, seconds: float, *, first_token_seconds: float | None, usage: Usage | None) -> None:
        key = (outcome,)
        self._llm_calls[key] = self._llm_calls.get(key, 0.0) + 1
        _observe(self._llm_seconds, NO_LABELS, LLM_SECONDS, seconds)
        if first_token_seconds is not None:
            _observe(self._first_token, NO_LABELS, FIRST_TOKEN_SECONDS, first_token_seconds)
        if usage is not None:
            _add(self._counter("chatkeep_llm_prompt_tokens"), NO_LABELS, usage.prompt_tokens)
            _add(self._counter("chatkeep_llm_completion_tokens"), NO_LABELS, usage.completion_tokens)

    def turns_in_flight(self, change: int) -> None:
        _add(self._gauges[0], NO_LABELS, change)

    def turns_waiting(self, change: int) -> None:
        _add(self._gauges[1], NO_LABELS, change)

    def turn_waited(self, seconds: float) -> None:
        _observe(self._waited, NO_LABELS, WAIT_SECONDS, seconds)

    def idempotent_replay(self) -> None:
        _add(self._counter("chatkeep_idempotent_replays"), NO_LABELS, 1)

    def breaker_open(self, is_open: bool) -> None:
        self._counter("chatkeep_llm_breaker_open")[NO_LABELS] = 1.0 if is_open else 0.0

    def summary_made(self, outcome: str) -> None:
        _add(self._counter("chatkeep_summaries"), (outcome,), 1)

    def rolling_summary_updated(self, outcome: str) -> None:
        _add(self._counter("chatkeep_rolling_summary_updates"), (outcome,), 1)

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def start(self) -> None:
        if self._directory is not None:
            self._snapshots = asyncio.create_task(self._share(), name="chatkeep-metrics-snapshots")

    async def aclose(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshots
        if self._directory is not None:
            self._write_snapshot(stopped=True)

    async def _share(self) -> None:
        while True:
            self._write_snapshot(stopped=False)
            await asyncio.sleep(SNAPSHOT_SECONDS)

    def _write_snapshot(self, *, stopped: bool) -> None:
        """This worker's figures, for the others' scrapes: written whole, then renamed into place."""
        assert self._directory is not None
        snapshot = {"pid": os.getpid(), "stopped": stopped, "values": self._rows()}
        path = self._directory / f"chatkeep-{os.getpid()}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(snapshot))
        temporary.replace(path)

    def _rows(self) -> dict[str, list[list[object]]]:
        rows: dict[str, list[list[object]]] = {}
        for name, values in self._values.items():
            rows[name] = [[list(labels), value] for labels, value in values.items()]
        return rows

    def figures(self) -> dict[str, Values]:
        """Every worker's figures combined (this one's alone without a shared directory)."""
        if self._directory is None:
            return self._values
        combined: dict[str, dict[Labels, object]] = {family.name: {} for family in FAMILIES}
        for snapshot in self._snapshots_of_others():
            for family in FAMILIES:
                live = not snapshot["stopped"] and _alive(snapshot["pid"])
                if family.kind == "gauge" and not live:
                    continue
                for labels, value in snapshot["values"].get(family.name, []):
                    _combine(family, combined[family.name], tuple(labels), value)
        for family in FAMILIES:
            for labels, value in self._values[family.name].items():
                _combine(family, combined[family.name], labels, value)
        return combined  # type: ignore[return-value]

    def _snapshots_of_others(self) -> Iterator[dict[str, Any]]:
        assert self._directory is not None
        mine = f"chatkeep-{os.getpid()}.json"
        for path in self._directory.glob("chatkeep-*.json"):
            if path.name != mine:
                with contextlib.suppress(OSError, orjson.JSONDecodeError):
                    yield orjson.loads(path.read_bytes())


def _add(values: dict[Labels, float], labels: Labels, amount: float) -> None:
    values[labels] = values.get(labels, 0.0) + amount


def _observe(histogram: dict[Labels, list[float]], labels: Labels, bounds: tuple[float, ...], value: float) -> None:
    """Count `value` in its bucket (the first bound at or above it; the last slot is +Inf) and add it to the sum."""
    counts = histogram.get(labels)
    if counts is None:
        counts = histogram[labels] = [0.0] * (len(bounds) + 2)
    counts[bisect_left(bounds, value)] += 1
    counts[-1] += value


def _combine(family: Family, into: dict[Labels, object], labels: Labels, value: object) -> None:
    before = into.get(labels)
    if before is None:
        into[labels] = list(value) if isinstance(value, list) else value
    elif isinstance(before, list) and isinstance(value, list):
        into[labels] = [a + b for a, b in zip(before, value, strict=True)]
    elif isinstance(before, float | int) and isinstance(value, float | int):
        into[labels] = max(before, value) if family.combine == "max" else before + value


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Collector:
    """Hands the figures to prometheus-client as metric families, at scrape time."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        figures = self._metrics.figures()
        for family in FAMILIES:
            yield _family(family, figures[family.name])

    def describe(self) -> Iterator[Metric]:
        for family in FAMILIES:
            yield _family(family, {})


def _family(family: Family, values: Values) -> Metric:
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
        if not values and not family.labels:
            values = {NO_LABELS: [0.0] * (len(family.buckets) + 2)}
        for labels, counts in values.items():
            assert isinstance(counts, list)
            histogram.add_metric(list(labels), _cumulative(family.buckets, counts), counts[-1])
        return histogram
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=family.labels)
    for labels, value in values.items():
        assert isinstance(value, float | int)
        metric.add_metric(list(labels), float(value))
    if not values and not family.labels:
        metric.add_metric([], 0.0)  # a figure with no labels is there from the start, at zero
    return metric


def _cumulative(bounds: tuple[float, ...], counts: list[float]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for bound, count in zip((*bounds, float("inf")), counts[:-1], strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return buckets
