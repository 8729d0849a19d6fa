"""Buffered counters and histograms report exactly what prometheus-client's own would, at every
collection of the registry (a scrape, ``get_sample_value``), without an explicit flush."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.observability.metrics import DURATION_BUCKETS, OVERHEAD_BUCKETS, Metrics

# Values on the bucket bounds themselves, around them, and beyond the last one.
_EDGES = [b for bound in DURATION_BUCKETS + OVERHEAD_BUCKETS for b in (bound, bound * 0.999, bound * 1.001)]
_VALUES = st.one_of(st.sampled_from([*_EDGES, 0.0, 1e6]), st.floats(min_value=0, max_value=200))


def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(_VALUES, max_size=20), min_size=1, max_size=4))
def test_a_buffered_histogram_matches_prometheus_client(batches: list[list[float]]) -> None:
    metrics = Metrics(CollectorRegistry())
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "llm_gateway_request_duration_seconds",
        "reference",
        ("operation", "provider"),
        registry=reference_registry,
        buckets=DURATION_BUCKETS,
    )
    prefix = "llm_gateway_request_duration_seconds"
    for batch in batches:  # collections in between: each applies what was buffered since the last
        for value in batch:
            metrics.request_duration.labels("chat", "openai").observe(value)
            reference.labels("chat", "openai").observe(value)
        got, want = samples(metrics.registry, prefix), samples(reference_registry, prefix)
        assert got.keys() == want.keys()
        for key, value in want.items():  # bucket counts exactly; the sum up to float rounding order
            assert got[key] == (value if not key[0].endswith("_sum") else pytest.approx(value, rel=1e-9))


def test_buffered_counters_show_at_every_collection() -> None:
    metrics = Metrics(CollectorRegistry())
    child = metrics.requests.labels("team", "r", "m", "p", "chat", "2xx")
    assert child is metrics.requests.labels("team", "r", "m", "p", "chat", "2xx")  # cached
    for _ in range(3):
        child.inc()
    child.inc(2.5)
    labels = {"team": "team", "route": "r", "model": "m", "provider": "p", "operation": "chat"}
    labels["status_class"] = "2xx"
    assert metrics.registry.get_sample_value("llm_gateway_requests_total", labels) == 5.5
    metrics.policy_reloads.labels().inc()  # a counter without labels is buffered too
    text = generate_latest(metrics.registry).decode()
    assert "llm_gateway_policy_reloads_total 1.0" in text
    child.inc()
    metrics.flush()
    metrics.flush()  # idempotent: nothing is applied twice
    assert metrics.registry.get_sample_value("llm_gateway_requests_total", labels) == 6.5
