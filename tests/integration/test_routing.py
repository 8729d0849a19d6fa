"""Routing against real processes: retries, deadlines, fallbacks, breakers, context windows, streams,
rules and auto routing, budget-tier downgrades, and the metrics that show them.

Faults are injected per request with the mock's ``x-mock-*`` headers. A second provider entry,
``mock-quiet``, points at the same mock but forwards no ``x-mock-*`` header: a fallback through it
succeeds where the primary was told to fail, and the mock's request counter shows how many
upstream attempts a request made.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    PROVIDER_SECRET,
    GatewayProc,
    MockProvider,
    Proc,
    base_config,
    http_json,
    wait_http,
    write_config,
)

AUTH = {"authorization": "Bearer sk-demo"}
SHORT = [{"role": "user", "content": "Say hello"}]
COMPLEX_TEXT = (
    "Analyze and compare the trade-offs of these two designs step by step, then prove which is optimal. "
    "```python\ndef f(x):\n    return x * 2\n```\n1. Why? 2. How would you refactor it? "
    "Evaluate 3 * 4 + 5 = 17 and 2 ^ 10 = 1024. "
) * 8
LONG_TEXT = " ".join(["the"] * 400)  # 400 tokens in cl100k: over a 50-token window


# ---------------------------------------------------------------------- helpers


def post(
    gw: GatewayProc, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    return http_json("POST", gw.url + path, body, {**AUTH, **(headers or {})})


def chat(
    gw: GatewayProc, model: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, Any, dict[str, str]]:
    return post(
        gw, {"model": model, "messages": body.pop("messages", SHORT), "max_tokens": 5, **body}, headers
    )


def upstream_requests(mock: MockProvider) -> int:
    status, stats, _ = http_json("GET", mock.url + "/_mock/stats")
    assert status == 200
    return int(stats["requests"])


def metric(gw: GatewayProc, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    _, text, _ = http_json("GET", gw.url + "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def fail_key() -> str:
    return uuid.uuid4().hex


def provider(mock_url: str, *, forward: list[str], kind: str = "openai") -> dict[str, Any]:
    base = f"{mock_url}/v1" if kind == "openai" else mock_url
    return {"type": kind, "base_url": base, "api_key": PROVIDER_SECRET, "forward_headers": forward}


def deployment(provider_name: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"deployments": [{"provider": provider_name, "model": model, **extra}]}


def routing_config(mock_url: str, **routing: Any) -> dict[str, Any]:
    cfg = base_config(mock_url)
    cfg["providers"]["mock-quiet"] = provider(mock_url, forward=[])
    cfg["models"].update(
        {
            "backup": deployment("mock-quiet", "mock-gpt-mini"),
            "small-window": deployment("mock-openai", "mock-gpt", context_window=50),
            "small-only": deployment("mock-openai", "mock-gpt", context_window=50),
            "big-window": deployment("mock-quiet", "mock-gpt"),
            "solo": deployment("mock-openai", "mock-gpt"),
            "instruct": {"operation": "text_completion", **deployment("mock-openai", "mock-gpt-mini")},
            "instruct-backup": {"operation": "text_completion", **deployment("mock-quiet", "mock-gpt-mini")},
        }
    )
    cfg["routing"] = {
        "retry": {"max_attempts": 3, "base_backoff_ms": 20, "max_backoff_ms": 100, "max_retry_after_s": 2},
        # These tests inject failures on purpose: keep the circuits closed (the breaker has its own test).
        "breaker": {"consecutive_failures": 10_000, "min_requests": 10_000},
        "rules": [
            {"name": "cheap-tag", "when": {"tags": {"route": "cheap"}}, "route_to": "gpt-4o-mini"},
            {
                "name": "auto-tier",
                "when": {"models": ["auto"]},
                "auto": {"strong": "gpt-4o", "weak": "gpt-4o-mini", "threshold": 0.5},
            },
        ],
        "fallbacks": {"gpt-4o": ["backup"], "small-window": ["big-window"], "instruct": ["instruct-backup"]},
        **routing,
    }
    return cfg


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("routing")


@pytest.fixture(scope="module")
def gw(tmp: Path, mock: MockProvider) -> Iterator[GatewayProc]:
    proc = GatewayProc(write_config(tmp, routing_config(mock.url), "main.yaml"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gw_deadline(tmp: Path, mock: MockProvider) -> Iterator[GatewayProc]:
    cfg = routing_config(
        mock.url,
        retry={"max_attempts": 10, "base_backoff_ms": 50, "max_backoff_ms": 200, "max_retry_after_s": 0.5},
    )
    cfg["server"]["timeouts"]["total_s"] = 1.5
    proc = GatewayProc(write_config(tmp, cfg, "deadline.yaml"))
    yield proc
    proc.stop()


# ---------------------------------------------------------------------- retries and deadlines


@pytest.mark.parametrize("status", ["500", "503", "529"])
def test_retryable_failures_are_retried_until_success(
    gw: GatewayProc, mock: MockProvider, status: str
) -> None:
    before = upstream_requests(mock)
    headers = {"x-mock-fail-times": "2", "x-mock-fail-key": fail_key(), "x-mock-status": status}
    started = time.monotonic()
    code, body, hdrs = chat(gw, "gpt-4o", headers)
    elapsed = time.monotonic() - started
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "gpt-4o"  # retried in place, no fallback needed
    assert upstream_requests(mock) - before == 3  # K=2 failures + 1 success
    assert elapsed < 1.0  # 20-100 ms full-jitter backoff: quick, yet not a tight loop


def test_429_is_retried_after_its_retry_after(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    headers = {"x-mock-fail-times": "1", "x-mock-fail-key": fail_key(), "x-mock-status": "429"}
    started = time.monotonic()
    code, _, hdrs = chat(gw, "gpt-4o", headers)
    elapsed = time.monotonic() - started
    assert code == 200 and hdrs["x-gateway-model"] == "gpt-4o"
    assert 1.0 <= elapsed < 3.0  # waited the upstream's 1 s, not the 20-100 ms backoff
    assert upstream_requests(mock) - before == 2


def test_a_retry_after_longer_than_allowed_moves_on_at_once(
    gw_deadline: GatewayProc, mock: MockProvider
) -> None:
    before = upstream_requests(mock)
    started = time.monotonic()
    code, body, hdrs = chat(gw_deadline, "gpt-4o", {"x-mock-status": "429"})
    elapsed = time.monotonic() - started
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "backup"
    # max_retry_after_s is 0.5: the 1 s Retry-After was not waited for (that would have been a
    # second 429 on gpt-4o before the fallback).
    assert upstream_requests(mock) - before == 2
    assert elapsed < 1.0


def test_overall_deadline_is_respected(gw_deadline: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    started = time.monotonic()
    # Every attempt fails after 400 ms; ten attempts would take 4 s, the deadline is 1.5 s.
    code, body, _ = chat(gw_deadline, "solo", {"x-mock-status": "500", "x-mock-latency-ms": "400"})
    elapsed = time.monotonic() - started
    assert code >= 500, body
    assert elapsed < 2.2
    assert 1 <= upstream_requests(mock) - before <= 4


def test_a_slow_upstream_times_out_at_the_deadline(gw_deadline: GatewayProc) -> None:
    started = time.monotonic()
    code, body, _ = chat(gw_deadline, "solo", {"x-mock-latency-ms": "5000"})
    elapsed = time.monotonic() - started
    assert code == 504, body
    assert 1.3 < elapsed < 2.5


# ---------------------------------------------------------------------- fallbacks


def test_fallback_when_every_attempt_fails(gw: GatewayProc, mock: MockProvider) -> None:
    fallbacks = metric(gw, "llm_gateway_fallbacks_total", from_model="gpt-4o", to_model="backup")
    before = upstream_requests(mock)
    code, body, hdrs = chat(gw, "gpt-4o", {"x-mock-status": "500"})
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "backup"
    assert hdrs["x-gateway-route"] == "default"
    assert upstream_requests(mock) - before == 4  # 3 attempts on gpt-4o, then the fallback
    assert metric(gw, "llm_gateway_fallbacks_total", from_model="gpt-4o", to_model="backup") == fallbacks + 1


def test_every_model_failing_returns_the_last_error(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    code, body, _ = chat(gw, "solo", {"x-mock-status": "503"})
    assert code == 503
    assert "all upstream attempts failed" in body["error"]["message"]
    assert upstream_requests(mock) - before == 3


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_client_errors_are_not_retried(gw: GatewayProc, mock: MockProvider, status: str) -> None:
    before = upstream_requests(mock)
    code, body, _ = chat(gw, "gpt-4o", {"x-mock-status": status})
    assert code == int(status), body
    assert upstream_requests(mock) - before == 1  # no retry, no fallback


# ---------------------------------------------------------------------- context windows


def test_upstream_context_overflow_moves_to_the_next_model(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    code, body, hdrs = chat(gw, "gpt-4o", {"x-mock-context-window": "5"})
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "backup"
    assert upstream_requests(mock) - before == 2  # an overflow is not retried on the same model


def test_the_gateway_skips_a_model_whose_window_is_too_small(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    long_prompt = [{"role": "user", "content": LONG_TEXT}]
    code, body, hdrs = chat(gw, "small-window", messages=long_prompt)
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "big-window"
    assert upstream_requests(mock) - before == 1  # small-window was never called
    code, _, hdrs = chat(gw, "small-window")  # a short prompt fits
    assert code == 200 and hdrs["x-gateway-model"] == "small-window"


def test_a_prompt_that_may_fit_is_sent_and_the_providers_overflow_moves_on(
    gw: GatewayProc, mock: MockProvider
) -> None:
    """57 tokens in 60 bytes (an unusually dense prompt, 0.95 tokens per byte) for a 50-token window:
    under 1.5 bytes per window token the gateway does not count (that costs every long prompt
    milliseconds); the provider's context-length 400 moves the request to the fallback instead."""
    dense = [{"role": "user", "content": "\u01c5" * 25}]
    before = upstream_requests(mock)
    code, body, hdrs = chat(gw, "small-window", {"x-mock-context-window": "50"}, messages=dense)
    assert code == 200, body
    assert hdrs["x-gateway-model"] == "big-window"
    assert upstream_requests(mock) - before == 2  # small-window's rejected call, then big-window


def test_a_prompt_that_fits_no_model_is_a_context_error(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    code, body, _ = chat(gw, "small-only", messages=[{"role": "user", "content": LONG_TEXT}])
    assert code == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert upstream_requests(mock) == before


# ---------------------------------------------------------------------- streams


def sse_events(text: str) -> list[str]:
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


def test_a_stream_cut_before_its_first_byte_falls_back(gw: GatewayProc, mock: MockProvider) -> None:
    before = upstream_requests(mock)
    body = {"model": "instruct", "prompt": "Say hello", "max_tokens": 5, "stream": True}
    code, text, hdrs = post(gw, body, {"x-mock-cut-after": "0"})
    assert code == 200, text
    assert hdrs["x-gateway-model"] == "instruct-backup"
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    assert not any('"error"' in e for e in events)
    assert upstream_requests(mock) - before == 4  # 3 cut attempts, then the fallback


def test_a_stream_cut_after_its_first_byte_ends_with_an_error_event(
    gw: GatewayProc, mock: MockProvider
) -> None:
    before = upstream_requests(mock)
    code, text, hdrs = chat(gw, "gpt-4o", {"x-mock-cut-after": "2"}, stream=True, max_tokens=10)
    assert code == 200  # the status line went out with the first byte
    assert hdrs["x-gateway-model"] == "gpt-4o"
    events = sse_events(text)
    assert any('"content":"the"' in e for e in events)  # what arrived was relayed
    assert events[-1].startswith('{"error":')
    assert "[DONE]" not in events
    assert upstream_requests(mock) - before == 1  # not retried: the client already has part of it


# ---------------------------------------------------------------------- rules, auto routing, metrics


def test_the_route_header_names_the_rule(gw: GatewayProc) -> None:
    code, _, hdrs = chat(gw, "gpt-4o", {"x-gateway-tags": "route=cheap"})
    assert code == 200
    assert (hdrs["x-gateway-route"], hdrs["x-gateway-model"]) == ("cheap-tag", "gpt-4o-mini")
    code, _, hdrs = chat(gw, "gpt-4o", {"x-gateway-tags": "route=other"})
    assert (hdrs["x-gateway-route"], hdrs["x-gateway-model"]) == ("default", "gpt-4o")


def test_auto_routes_short_prompts_weak_and_complex_ones_strong(gw: GatewayProc) -> None:
    code, _, hdrs = chat(gw, "auto")
    assert code == 200
    assert (hdrs["x-gateway-route"], hdrs["x-gateway-model"]) == ("auto-tier", "gpt-4o-mini")
    code, _, hdrs = chat(gw, "auto", messages=[{"role": "user", "content": COMPLEX_TEXT}])
    assert code == 200
    assert (hdrs["x-gateway-route"], hdrs["x-gateway-model"]) == ("auto-tier", "gpt-4o")


def test_requests_total_has_route_and_model_labels(gw: GatewayProc) -> None:
    labels = {"route": "cheap-tag", "model": "gpt-4o-mini", "team": "demo", "status_class": "2xx"}
    before = metric(gw, "llm_gateway_requests_total", **labels)
    assert chat(gw, "claude-sonnet", {"x-gateway-tags": "route=cheap"})[0] == 200
    assert metric(gw, "llm_gateway_requests_total", **labels) == before + 1


# ---------------------------------------------------------------------- circuit breaker


class PinnedMock:
    """A mock provider on a given port, so a stopped one can come back where the gateway expects it."""

    def __init__(self, tmp: Path, port: int) -> None:
        import sys

        self.port, self.url = port, f"http://127.0.0.1:{port}"
        log = tmp / f"mock-{port}-{uuid.uuid4().hex[:6]}.log"
        self.proc = Proc([sys.executable, "-m", "gateway", "mock-upstream", "--port", str(port)], log)
        wait_http(self.url + "/_mock/stats", proc=self.proc.popen)

    def stop(self) -> None:
        self.proc.stop()


def test_circuit_breaker_opens_skips_probes_and_closes(tmp: Path) -> None:
    flaky = MockProvider(tmp)
    steady = MockProvider(tmp)
    cfg = base_config(steady.url)
    cfg["providers"] = {"flaky": provider(flaky.url, forward=[]), "steady": provider(steady.url, forward=[])}
    cfg["models"] = {
        "primary": deployment("flaky", "mock-gpt"),
        "secondary": deployment("steady", "mock-gpt-mini"),
        "lonely": deployment("flaky", "mock-gpt"),  # no fallback
    }
    cfg["routing"] = {
        "retry": {"max_attempts": 3, "base_backoff_ms": 10, "max_backoff_ms": 20},
        "breaker": {"consecutive_failures": 2, "cooldown_s": 1.5, "min_requests": 100},
        "fallbacks": {"primary": ["secondary"]},
    }
    gw = GatewayProc(write_config(tmp, cfg, "breaker.yaml"))
    revived: PinnedMock | None = None
    try:

        def served_by(model: str = "primary") -> str:
            code, body, hdrs = chat(gw, model)
            assert code == 200, body
            return hdrs["x-gateway-model"]

        def errors(model: str = "primary") -> float:
            return metric(gw, "llm_gateway_upstream_errors_total", model=model)

        def circuit_open() -> float:
            return metric(gw, "llm_gateway_circuit_open", deployment="primary#0")

        assert served_by() == "primary"
        flaky.stop()
        # Closed: the dead deployment is tried; its second failure opens the circuit, and the
        # third attempt is not made into an open circuit: the request falls back at once.
        assert served_by() == "secondary"
        assert errors() == 2
        assert circuit_open() == 1
        # Open: traffic goes straight to the fallback without touching the broken deployment.
        assert {served_by() for _ in range(3)} == {"secondary"}
        assert errors() == 2
        # Half-open after the cooldown: exactly one probe; it fails and re-opens the circuit.
        time.sleep(1.6)
        assert served_by() == "secondary"
        assert errors() == 3
        assert served_by() == "secondary"
        assert errors() == 3  # re-opened: the next request did not touch it

        # With nothing else to try (every circuit in the chain open), a request still goes out.
        assert chat(gw, "lonely")[0] == 502
        assert errors("lonely") == 2
        revived = PinnedMock(tmp, flaky.port)
        assert served_by("lonely") == "lonely"  # its circuit is open, yet it was tried: panic mode

        # The deployment is back; after the cooldown the probe succeeds and closes the circuit.
        time.sleep(1.6)
        assert served_by() == "primary"
        assert circuit_open() == 0
        assert [served_by(), served_by()] == ["primary", "primary"]
        assert errors() == 3
    finally:
        gw.stop()
        steady.stop()
        if revived is not None:
            revived.stop()


# ---------------------------------------------------------------------- budget-tier downgrade


def test_budget_tier_downgrade_switches_model_past_80_percent(tmp: Path, mock: MockProvider) -> None:
    cfg = base_config(mock.url)
    cfg["teams"]["demo"]["budget"] = {"usd": 1, "period": "monthly"}
    cfg["routing"] = {
        "rules": [
            {
                "name": "budget-downgrade",
                "when": {"budget_used": {"gte": 0.8}, "models": ["gpt-4o"]},
                "route_to": "gpt-4o-mini",
            }
        ]
    }
    gw = GatewayProc(write_config(tmp, cfg, "budget.yaml"))
    try:
        # Each request on gpt-4o is billed for 50k prompt tokens at $1/1M: $0.05 of the $1 budget.
        spend_hdr = {"x-mock-prompt-tokens": "50000"}
        spent, served = 0.0, []
        for _ in range(25):
            code, body, hdrs = chat(gw, "gpt-4o", spend_hdr)
            assert code == 200, body
            served.append((hdrs["x-gateway-route"], hdrs["x-gateway-model"], spent))
            if hdrs["x-gateway-route"] == "budget-downgrade":
                break
            spent += float(hdrs["x-gateway-cost-usd"])
        route, model, spent_before = served[-1]
        assert (route, model) == ("budget-downgrade", "gpt-4o-mini"), served
        assert all(m == "gpt-4o" for _, m, _ in served[:-1])
        # The rule sees the utilization recorded by the previous reservations: it switches once
        # spend passes 80 %, at most a couple of requests late, never early.
        assert 0.8 - 0.001 <= spent_before <= 0.95, served
        # It stays switched.
        code, _, hdrs = chat(gw, "gpt-4o")
        assert (hdrs["x-gateway-route"], hdrs["x-gateway-model"]) == ("budget-downgrade", "gpt-4o-mini")
        # Other models are not covered by the rule.
        code, _, hdrs = chat(gw, "claude-sonnet")
        assert code == 200 and hdrs["x-gateway-route"] == "default"
    finally:
        gw.stop()
