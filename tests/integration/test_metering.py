"""Metering you can bill from: a real gateway process, the mock provider, and the ledger read back
from the store itself (the embedded store's files, or Redis), for the memory and the Redis backend.

Every expected cost is computed here by hand, in Decimal, from the list prices restated below (and
checked against policies/prices.yaml once), never with the gateway's own pricing code. The mock is
told the exact token counts through x-mock-* headers, so each case is a closed-form sum.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.metering.pricing import PriceCatalog
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.harness import PRICES, GatewayProc, MockProvider, RedisServer, base_config, write_config

# ---------------------------------------------------------------- prices (USD per 1M tokens)


@dataclass(frozen=True)
class Price:
    input: Decimal
    cached: Decimal
    write: Decimal
    output: Decimal
    reasoning: Decimal


def _price(input: str, cached: str, write: str, output: str, reasoning: str) -> Price:
    return Price(Decimal(input), Decimal(cached), Decimal(write), Decimal(output), Decimal(reasoning))


# null in the catalog: cache reads/writes fall back to input, reasoning to output.
PRICE = {
    "mock-gpt": _price("1.00", "0.50", "1.00", "2.00", "2.00"),
    "mock-gpt-mini": _price("0.10", "0.05", "0.10", "0.40", "0.40"),
    "mock-claude": _price("3.00", "0.30", "3.75", "15.00", "15.00"),
    "mock-reasoner": _price("1.10", "1.10", "1.10", "4.40", "4.40"),
}
UPSTREAM = {
    "gpt-4o": "mock-gpt",
    "gpt-4o-mini": "mock-gpt-mini",
    "claude-sonnet": "mock-claude",
    "reasoner": "mock-reasoner",
}
NANO = Decimal(10) ** 9
ONE_NANO_USD = Decimal("1e-9")


@dataclass(frozen=True)
class Tok:
    """Normalized usage: ``input`` includes cache reads and writes, ``output`` includes reasoning."""

    input: int
    cached: int = 0
    written: int = 0
    output: int = 0
    reasoning: int = 0

    def ledger_usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input,
            "cached_input_tokens": self.cached,
            "cache_creation_input_tokens": self.written,
            "output_tokens": self.output,
            "reasoning_tokens": self.reasoning,
        }


def hand_cost_usd(upstream: str, t: Tok) -> Decimal:
    p = PRICE[upstream]
    per_million = (
        (t.input - t.cached - t.written) * p.input
        + t.cached * p.cached
        + t.written * p.write
        + (t.output - t.reasoning) * p.output
        + t.reasoning * p.reasoning
    )
    return per_million / Decimal(1_000_000)


def usd(nano: int) -> Decimal:
    return Decimal(nano) / NANO


def usd_str(value: Decimal) -> str:
    """Exactly how the gateway renders money: 9 decimals."""
    return f"{value.quantize(ONE_NANO_USD):f}"


def assert_cost(record: dict[str, Any], upstream: str, t: Tok) -> Decimal:
    expected = hand_cost_usd(upstream, t)
    assert abs(usd(record["cost_nano"]) - expected) <= ONE_NANO_USD, (record["cost_nano"], expected)
    return expected


# ---------------------------------------------------------------- gateway under test

RULE_TAGS = {"routed": "cheap"}
TAG_LIMITS = {"max_tags": 5, "max_key_len": 16, "max_value_len": 12}


def metering_config(mock_url: str) -> dict[str, Any]:
    cfg = base_config(mock_url)
    cfg["models"]["reasoner"] = {"deployments": [{"provider": "mock-openai", "model": "mock-reasoner"}]}
    teams = cfg["teams"]
    # demo: no budget, so every record goes through the lease-less record path.
    # billed: a budget, so every request holds a lease and settles it (the production path).
    teams["billed"] = {"keys": [{"id": "billed", "key": "sk-billed"}], "budget": {"usd": 1000}}
    teams["cachey"] = {"keys": [{"id": "cachey", "key": "sk-cachey"}], "cache": {"mode": "always"}}
    teams["tagged"] = {"keys": [{"id": "tagged", "key": "sk-tagged"}], "tags": {"cost_center": "cc-1"}}
    teams["obs"] = {
        "keys": [{"id": "obs", "key": "sk-obs"}],
        "cache": {"mode": "always"},
        "budget": {"usd": 1000},
    }
    cfg["routing"] = {
        "retry": {"max_attempts": 1},
        "rules": [
            {
                "name": "cheap",
                "when": {"models": ["gpt-4o"], "tags": {"tier": "cheap"}},
                "route_to": "gpt-4o-mini",
                "add_tags": RULE_TAGS,
            }
        ],
    }
    cfg["tags"] = TAG_LIMITS
    return cfg


@dataclass
class Backend:
    kind: str
    url: str
    state_dir: Path
    redis_url: str | None
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000) - 60_000)

    def ledger(self, team: str) -> list[dict[str, Any]]:
        until = int(time.time() * 1000) + 60_000
        return asyncio.run(read_ledger(self.state_dir, self.redis_url, team, self.since_ms, until))

    def record(self, team: str, client_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The one ledger record of a request (settle runs after the response, so poll briefly)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.ledger(team) if rid(r) == client_id]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(found) == 1, f"{client_id}: {len(found)} ledger records"
        return found[0]


async def read_ledger(
    state_dir: Path, redis_url: str | None, team: str, since_ms: int, until_ms: int
) -> list[dict[str, Any]]:
    if redis_url is None:
        return await MemoryStore(state_dir).ledger(team, since_ms, until_ms)
    store = RedisStore(redis_url)
    try:
        return await store.ledger(team, since_ms, until_ms)
    finally:
        await store.close()


def rid(record: dict[str, Any]) -> str:
    """The id the client sent (kept as client_request_id when the gateway mints its own)."""
    return str(record.get("client_request_id") or record["request_id"])


@pytest.fixture(scope="module", params=["memory", "redis"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mock: MockProvider
) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp(f"metering-{request.param}")
    redis_url = None
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis_url = redis.url
    proc = GatewayProc(write_config(tmp, metering_config(mock.url)), redis_url=redis_url)
    try:
        yield Backend(request.param, proc.url, tmp / "state", redis_url)
    finally:
        proc.stop()


# ---------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return orjson.loads(self.raw)

    def events(self) -> list[tuple[str, Any]]:
        """SSE as (kind, payload): ("data", json | "[DONE]"), ("event", name) or ("comment", text)."""
        out: list[tuple[str, Any]] = []
        for block in self.raw.split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    out.append(("comment", line[1:].strip().decode()))
                elif line.startswith(b"event:"):
                    out.append(("event", line[6:].strip().decode()))
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                    out.append(("data", "[DONE]" if data == b"[DONE]" else orjson.loads(data)))
        return out

    def data(self) -> list[Any]:
        return [payload for kind, payload in self.events() if kind == "data"]


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
    req = urllib.request.Request(
        url, data=orjson.dumps(body), method="POST", headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def new_id(tag: str) -> str:
    return f"mt-{tag}-{uuid.uuid4().hex[:12]}"


def call(
    gw: Backend,
    *,
    team: str,
    model: str,
    inbound: str = "openai",
    stream: bool = False,
    include_usage: bool = False,
    headers: dict[str, str] | None = None,
    content: str = "Tell me about metering.",
    extra: dict[str, Any] | None = None,
    client_id: str | None = None,
) -> tuple[str, Answer]:
    client_id = client_id or new_id(team)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1000,
        **(extra or {}),
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    hdrs = {"x-request-id": client_id, **(headers or {})}
    if inbound == "anthropic":
        hdrs.update({"x-api-key": f"sk-{team}", "anthropic-version": "2023-06-01"})
        return client_id, post(f"{gw.url}/v1/messages", body, hdrs)
    hdrs["authorization"] = f"Bearer sk-{team}"
    return client_id, post(f"{gw.url}/v1/chat/completions", body, hdrs)


def mock_headers(t: Tok, anthropic_upstream: bool) -> dict[str, str]:
    """Steer the mock to report exactly ``t`` (visible completion = output - reasoning)."""
    headers = {
        "x-mock-prompt-tokens": str(t.input),
        "x-mock-completion-tokens": str(t.output - t.reasoning),
    }
    if t.reasoning:
        headers["x-mock-reasoning-tokens"] = str(t.reasoning)
    if anthropic_upstream:
        headers["x-mock-cache-read-tokens"] = str(t.cached)
        headers["x-mock-cache-creation-tokens"] = str(t.written)
    elif t.cached:
        headers["x-mock-cached-tokens"] = str(t.cached)
    assert not (t.written and not anthropic_upstream), "the mock reports cache writes on Anthropic only"
    return headers


def cost_comment(answer: Answer) -> str:
    """The stream's last element must be the cost comment, after the terminal event."""
    events = answer.events()
    assert events, answer.raw
    kind, text = events[-1]
    assert kind == "comment" and text.startswith("x-gateway-cost-usd="), events[-3:]
    terminal = [e for e in events[:-1] if e[0] == "data"][-1][1]
    assert terminal == "[DONE]" or terminal.get("type") == "message_stop", terminal
    return str(text.removeprefix("x-gateway-cost-usd="))


# ---------------------------------------------------------------- the prices themselves


def test_restated_prices_match_the_catalog() -> None:
    catalog = PriceCatalog.model_validate(yaml.safe_load(PRICES.read_text()))
    for name, mine in PRICE.items():
        entry = catalog.models[name]
        assert entry.input == mine.input
        assert (entry.cached_input if entry.cached_input is not None else entry.input) == mine.cached
        assert (entry.cache_write if entry.cache_write is not None else entry.input) == mine.write
        assert entry.output == mine.output
        assert (entry.reasoning if entry.reasoning is not None else entry.output) == mine.reasoning


# ---------------------------------------------------------------- every usage shape


@dataclass(frozen=True)
class Shape:
    name: str
    model: str
    inbound: str
    tok: Tok

    @property
    def upstream(self) -> str:
        return UPSTREAM[self.model]

    @property
    def anthropic_upstream(self) -> bool:
        return self.model == "claude-sonnet"


SHAPES = [
    Shape("plain", "gpt-4o", "openai", Tok(1200, output=300)),
    Shape("openai-cached", "gpt-4o", "openai", Tok(1200, cached=1024, output=300)),
    Shape(
        "mini-cached-reasoning", "gpt-4o-mini", "openai", Tok(2000, cached=1500, output=500, reasoning=400)
    ),
    Shape("reasoning", "reasoner", "openai", Tok(1000, output=750, reasoning=700)),
    Shape("cache-write", "claude-sonnet", "openai", Tok(2000, written=1500, output=100)),
    Shape("anthropic-read-write", "claude-sonnet", "openai", Tok(3000, cached=2000, written=500, output=200)),
    Shape("native-read-write", "claude-sonnet", "anthropic", Tok(3000, cached=2000, written=500, output=200)),
    Shape("native-plain", "claude-sonnet", "anthropic", Tok(800, output=40)),
    Shape("openai-cached-via-anthropic", "gpt-4o", "anthropic", Tok(1200, cached=1024, output=300)),
    Shape("reasoning-via-anthropic", "reasoner", "anthropic", Tok(1000, output=750, reasoning=700)),
]
MODES = ["body", "stream", "stream+usage"]
CASES = [
    pytest.param(shape, mode, id=f"{shape.name}-{mode}")
    for shape in SHAPES
    for mode in MODES
    if not (mode == "stream+usage" and shape.inbound == "anthropic")  # an OpenAI-only option
]


def check_client_usage(shape: Shape, mode: str, answer: Answer) -> None:
    """What the client is told: prompt tokens include the cached ones exactly once."""
    t = shape.tok
    if shape.inbound == "anthropic":
        if mode == "body":
            usage = answer.json()["usage"]
        else:  # message_start carries the input side, message_delta the final count
            usage = {}
            for payload in answer.data():
                if isinstance(payload, dict) and payload.get("type") in ("message_start", "message_delta"):
                    part = payload.get("usage") or payload.get("message", {}).get("usage") or {}
                    usage.update({k: v for k, v in part.items() if v is not None})
        assert usage["input_tokens"] == t.input - t.cached - t.written
        assert usage.get("cache_read_input_tokens", 0) == t.cached
        assert usage.get("cache_creation_input_tokens", 0) == t.written
        assert usage["output_tokens"] == t.output
        return
    if mode == "stream":
        assert all(c == "[DONE]" or c.get("usage") is None for c in answer.data()), "usage leaked"
        return
    usage = answer.json()["usage"] if mode == "body" else answer.data()[-2]["usage"]
    assert usage["prompt_tokens"] == t.input
    assert usage["completion_tokens"] == t.output
    assert usage["total_tokens"] == t.input + t.output
    assert usage["prompt_tokens_details"]["cached_tokens"] == t.cached
    assert usage["completion_tokens_details"]["reasoning_tokens"] == t.reasoning
    assert usage["prompt_tokens_details"].get("cache_write_tokens", 0) == t.written


@pytest.mark.parametrize("team", ["billed", "demo"])
@pytest.mark.parametrize(("shape", "mode"), CASES)
def test_usage_shape_is_billed_exactly(gw: Backend, team: str, shape: Shape, mode: str) -> None:
    stream = mode != "body"
    client_id, answer = call(
        gw,
        team=team,
        model=shape.model,
        inbound=shape.inbound,
        stream=stream,
        include_usage=mode == "stream+usage",
        headers=mock_headers(shape.tok, shape.anthropic_upstream),
    )
    assert answer.status == 200, answer.raw
    assert answer.headers["x-gateway-model"] == shape.model
    check_client_usage(shape, mode, answer)

    record = gw.record(team, client_id)
    expected = assert_cost(record, shape.upstream, shape.tok)
    assert record["usage"] == shape.tok.ledger_usage()
    assert record["counterfactual_nano"] == record["cost_nano"]
    assert record["estimated"] is False
    assert record["status"] == 200
    assert record["stream"] is stream
    assert record["inbound"] == shape.inbound
    assert record["team"] == team
    assert record["requested_model"] == record["served_model"] == shape.model
    assert record["upstream_model"] == shape.upstream
    assert record["cache"] == "bypass"

    shown = cost_comment(answer) if stream else answer.headers["x-gateway-cost-usd"]
    assert shown == usd_str(expected) == usd_str(usd(record["cost_nano"]))


# ---------------------------------------------------------------- cut streams


@pytest.mark.parametrize("include_usage", [False, True])
def test_cut_openai_stream_is_estimated_from_delivered_text(gw: Backend, include_usage: bool) -> None:
    content = f"Count me {uuid.uuid4().hex}"
    # An uncut twin tells the prompt size the mock (and the gateway's tokenizer) count for this body.
    _, twin = call(gw, team="billed", model="gpt-4o", content=content)
    prompt = twin.json()["usage"]["prompt_tokens"]
    cut = {"x-mock-cut-after": "3", "x-mock-chunk-delay-ms": "5", "x-mock-completion-tokens": "50"}
    client_id, answer = call(
        gw,
        team="billed",
        model="gpt-4o",
        stream=True,
        include_usage=include_usage,
        headers=cut,
        content=content,
    )
    assert answer.status == 200  # the stream had started: the failure is an in-band error event
    texts = [
        c["choices"][0]["delta"].get("content") or ""
        for c in answer.data()
        if c != "[DONE]" and c.get("choices")
    ]
    assert "".join(texts) == "the of and"  # three one-token words
    assert "error" in answer.data()[-1]
    assert not [e for e in answer.events() if e[0] == "comment"]  # no cost is claimed for a failed stream

    record = gw.record("billed", client_id)
    tok = Tok(prompt, output=3)
    assert record["estimated"] is True
    assert record["status"] == 502
    assert record["usage"] == tok.ledger_usage()
    assert_cost(record, "mock-gpt", tok)


@pytest.mark.parametrize("inbound", ["anthropic", "openai"])
def test_cut_anthropic_stream_keeps_the_reported_cache_split(gw: Backend, inbound: str) -> None:
    """message_start already reported input, cache reads and cache writes: a cut keeps all three."""
    tok = Tok(3000, cached=2000, written=500, output=3)
    headers = {
        **mock_headers(Tok(3000, cached=2000, written=500, output=50), anthropic_upstream=True),
        "x-mock-cut-after": "3",
        "x-mock-chunk-delay-ms": "5",
    }
    client_id, answer = call(
        gw, team="billed", model="claude-sonnet", inbound=inbound, stream=True, headers=headers
    )
    assert answer.status == 200
    record = gw.record("billed", client_id)
    assert record["estimated"] is True
    assert record["status"] == 502
    assert record["usage"] == tok.ledger_usage()
    assert_cost(record, "mock-claude", tok)


# ---------------------------------------------------------------- cache hits


@pytest.mark.parametrize("stream", [False, True])
def test_cache_hit_costs_nothing_and_remembers_what_it_saved(gw: Backend, stream: bool) -> None:
    tok = Tok(1200, cached=1024, output=300)
    content = f"Cache me {uuid.uuid4().hex}"
    headers = mock_headers(tok, anthropic_upstream=False)
    first_id, first = call(gw, team="cachey", model="gpt-4o", stream=stream, content=content, headers=headers)
    assert first.status == 200 and first.headers["x-gateway-cache"] == "miss"
    miss = gw.record("cachey", first_id)
    original = assert_cost(miss, "mock-gpt", tok)

    # Forwarded headers (x-mock-* here) are part of the cache key: the twin sends the same ones.
    hit_id, hit = call(gw, team="cachey", model="gpt-4o", stream=stream, content=content, headers=headers)
    assert hit.status == 200
    assert hit.headers["x-gateway-cache"] == "hit"
    assert hit.headers["x-gateway-model"] == "gpt-4o"
    shown = cost_comment(hit) if stream else hit.headers["x-gateway-cost-usd"]
    assert shown == "0.000000000"
    if not stream:
        assert hit.json()["usage"]["prompt_tokens"] == tok.input  # the answer as first served

    record = gw.record("cachey", hit_id)
    assert record["cache"] == "hit"
    assert record["cost_nano"] == 0
    assert usd(record["counterfactual_nano"]) == original
    assert record["counterfactual_nano"] == miss["cost_nano"]
    assert record["usage"] == tok.ledger_usage()
    assert record["status"] == 200
    assert record["estimated"] is False
    assert record["served_model"] == "gpt-4o"


# ---------------------------------------------------------------- routing savings


@pytest.mark.parametrize("stream", [False, True])
def test_routed_request_records_the_requested_models_price(gw: Backend, stream: bool) -> None:
    tok = Tok(1200, cached=1024, output=300)
    headers = {**mock_headers(tok, anthropic_upstream=False), "x-gateway-tags": "tier=cheap"}
    client_id, answer = call(gw, team="billed", model="gpt-4o", stream=stream, headers=headers)
    assert answer.status == 200
    assert answer.headers["x-gateway-model"] == "gpt-4o-mini"
    assert answer.headers["x-gateway-route"] == "cheap"

    record = gw.record("billed", client_id)
    paid = assert_cost(record, "mock-gpt-mini", tok)
    would_have = hand_cost_usd("mock-gpt", tok)
    assert usd(record["counterfactual_nano"]) == would_have
    assert would_have - paid == Decimal("0.0010992")
    assert record["requested_model"] == "gpt-4o"
    assert record["served_model"] == "gpt-4o-mini"
    assert record["upstream_model"] == "mock-gpt-mini"
    assert record["route"] == "cheap"
    assert record["tags"] == {"tier": "cheap", **RULE_TAGS}
    shown = cost_comment(answer) if stream else answer.headers["x-gateway-cost-usd"]
    assert shown == usd_str(paid)


# ---------------------------------------------------------------- tags


def test_tags_from_header_metadata_and_user_within_limits(gw: Backend) -> None:
    extra = {
        "metadata": {"feature": "meta", "env": "m", "bad key!": "dropped", "num": 5},
        "user": "alice",
    }
    header = "feature=search, env=prod, a_very_long_key_name=1, long=abcdefghijklmnopqrstuvwxyz, extra=1"
    client_id, answer = call(
        gw, team="tagged", model="gpt-4o-mini", extra=extra, headers={"x-gateway-tags": header}
    )
    assert answer.status == 200
    record = gw.record("tagged", client_id)
    assert record["tags"] == {
        "cost_center": "cc-1",  # the team's configured tag
        "feature": "search",  # the header beats metadata
        "env": "prod",
        "user": "alice",
        "long": "abcdefghijkl",  # truncated to max_value_len
    }  # the over-long key is dropped, and "extra" would be a sixth tag
    assert len(record["tags"]) == TAG_LIMITS["max_tags"]


def test_anthropic_metadata_user_id_is_a_tag(gw: Backend) -> None:
    client_id, answer = call(
        gw,
        team="tagged",
        model="claude-sonnet",
        inbound="anthropic",
        extra={"metadata": {"user_id": "u-42"}},
        headers={"x-gateway-tags": "feature=native"},
    )
    assert answer.status == 200
    record = gw.record("tagged", client_id)
    assert record["tags"] == {"cost_center": "cc-1", "user_id": "u-42", "feature": "native"}


# ---------------------------------------------------------------- errors


def test_upstream_error_is_recorded_at_zero_with_the_clients_status(gw: Backend) -> None:
    client_id, answer = call(gw, team="billed", model="gpt-4o", headers={"x-mock-status": "400"})
    assert answer.status == 400
    record = gw.record("billed", client_id)
    assert record["status"] == 400  # what the client saw, so error counts in reports match
    assert record["cost_nano"] == 0
    assert record["estimated"] is False


# ---------------------------------------------------------------- metrics


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_tokens_cost_and_savings(gw: Backend) -> None:
    tok = Tok(1200, cached=1024, output=300)
    headers = mock_headers(tok, anthropic_upstream=False)
    content = f"Observe me {uuid.uuid4().hex}"
    before = scrape(gw.url)
    miss_id, miss = call(gw, team="obs", model="gpt-4o", content=content, headers=headers)
    hit_id, hit = call(gw, team="obs", model="gpt-4o", content=content, headers=headers)
    routed_id, routed = call(
        gw,
        team="obs",
        model="gpt-4o",
        content=f"Route me {uuid.uuid4().hex}",
        headers={**headers, "x-gateway-tags": "tier=cheap"},
    )
    assert (miss.status, hit.status, routed.status) == (200, 200, 200)
    assert hit.headers["x-gateway-cache"] == "hit"
    for client_id in (miss_id, hit_id, routed_id):
        gw.record("obs", client_id)  # everything settled
    after = scrape(gw.url)

    tokens = "llm_gateway_tokens_total"
    for model in ("gpt-4o", "gpt-4o-mini"):  # the hit consumed no upstream tokens
        assert delta(before, after, tokens, team="obs", model=model, token_type="input") == tok.input
        assert delta(before, after, tokens, team="obs", model=model, token_type="cached_input") == tok.cached
        assert delta(before, after, tokens, team="obs", model=model, token_type="output") == tok.output
        assert delta(before, after, tokens, team="obs", model=model, token_type="reasoning") == 0
    big, small = hand_cost_usd("mock-gpt", tok), hand_cost_usd("mock-gpt-mini", tok)
    cost = "llm_gateway_cost_usd_total"
    assert delta(before, after, cost, team="obs", model="gpt-4o") == pytest.approx(float(big), rel=1e-9)
    assert delta(before, after, cost, team="obs", model="gpt-4o-mini") == pytest.approx(
        float(small), rel=1e-9
    )
    savings = "llm_gateway_savings_usd_total"
    assert delta(before, after, savings, team="obs", reason="cache") == pytest.approx(float(big), rel=1e-9)
    assert delta(before, after, savings, team="obs", reason="routing") == pytest.approx(
        float(big - small), rel=1e-9
    )
