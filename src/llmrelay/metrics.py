"""Prometheus metrics: one registry per app, fed once per request and once per upstream attempt.

Recording sits on the relay's hot path, so it is plain arithmetic on the event loop's thread: a
request costs one dict lookup, a bisect and two additions (prometheus_client's own Counter and
Histogram take a lock and validate on every call, about 3 µs a request here). The
:class:`MetricsCollector` turns the numbers into metric families only when ``/metrics`` is
scraped, and reads what already exists elsewhere (circuit states, the embedded engine's queue)
at that moment; prometheus_client does the exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from llmrelay.errors import LLMRelayError, UpstreamTimeout
from llmrelay.routing.breaker import CircuitBreaker
from llmrelay.stream import Usage

# 1 ms … 120 s: a relayed answer from cache takes milliseconds, a long generation minutes.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_LE = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")


def attempt_outcome(error: LLMRelayError | None) -> str:
    """How one try of one backend ended: ok, timeout, rate_limited, failed (another backend may
    take over) or rejected (a refusal that no other backend would change)."""
    if error is None:
        return "ok"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if error.code == "upstream_rate_limited" or error.status == 429:
        return "rate_limited"
    return "failed" if error.retryable else "rejected"


@dataclass(slots=True)
class Distribution:
    """Observations in :data:`LATENCY_BUCKETS` (not cumulative; the last is above 120 s)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def merge(self, other: Distribution) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            out.append((le, running))
        return out


class Metrics:
    """The app's numbers and the cheap calls that feed them (event-loop thread only)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests: dict[tuple[str, str, int], Distribution] = {}  # (route, model, status)
        self.first_tokens: dict[str, Distribution] = {}  # by model
        self.token_counts: dict[str, list[int]] = {}  # model: counts in TOKEN_KINDS order
        self.attempts: dict[tuple[str, str], int] = {}  # (channel, outcome)
        self.registry = CollectorRegistry()

    def request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        series = self.requests.get(key)
        if series is None:
            series = self.requests[key] = Distribution()
        series.observe(seconds)

    def first_token(self, model: str, seconds: float) -> None:
        series = self.first_tokens.get(model)
        if series is None:
            series = self.first_tokens[model] = Distribution()
        series.observe(seconds)

    def tokens(self, model: str, usage: Usage) -> None:
        counts = self.token_counts.get(model)
        if counts is None:
            counts = self.token_counts[model] = [0, 0, 0, 0]
        counts[0] += usage.prompt_tokens
        counts[1] += usage.completion_tokens
        counts[2] += usage.cached_tokens
        counts[3] += usage.reasoning_tokens

    def attempt(self, channel: str, error: LLMRelayError | None) -> None:
        """One try of one backend (the gateway calls this in its failover loop)."""
        key = (channel, attempt_outcome(error))
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def register(
        self,
        breakers: Mapping[str, CircuitBreaker],
        engine_stats: Callable[[], Mapping[str, Mapping[str, int]]],
        ledger_counts: Callable[[], Mapping[str, int]] = dict,
        limiter_counts: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        """Expose these numbers, the app's state gauges and the process's own metrics."""
        self.registry.register(
            MetricsCollector(self, breakers, engine_stats, ledger_counts, limiter_counts)
        )
        ProcessCollector(registry=self.registry)


class MetricsCollector(Collector):
    """Builds the metric families when scraped."""

    def __init__(
        self,
        metrics: Metrics,
        breakers: Mapping[str, CircuitBreaker],
        engine_stats: Callable[[], Mapping[str, Mapping[str, int]]],
        ledger_counts: Callable[[], Mapping[str, int]] = dict,
        limiter_counts: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.metrics = metrics
        self.breakers = breakers
        self.engine_stats = engine_stats
        self.ledger_counts = ledger_counts
        self.limiter_counts = limiter_counts

    def collect(self) -> Iterable[Metric]:
        yield from self._requests()
        yield self._first_tokens()
        yield self._tokens()
        yield self._attempts()
        yield from self._ledger()
        yield self._limiter()
        yield from self._state()

    def _requests(self) -> Iterable[Metric]:
        m = self.metrics
        total = CounterMetricFamily(
            "llmrelay_requests",
            "HTTP requests by route template, model and status code.",
            labels=["route", "model", "status"],
        )
        latency: dict[tuple[str, str], Distribution] = {}
        for (route, model, status), series in list(m.requests.items()):
            total.add_metric([route, model, str(status)], sum(series.counts))
            latency.setdefault((route, model), Distribution()).merge(series)
        yield total
        family = HistogramMetricFamily(
            "llmrelay_request_duration_seconds",
            "Time from a request's arrival to its last response byte (a whole stream).",
            labels=["route", "model"],
        )
        for labels, series in latency.items():
            family.add_metric(list(labels), series.buckets(), series.total)
        yield family

    def _first_tokens(self) -> Metric:
        family = HistogramMetricFamily(
            "llmrelay_time_to_first_token_seconds",
            "Streams: time from a request's arrival until its first chunk was ready to send.",
            labels=["model"],
        )
        for model, series in list(self.metrics.first_tokens.items()):
            family.add_metric([model], series.buckets(), series.total)
        return family

    def _tokens(self) -> Metric:
        family = CounterMetricFamily(
            "llmrelay_tokens",
            "Tokens by model and kind (prompt, completion, cached, reasoning).",
            labels=["model", "kind"],
        )
        for model, counts in list(self.metrics.token_counts.items()):
            for kind, count in zip(TOKEN_KINDS, counts, strict=True):
                family.add_metric([model, kind], count)
        return family

    def _attempts(self) -> Metric:
        family = CounterMetricFamily(
            "llmrelay_upstream_attempts",
            "Tries of a backend by channel ('local': the embedded engine) and outcome.",
            labels=["channel", "outcome"],
        )
        for (channel, outcome), count in list(self.metrics.attempts.items()):
            family.add_metric([channel, outcome], count)
        return family

    def _ledger(self) -> Iterable[Metric]:
        counts = dict(self.ledger_counts())
        yield GaugeMetricFamily(
            "llmrelay_ledger_queued_rows",
            "Ledger rows journaled and waiting for the database.",
            value=counts.pop("queued_rows", 0),
        )
        family = CounterMetricFamily(
            "llmrelay_ledger",
            "Ledger writes: rows committed, transactions that committed them, rows the "
            "database refused.",
            labels=["what"],
        )
        for what, count in counts.items():
            family.add_metric([what], count)
        yield family

    def _limiter(self) -> Metric:
        family = CounterMetricFamily(
            "llmrelay_limiter",
            "Shared (Redis) rate limits and budgets: script calls sent, lease renewals, "
            "requests admitted from a lease without a round trip.",
            labels=["what"],
        )
        for what, count in self.limiter_counts().items():
            family.add_metric([what], count)
        return family

    def _state(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "llmrelay_requests_in_flight",
            "HTTP requests being served now.",
            value=self.metrics.in_flight,
        )
        circuit = GaugeMetricFamily(
            "llmrelay_circuit_state",
            "Circuit breaker per channel: 0 closed, 1 half-open, 2 open.",
            labels=["channel"],
        )
        for name, breaker in list(self.breakers.items()):
            circuit.add_metric([name], BREAKER_STATES[breaker.state])
        yield circuit
        engine = GaugeMetricFamily(
            "llmrelay_engine_queue_depth",
            "Requests running or waiting on an embedded-engine model.",
            labels=["model"],
        )
        for model, stats in self.engine_stats().items():
            engine.add_metric([model], stats.get("busy", 0))
        yield engine
