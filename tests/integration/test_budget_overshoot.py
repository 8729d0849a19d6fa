"""THE budget property, against real processes: many concurrent requests never overspend a budget.

Three gateway processes share one real Redis (and, separately, one gateway runs on the embedded
store). 500 requests of mixed shapes (OpenAI and Anthropic wire, streaming and not, small and large
prompts, with and without ``max_tokens``, actual output above and below the cap) race for a team
budget that fits roughly a hundred of them. Afterwards:

* settled spend <= the limit, read from ``/admin/budgets`` and by summing the raw ledger;
* settled spend >= limit - the largest single request's upper bound (the budget is not left idle:
  the last 100 requests go one at a time, so their denials happen while nothing else is in flight);
* every response is a 200 or a 429 ``budget_exceeded`` in the caller's wire format, never a 5xx;
* the ledger holds exactly one record per served request, and its sum equals the spend;
* the costs the clients were told (header / SSE comment) add up to the same spend;
* nothing stays reserved.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import yaml

from tests.harness import (
    ADMIN_TOKEN,
    PRICES,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    http_json,
    write_config,
)

TEAM = "burst"
KEY = "sk-burst"
LIMIT_NANO = 50_000_000  # $0.05
TOTAL_REQUESTS = 500
BURST = 300  # released at once: the widest race for the budget
PACED = 100  # then spread over PACED_OVER_S, racing with the burst's stragglers
PACED_OVER_S = 1.0
# The last 100 go one at a time: each sees every earlier request settled, so a denial among them
# proves the budget really had no room left (see check_property's lower bound).
SEQUENTIAL = TOTAL_REQUESTS - BURST - PACED
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
UPSTREAM = {"gpt-4o": "mock-gpt", "claude-sonnet": "mock-claude"}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


# ---------------------------------------------------------------------- prices (from the catalog)


def _pico(value: Any) -> int:
    return int(Decimal(str(value)) * 1_000_000) if value is not None else 0


def _bound_rates() -> dict[str, tuple[int, int]]:
    """Per logical model: (input, output) pico-USD per token the gateway must reserve at most.

    An input token is bounded by the dearest way it can be billed (plain, cache read, cache write),
    an output token by the dearer of output and reasoning.
    """
    catalog = yaml.safe_load(PRICES.read_text())
    entries = catalog.get("models", catalog)
    out = {}
    for logical, upstream in UPSTREAM.items():
        e = entries[upstream]
        out[logical] = (
            max(_pico(e.get("input")), _pico(e.get("cached_input")), _pico(e.get("cache_write"))),
            max(_pico(e.get("output")), _pico(e.get("reasoning"))),
        )
    return out


RATES = _bound_rates()


def ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def usd_to_nano(text: str) -> int:
    return int(Decimal(text) * 1_000_000_000)


# ---------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Shot:
    request_id: str
    wire: str  # "openai" | "anthropic"
    model: str
    prompt: str
    max_tokens: int | None  # None: the gateway reserves what fits and injects that cap
    completion_tokens: int  # what the mock would produce without a cap
    stream: bool
    latency_ms: int

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.stream:
            body["stream"] = True
            if self.wire == "openai" and self.completion_tokens % 2:
                body["stream_options"] = {"include_usage": True}
        return body

    def headers(self) -> dict[str, str]:
        auth = (
            {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
            if self.wire == "anthropic"
            else {"authorization": f"Bearer {KEY}"}
        )
        return {
            **auth,
            "x-request-id": self.request_id,
            "x-mock-completion-tokens": str(self.completion_tokens),
            "x-mock-latency-ms": str(self.latency_ms),
            "x-mock-chunk-delay-ms": "1" if self.stream else "0",
        }

    def prompt_bound(self) -> int:
        """An upper bound of the gateway's own prompt bound: every token covers >= 1 byte of the JSON."""
        return len(orjson.dumps(self.messages)) + 3

    def need_nano(self) -> int:
        """The least the gateway must be able to reserve to admit this request.

        A request with ``max_tokens`` needs its full upper bound; one without needs room for its
        prompt and a single output token (its cap then shrinks to what fits).
        """
        rate_in, rate_out = RATES[self.model]
        out = self.max_tokens if self.max_tokens is not None else 1
        return ceil_div(self.prompt_bound() * rate_in, 1000) + ceil_div(out * rate_out, 1000)


def make_shots(seed: int, prefix: str) -> list[Shot]:
    rng = random.Random(seed)
    shots = []
    for i in range(TOTAL_REQUESTS):
        wire = "anthropic" if i % 5 == 4 else "openai"
        model = "claude-sonnet" if wire == "anthropic" or i % 7 == 3 else "gpt-4o"
        words = rng.choice((4, 30, 120, 400))
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        if model == "claude-sonnet":
            max_tokens: int | None = rng.choice((20, 60, 100))
        else:
            max_tokens = rng.choice((None, 50, 150, 300))
        limit = max_tokens or 300
        completion = rng.randint(1, limit + limit // 2)  # sometimes above the cap: the cap wins
        shots.append(
            Shot(
                request_id=f"{prefix}-{i:04d}",
                wire=wire,
                model=model,
                prompt=prompt,
                max_tokens=max_tokens,
                completion_tokens=completion,
                stream=i % 3 == 1,
                latency_ms=rng.choice((0, 5, 20, 60)),
            )
        )
    return shots


@dataclass
class Outcome:
    shot: Shot
    status: int
    body: Any
    cost_nano: int | None  # what the gateway told the client it cost


async def fire(session: aiohttp.ClientSession, base: str, shot: Shot, delay: float) -> Outcome:
    await asyncio.sleep(delay)
    path = "/v1/messages" if shot.wire == "anthropic" else "/v1/chat/completions"
    async with session.post(base + path, json=shot.body(), headers=shot.headers()) as resp:
        raw = await resp.read()
        if resp.status == 200 and shot.stream:
            return Outcome(shot, 200, raw, _sse_cost(raw))
        body = orjson.loads(raw)
        cost = resp.headers.get("x-gateway-cost-usd")
        return Outcome(shot, resp.status, body, usd_to_nano(cost) if cost else None)


def _sse_cost(raw: bytes) -> int | None:
    for line in raw.split(b"\n"):
        if line.startswith(b": x-gateway-cost-usd="):
            return usd_to_nano(line.split(b"=", 1)[1].decode())
    return None


async def run_load(bases: list[str], shots: list[Shot]) -> list[Outcome]:
    """BURST at once plus PACED spread over PACED_OVER_S, all concurrent; then SEQUENTIAL one by one."""
    delays = [0.0] * BURST + [PACED_OVER_S * i / PACED for i in range(PACED)]
    concurrent = BURST + PACED
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        outcomes = list(
            await asyncio.gather(
                *(fire(session, bases[i % len(bases)], shots[i], delays[i]) for i in range(concurrent))
            )
        )
        for i in range(concurrent, len(shots)):
            outcomes.append(await fire(session, bases[i % len(bases)], shots[i], 0.0))
    return outcomes


# ---------------------------------------------------------------------- reading the books


def team_scope(base: str) -> dict[str, Any]:
    status, body, _ = http_json("GET", base + "/admin/budgets", headers=ADMIN)
    assert status == 200, body
    team = next(t for t in body["data"] if t["team"] == TEAM)
    return next(s for s in team["scopes"] if s["scope"] == f"team:{TEAM}")


def settled_scope(base: str, timeout: float = 10.0) -> dict[str, Any]:
    """The team's scope once every settlement has landed (settles run after the response)."""
    deadline = time.monotonic() + timeout
    scope = team_scope(base)
    while scope["reserved_usd"] != "0.000000000" and time.monotonic() < deadline:
        time.sleep(0.1)
        scope = team_scope(base)
    return scope


def admin_spend_totals(base: str) -> dict[str, Any]:
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    status, body, _ = http_json(
        "GET", f"{base}/admin/spend?team={TEAM}&since=2000-01-01&until={tomorrow}", headers=ADMIN
    )
    assert status == 200, body
    totals: dict[str, Any] = body["totals"]
    return totals


def redis_ledger(url: str) -> list[dict[str, Any]]:
    """The raw stream, no dedupe: an expired lease's entry carries its charge beside the intent."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(f"gw:{{{TEAM}}}:ledger")
    finally:
        client.close()
    out = []
    for _id, fields in entries:
        rec = orjson.loads(fields[b"r"])
        if fields.get(b"status") == b"expired":
            rec.update(status="expired", estimated=True, cost_nano=int(fields[b"cost_nano"]))
        out.append(rec)
    return out


def client_id(record: dict[str, Any]) -> str:
    """The id this test sent as x-request-id (the gateway keys its records by its own id)."""
    return str(record.get("client_request_id") or record["request_id"])


def file_ledger(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(state_dir.glob("ledger-*.jsonl")):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [r for r in out if r.get("team") == TEAM]


# ---------------------------------------------------------------------- the property


def config(tmp: Path, mock_url: str) -> Path:
    cfg = base_config(mock_url)
    cfg["teams"] = {
        TEAM: {
            "budget": {"usd": "0.05", "period": "total", "action": "deny"},
            "keys": [{"id": "burst", "key": KEY}],
            "cache": {"mode": "off"},
        }
    }
    return write_config(tmp, cfg)


def check_property(
    outcomes: list[Outcome], scope: dict[str, Any], ledger: list[dict[str, Any]], base: str
) -> None:
    # Every answer is a served 200 or a budget denial in the caller's own wire format.
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {200, 429}, statuses
    for o in outcomes:
        if o.status == 429:
            if o.shot.wire == "anthropic":
                assert o.body["type"] == "error" and o.body["error"]["type"] == "rate_limit_error", o.body
            else:
                assert o.body["error"]["code"] == "budget_exceeded", o.body
    served = [o for o in outcomes if o.status == 200]
    assert 40 <= len(served) <= 400, statuses  # the budget really was the constraint

    # Nothing left reserved; the spend respects the limit and leaves less than one request idle.
    assert scope["reserved_usd"] == "0.000000000"
    assert scope["limit_usd"] == "0.050000000"
    spent = usd_to_nano(scope["spent_usd"])
    assert spent <= LIMIT_NANO
    # The lower bound: a request denied while nothing else was in flight proves that the remaining
    # budget was below its own need; later requests only spend more. So once the sequential tail has
    # seen a denial, less than the largest single request's need can be left unspent.
    tail = outcomes[BURST + PACED :]
    assert len(tail) == SEQUENTIAL
    assert any(o.status == 429 for o in tail), "the budget was never exhausted"
    largest = max(o.shot.need_nano() for o in outcomes)
    assert spent >= LIMIT_NANO - largest, (spent, largest)

    # The ledger: one record per served request, nothing else, summing to the spend.
    assert len({r["request_id"] for r in ledger}) == len(ledger)  # the gateway's own ids: unique
    ids = Counter(client_id(r) for r in ledger)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    assert set(ids) == {o.shot.request_id for o in served}
    assert all(r["status"] == 200 and r["estimated"] is False for r in ledger)
    assert sum(int(r["cost_nano"]) for r in ledger) == spent

    # What the clients were told adds up to the same number.
    told = [o.cost_nano for o in served]
    assert None not in told
    assert sum(c for c in told if c is not None) == spent

    # And the admin report agrees.
    totals = admin_spend_totals(base)
    assert totals["cost_nano"] == spent
    assert totals["requests"] == len(served)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def own_mock(tmp_path: Path) -> Iterator[MockProvider]:
    provider = MockProvider(tmp_path)
    yield provider
    provider.stop()


def test_three_gateways_one_redis_never_overspend(
    tmp_path: Path, redis_srv: RedisServer, own_mock: MockProvider
) -> None:
    path = config(tmp_path, own_mock.url)
    gateways = [GatewayProc(path, redis_url=redis_srv.url) for _ in range(3)]
    try:
        shots = make_shots(seed=7, prefix="redis")
        outcomes = asyncio.run(run_load([g.url for g in gateways], shots))
        scope = settled_scope(gateways[0].url)
        # Every replica reads the same books.
        for g in gateways[1:]:
            assert team_scope(g.url)["spent_usd"] == scope["spent_usd"]
        check_property(outcomes, scope, redis_ledger(redis_srv.url), gateways[1].url)
        assert all(g.proc.popen.poll() is None for g in gateways)
    finally:
        for g in gateways:
            g.stop()


def test_embedded_store_never_overspends(tmp_path: Path, own_mock: MockProvider) -> None:
    path = config(tmp_path, own_mock.url)
    gw = GatewayProc(path)
    try:
        shots = make_shots(seed=11, prefix="memory")
        outcomes = asyncio.run(run_load([gw.url], shots))
        scope = settled_scope(gw.url)
        check_property(outcomes, scope, file_ledger(tmp_path / "state"), gw.url)
    finally:
        gw.stop()
