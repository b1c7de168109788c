"""What operators count: requests, LLM calls, tokens, turns in line, replays, breaker, summaries.

`Metrics` is the seam: the HTTP layer, the service, the turn queue and the LLM wrappers report
through it and never touch prometheus-client themselves. `PrometheusMetrics` keeps them in a
registry of its own (so every app, and every test, counts alone) and renders the text format
for `/metrics`. Under `chatkeep serve --workers N` each worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR, which the CLI sets up, and a scrape of any worker adds up every
worker's files: prometheus-client's multiprocess mode. `NoMetrics` is the same seam doing
nothing, for `CHATKEEP_METRICS=false`.

Routes are labelled by their template (`/chats/{chat_id}`), never by the raw path, so the
number of series stays bounded whatever clients send.
"""

import os
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from chatkeep.domain import Usage

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
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
        """How long a turn waited for its chat (this process's line and other processes' turns)."""
        ...

    def idempotent_replay(self) -> None: ...

    def breaker_open(self, is_open: bool) -> None: ...

    def summary_made(self, outcome: str) -> None:
        """A summary fold: "made", or "failed" when the LLM could not make it."""
        ...

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (of every worker, under --workers N)."""
        ...

    def close(self) -> None:
        """This process stops counting."""
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

    def render(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class PrometheusMetrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))
        self._exposed = CollectorRegistry(auto_describe=True)
        # In multiprocess mode values live in files that MultiProcessCollector reads; the
        # metrics themselves are registered nowhere, or each would be exposed twice.
        registry = None if self.multiprocess else self._exposed
        if self.multiprocess:
            MultiProcessCollector(self._exposed)  # type: ignore[no-untyped-call]
        self._requests = Counter(
            "chatkeep_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self._request_seconds = Histogram(
            "chatkeep_http_request_duration_seconds", "Time to answer (streams: to their end)", ["method", "route"],
            registry=registry,
        )  # fmt: skip
        self._llm_calls = Counter("chatkeep_llm_calls", "Calls to the LLM by outcome", ["outcome"], registry=registry)
        self._llm_seconds = Histogram(
            "chatkeep_llm_call_duration_seconds", "Time of an LLM call, retries included", buckets=LLM_SECONDS,
            registry=registry,
        )  # fmt: skip
        self._first_token_seconds = Histogram(
            "chatkeep_llm_time_to_first_token_seconds", "Time to the first streamed token", buckets=FIRST_TOKEN_SECONDS,
            registry=registry,
        )  # fmt: skip
        self._prompt_tokens = Counter("chatkeep_llm_prompt_tokens", "Prompt tokens the LLM reported", registry=registry)
        self._completion_tokens = Counter(
            "chatkeep_llm_completion_tokens", "Completion tokens the LLM reported", registry=registry
        )
        self._in_flight = Gauge(
            "chatkeep_turns_in_flight", "Turns running or waiting", multiprocess_mode="livesum", registry=registry
        )
        self._waiting = Gauge(
            "chatkeep_turns_waiting", "Turns waiting for their chat", multiprocess_mode="livesum", registry=registry
        )
        self._waited = Histogram(
            "chatkeep_turn_wait_seconds", "Time a turn waited for its chat", buckets=WAIT_SECONDS, registry=registry
        )
        self._replays = Counter(
            "chatkeep_idempotent_replays",
            "Requests answered with an Idempotency-Key's stored answer",
            registry=registry,
        )
        self._breaker = Gauge(
            "chatkeep_llm_breaker_open", "1 while the LLM circuit breaker is open", multiprocess_mode="livemax",
            registry=registry,
        )  # fmt: skip
        self._summaries = Counter("chatkeep_summaries", "Summary folds by outcome", ["outcome"], registry=registry)
        # Label lookups cost more than the update itself; requests reuse the children they made.
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._llm_children: dict[str, Counter] = {}

    def render(self) -> bytes:
        return generate_latest(self._exposed)

    def close(self) -> None:
        """Under --workers N, this worker's live gauges leave the sums other workers scrape."""
        if self.multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._http_children.get((method, route, status))
        if children is None:
            children = self._requests.labels(method, route, str(status)), self._request_seconds.labels(method, route)
            self._http_children[method, route, status] = children
        children[0].inc()
        children[1].observe(seconds)

    def llm_call(self, outcome: str, seconds: float, *, first_token_seconds: float | None, usage: Usage | None) -> None:
        calls = self._llm_children.get(outcome)
        if calls is None:
            calls = self._llm_children[outcome] = self._llm_calls.labels(outcome)
        calls.inc()
        self._llm_seconds.observe(seconds)
        if first_token_seconds is not None:
            self._first_token_seconds.observe(first_token_seconds)
        if usage is not None:
            self._prompt_tokens.inc(usage.prompt_tokens)
            self._completion_tokens.inc(usage.completion_tokens)

    def turns_in_flight(self, change: int) -> None:
        self._in_flight.inc(change)

    def turns_waiting(self, change: int) -> None:
        self._waiting.inc(change)

    def turn_waited(self, seconds: float) -> None:
        self._waited.observe(seconds)

    def idempotent_replay(self) -> None:
        self._replays.inc()

    def breaker_open(self, is_open: bool) -> None:
        self._breaker.set(1 if is_open else 0)

    def summary_made(self, outcome: str) -> None:
        self._summaries.labels(outcome).inc()
