"""Balancing strategies and the circuit breaker, with a seeded rng and an injected clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.config.model import BreakerConfig
from gateway.config.runtime import DeploymentSpec, ModelSpec, ProviderSpec
from gateway.metering.pricing import Rates
from gateway.routing import CLOSED, HALF_OPEN, OPEN, Router

PROVIDER = ProviderSpec(
    name="p",
    type="openai",
    base_url="http://x",
    api_key="",
    api_version="",
    system="openai",
    headers={},
    max_connections=1,
)


def dep(
    name: str, *, weight: float = 1.0, priority: int = 0, input_: int = 1, output: int = 1
) -> DeploymentSpec:
    rates = Rates(
        input=input_, cached_input=input_, cache_write=input_, output=output, reasoning=output, provider="p"
    )
    return DeploymentSpec(
        id=name,
        logical="m",
        provider=PROVIDER,
        upstream_model=name,
        price_name=name,
        rates=rates,
        weight=weight,
        priority=priority,
        region="",
        context_window=1000,
        max_output_tokens=100,
    )


def model(strategy: str, *deployments: DeploymentSpec) -> ModelSpec:
    return ModelSpec(name="m", operation="chat", strategy=strategy, deployments=deployments)


def ids(deployments: list[DeploymentSpec]) -> list[str]:
    return [d.id for d in deployments]


def router(seed: int = 7, **breaker: float) -> Router:
    return Router(BreakerConfig.model_validate(breaker), rng=random.Random(seed))


# ---------------------------------------------------------------------- strategies


def test_weighted_distribution_follows_weights() -> None:
    r = router()
    m = model("weighted", dep("a", weight=1), dep("b", weight=3), dep("c", weight=6))
    n = 10_000
    firsts = Counter(r.order(m, now=0)[0].id for _ in range(n))
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(firsts[name] / n - share) < 0.02, firsts


def test_weighted_order_is_a_permutation_and_seeded() -> None:
    m = model("weighted", dep("a"), dep("b"), dep("c"))
    orders_1 = [ids(router(seed=1).order(m, now=0)) for _ in range(5)]
    orders_2 = [ids(router(seed=1).order(m, now=0)) for _ in range(5)]
    assert orders_1 == orders_2
    assert all(sorted(o) == ["a", "b", "c"] for o in orders_1)


def test_weighted_second_choice_follows_remaining_weights() -> None:
    r = router()
    m = model("weighted", dep("a", weight=8), dep("b", weight=1), dep("c", weight=1))
    seconds = Counter(ids(r.order(m, now=0))[1] for _ in range(5000))
    # When "a" goes first (most of the time), "b" and "c" are equally likely next.
    assert abs(seconds["b"] - seconds["c"]) / (seconds["b"] + seconds["c"]) < 0.1


def test_priority_orders_highest_first() -> None:
    m = model("priority", dep("low", priority=1), dep("high", priority=10), dep("mid", priority=5))
    assert ids(router().order(m, now=0)) == ["high", "mid", "low"]


def test_least_cost_orders_cheapest_first_then_priority() -> None:
    m = model(
        "least_cost",
        dep("pricey", input_=10, output=40),
        dep("cheap", input_=1, output=4),
        dep("cheap-preferred", input_=2, output=3, priority=1),
        dep("mid", input_=5, output=5),
    )
    assert ids(router().order(m, now=0)) == ["cheap-preferred", "cheap", "mid", "pricey"]


def test_least_latency_tries_unmeasured_first_then_fastest_ewma() -> None:
    r = router()
    m = model("least_latency", dep("a"), dep("b"), dep("c"))
    r.record("a", True, latency_s=0.5, now=0)
    r.record("b", True, latency_s=0.2, now=0)
    assert ids(r.order(m, now=0)) == ["c", "b", "a"]
    r.record("c", True, latency_s=0.3, now=0)
    assert ids(r.order(m, now=0)) == ["b", "c", "a"]


def test_latency_is_an_ewma_of_successes_only() -> None:
    r = router()
    r.record("a", True, latency_s=1.0, now=0)
    assert r.latency["a"] == pytest.approx(1.0)
    r.record("a", True, latency_s=0.0, now=0)
    assert r.latency["a"] == pytest.approx(0.8)  # alpha 0.2
    r.record("a", True, latency_s=0.0, now=0)
    assert r.latency["a"] == pytest.approx(0.64)
    r.record("a", False, latency_s=99.0, now=0)
    assert r.latency["a"] == pytest.approx(0.64)


def test_least_latency_follows_a_slowdown() -> None:
    r = router()
    m = model("least_latency", dep("a"), dep("b"))
    r.record("a", True, latency_s=0.1, now=0)
    r.record("b", True, latency_s=0.2, now=0)
    assert ids(r.order(m, now=0))[0] == "a"
    for _ in range(10):
        r.record("a", True, latency_s=1.0, now=0)
    assert ids(r.order(m, now=0))[0] == "b"


def test_single_deployment_needs_no_strategy() -> None:
    assert ids(router().order(model("least_cost", dep("only")), now=0)) == ["only"]


# ---------------------------------------------------------------------- circuit breaker


def test_consecutive_failures_open_the_circuit() -> None:
    r = router(consecutive_failures=3)
    assert r.record("a", False, now=0) == CLOSED
    assert r.record("a", False, now=1) == CLOSED
    assert r.record("a", False, now=2) == OPEN
    assert r.state("a") == OPEN
    assert r.state("b") == CLOSED


def test_a_success_resets_the_consecutive_count() -> None:
    r = router(consecutive_failures=3, min_requests=100)
    for t in range(10):
        r.record("a", False, now=t)
        r.record("a", False, now=t)
        assert r.record("a", True, now=t) == CLOSED


def test_error_rate_over_min_requests_opens_the_circuit() -> None:
    r = router(consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=30)
    states = [r.record("a", ok, now=float(i)) for i, ok in enumerate([True, False] * 5)]
    assert states[:-1] == [CLOSED] * 9  # below min_requests: no verdict yet
    assert states[-1] == OPEN  # 10 requests, 5 failures: rate 0.5 >= 0.5


def test_error_rate_below_threshold_stays_closed() -> None:
    r = router(consecutive_failures=100, error_rate=0.5, min_requests=10)
    outcomes = [True, True, False] * 10
    assert all(r.record("a", ok, now=float(i)) == CLOSED for i, ok in enumerate(outcomes))


def test_error_rate_counts_only_the_window() -> None:
    def nine_outcomes(r: Router) -> None:  # 5 failures in 9 requests at t=0: below min_requests
        for ok in [False, True] * 4 + [False]:
            assert r.record("a", ok, now=0.0) == CLOSED

    inside, outside = (router(consecutive_failures=100, error_rate=0.5, min_requests=10) for _ in "ab")
    nine_outcomes(inside)
    nine_outcomes(outside)
    assert inside.record("a", False, now=30.0) == OPEN  # 6 of 10 within the 30 s window
    assert outside.record("a", False, now=30.1) == CLOSED  # the nine have left the window


def test_open_circuit_is_left_out_of_the_order() -> None:
    r = router(consecutive_failures=1, cooldown_s=10)
    m = model("priority", dep("a", priority=2), dep("b", priority=1))
    r.record("a", False, now=0)
    assert ids(r.order(m, now=5)) == ["b"]
    assert r.has_usable(m, now=5)
    r.record("b", False, now=0)
    assert r.order(m, now=5) == []
    assert not r.has_usable(m, now=5)


def test_half_open_after_cooldown_lets_exactly_one_probe() -> None:
    r = router(consecutive_failures=1, cooldown_s=10)
    r.record("a", False, now=0)
    assert not r.available("a", now=9.9)
    assert r.has_usable(model("weighted", dep("a")), now=10)  # side-effect free ...
    assert r.state("a") == OPEN  # ... the circuit did not move
    assert r.available("a", now=10)  # the probe
    assert r.state("a") == HALF_OPEN
    assert not r.available("a", now=10.1)  # a second request while the probe is out
    assert not r.available("a", now=12)
    assert not r.has_usable(model("weighted", dep("a")), now=12)


def test_probe_success_closes() -> None:
    r = router(consecutive_failures=2, cooldown_s=10)
    r.record("a", False, now=0)
    r.record("a", False, now=0)
    assert r.available("a", now=10)
    assert r.record("a", True, latency_s=0.1, now=10.5) == CLOSED
    assert r.available("a", now=10.6) and r.available("a", now=10.6)
    # A fresh start: one failure after closing is not enough to re-open (the count was reset).
    assert r.record("a", False, now=11) == CLOSED


def test_probe_failure_reopens_for_another_cooldown() -> None:
    r = router(consecutive_failures=5, cooldown_s=10)
    for _ in range(5):
        r.record("a", False, now=0)
    assert r.available("a", now=10)
    assert r.record("a", False, now=11) == OPEN  # a single failure in half-open re-opens
    assert not r.available("a", now=20.9)  # the cooldown restarts from the probe's failure
    assert r.available("a", now=21)
    assert r.state("a") == HALF_OPEN


def test_a_lost_probe_expires_after_another_cooldown() -> None:
    r = router(consecutive_failures=1, cooldown_s=10)
    r.record("a", False, now=0)
    assert r.available("a", now=10)  # handed out, never reported (cancelled, or not needed)
    assert not r.available("a", now=19.9)
    assert r.available("a", now=20)  # a new probe
    assert not r.available("a", now=20)


def test_panic_order_does_not_probe() -> None:
    """order() hands the probe to the deployment it returns; has_usable never takes it."""
    r = router(consecutive_failures=1, cooldown_s=1)
    m = model("weighted", dep("a"))
    r.record("a", False, now=0)
    for _ in range(3):
        assert r.has_usable(m, now=2)
    assert ids(r.order(m, now=2)) == ["a"]
    assert r.order(m, now=2) == []


def test_configure_applies_new_thresholds_to_existing_state() -> None:
    r = router(consecutive_failures=10)
    for t in range(3):
        r.record("a", False, now=t)
    assert r.state("a") == CLOSED
    r.configure(BreakerConfig(consecutive_failures=4))
    assert r.record("a", False, now=4) == OPEN
