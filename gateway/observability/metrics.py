"""Prometheus metrics: ``llm_gateway_`` prefix, base units, bounded labels only.

Label values use the OpenTelemetry GenAI vocabulary (provider = ``gen_ai.provider.name``,
operation = ``gen_ai.operation.name``, token_type = input/output/cached_input/
cache_creation_input/reasoning; https://opentelemetry.io/docs/specs/semconv/gen-ai/).
Never a key, a user or a prompt as a label. Children are cached per label tuple so the hot
path does a dict lookup, not prometheus-client's label validation.

Multi-worker (``--workers N``): the server sets ``PROMETHEUS_MULTIPROC_DIR`` before this
module is imported, counters and histograms sum across workers, gauges use ``mostrecent``.

Counters and histograms are buffered: the hot path adds to plain floats and lists (one event
loop, so no lock), and ``flush()`` applies them to prometheus-client, whose every ``inc`` takes a
lock (and in multiprocess mode checks the pid and writes a file). Every collection of the
registry flushes first, and the gateway flushes each second, so another worker's counts reach a
multiprocess scrape at most a second late. Use them from the event loop's thread only.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# OTel GenAI recommended buckets for gen_ai.client.operation.duration and time_to_first_chunk.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.1)
TOKEN_TYPES = ("input", "output", "cached_input", "cache_creation_input", "reasoning")


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class _BufferedCounter:
    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self.child.inc(amount)


class _BufferedHistogram:
    """Observations counted per bucket here, applied to the child's own buckets at the flush (the
    same bucket rule as prometheus-client: the first upper bound >= the value)."""

    __slots__ = ("bounds", "child", "counts", "observed", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.observed = False

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.observed = True

    def flush(self) -> None:
        if not self.observed:
            return
        self.observed = False
        counts, buckets = self.counts, self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        total, self.total = self.total, 0.0
        self.child._sum.inc(total)


class _Cached:
    """A metric plus a cache of its children: ``labels()`` costs a dict lookup on the hot path.
    ``wrap`` buffers each new child (counters and histograms: see the module's docstring)."""

    def __init__(self, metric: Any, wrap: Callable[[Any], Any] | None = None) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}
        self._wrap = wrap

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            # A metric declared without labels is its own (only) child: prometheus-client
            # refuses ``.labels()`` on it.
            child = self.metric.labels(*values) if values else self.metric
            if self._wrap is not None:
                child = self._wrap(child)
            self.children[values] = child
        return child


class _FlushFirst:
    """Registered before every metric: a collection of the registry applies the buffers first."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        self.metrics.flush()
        return iter(())


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = registry or CollectorRegistry()
        r = self.registry
        gauge_mode = {"multiprocess_mode": "mostrecent"} if self.multiprocess else {}
        self._buffers: list[Any] = []  # every buffered child, in creation order
        r.register(_FlushFirst(self))

        def buffered(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def wrap(child: Any) -> Any:
                self._buffers.append(buffer := kind(child))
                return buffer

            return wrap

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> _Cached:
            return _Cached(Counter(name, doc, labels, registry=r), buffered(_BufferedCounter))

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> _Cached:
            return _Cached(Gauge(name, doc, labels, registry=r, **gauge_mode))  # type: ignore[arg-type]

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> _Cached:
            metric = Histogram(name, doc, labels, registry=r, buckets=buckets)
            return _Cached(metric, buffered(_BufferedHistogram))

        self.requests = counter(
            "llm_gateway_requests",
            "Requests handled, by outcome.",
            ("team", "route", "model", "provider", "operation", "status_class"),
        )
        self.request_duration = histogram(
            "llm_gateway_request_duration_seconds",
            "End-to-end request duration (gen_ai.client.operation.duration).",
            ("operation", "provider"),
            DURATION_BUCKETS,
        )
        self.ttft = histogram(
            "llm_gateway_time_to_first_token_seconds",
            "Time to the first streamed chunk (gen_ai.client.operation.time_to_first_chunk).",
            ("operation", "provider"),
            DURATION_BUCKETS,
        )
        self.upstream_duration = histogram(
            "llm_gateway_upstream_duration_seconds",
            "Time spent waiting on the upstream provider.",
            ("provider", "model"),
            DURATION_BUCKETS,
        )
        self.overhead = histogram(
            "llm_gateway_overhead_seconds",
            "Time spent in the gateway itself (request minus upstream).",
            ("operation",),
            OVERHEAD_BUCKETS,
        )
        self.upstream_errors = counter(
            "llm_gateway_upstream_errors", "Upstream failures by kind.", ("provider", "model", "kind")
        )
        self.fallbacks = counter(
            "llm_gateway_fallbacks",
            "Requests served by a later model in the chain.",
            ("from_model", "to_model"),
        )
        self.tokens = counter(
            "llm_gateway_tokens",
            "Tokens metered (gen_ai.client.token.usage).",
            ("team", "model", "token_type"),
        )
        self.cost = counter("llm_gateway_cost_usd", "Cost metered, USD.", ("team", "model"))
        self.savings = counter(
            "llm_gateway_savings_usd", "Savings, USD: cache hits and cheaper routes.", ("team", "reason")
        )
        self.budget_limit = gauge(
            "llm_gateway_budget_limit_usd", "Budget limit for the period, USD.", ("team", "scope", "period")
        )
        self.budget_spent = gauge(
            "llm_gateway_budget_spent_usd", "Spent in the current period, USD.", ("team", "scope", "period")
        )
        self.budget_reserved = gauge(
            "llm_gateway_budget_reserved_usd",
            "Reserved by in-flight requests, USD.",
            ("team", "scope", "period"),
        )
        self.budget_limit_tokens = gauge(
            "llm_gateway_budget_limit_tokens", "Token budget for the period.", ("team", "scope", "period")
        )
        self.budget_spent_tokens = gauge(
            "llm_gateway_budget_spent_tokens", "Tokens spent in the period.", ("team", "scope", "period")
        )
        self.budget_reserved_tokens = gauge(
            "llm_gateway_budget_reserved_tokens", "Tokens reserved in flight.", ("team", "scope", "period")
        )
        self.budget_utilization = gauge(
            "llm_gateway_budget_utilization_ratio",
            "Share of the period budget spent or reserved (0-1).",
            ("team", "scope"),
        )
        self.budget_period_end = gauge(
            "llm_gateway_budget_period_end_timestamp_seconds",
            "When the current budget period resets.",
            ("team", "scope"),
        )
        self.budget_period_seconds = gauge(
            "llm_gateway_budget_period_seconds",
            "Length of the current budget period (for burn-rate alerts).",
            ("team", "scope"),
        )
        self.budget_denied = counter(
            "llm_gateway_budget_denied_requests",
            "Requests denied because a hard budget would be exceeded.",
            ("team", "reason"),
        )
        self.budget_thresholds = counter(
            "llm_gateway_budget_threshold_crossings",
            "Soft budget thresholds crossed.",
            ("team", "scope", "threshold"),
        )
        self.rate_limited = counter(
            "llm_gateway_rate_limited_requests", "Requests over an RPM/TPM limit.", ("team", "kind")
        )
        self.store_errors = counter(
            "llm_gateway_store_errors", "Store (Redis) failures by operation.", ("operation",)
        )
        self.fail_open = counter(
            "llm_gateway_fail_open_requests",
            "Requests served under fail_open while the store was down.",
            ("team",),
        )
        self.cache_requests = counter(
            "llm_gateway_cache_requests", "Response cache lookups.", ("team", "result")
        )
        self.cache_errors = counter(
            "llm_gateway_cache_errors", "Cache backend failures (cache fails open).", ("operation",)
        )
        self.policy_reloads = counter("llm_gateway_policy_reloads", "Successful policy reloads.", ())
        self.policy_reload_errors = counter(
            "llm_gateway_policy_reload_errors", "Rejected policy reloads.", ()
        )
        self.breaker_state = gauge(
            "llm_gateway_circuit_open", "1 while a deployment's circuit is open.", ("deployment",)
        )
        self.ledger_pending = gauge(
            "llm_gateway_ledger_pending_records", "Settlements waiting to be written to the store.", ()
        )
        # Summed over live workers (the others' gauges are "mostrecent": one value for the deployment).
        self.inflight = _Cached(
            Gauge(
                "llm_gateway_inflight_requests",
                "LLM requests in flight (streams until their last chunk), sampled each second and at scrape.",
                (),
                registry=r,
                **({"multiprocess_mode": "livesum"} if self.multiprocess else {}),  # type: ignore[arg-type]
            )
        )
        self.shed = counter(
            "llm_gateway_shed_requests",
            "Requests refused at the in-flight cap (server.max_in_flight), by inbound wire.",
            ("wire",),
        )

    def flush(self) -> None:
        """Apply the buffered counts to prometheus-client (and, multiprocess, to this worker's files)."""
        for child in self._buffers:
            child.flush()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST

        if self.multiprocess:
            self.flush()  # this worker's own counts are exact at the scrape; others' are a second old
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
