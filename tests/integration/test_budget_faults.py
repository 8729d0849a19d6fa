"""Budget guarantees under faults, against real processes.

* ``kill -9`` of a gateway with requests in flight (Redis, and the embedded store): every lease of
  the dead process becomes spend exactly once, charged its full reservation as an ``estimated``,
  ``expired`` ledger record, once its deadline (``server.timeouts.total_s`` + ``store.lease_grace_s``)
  has passed; settled requests keep their actual cost; the mock's served log and the ledger agree.
* Redis stopped mid-load and restarted: a ``fail_closed`` team gets 503 in its wire format while
  Redis is down; a ``fail_open`` team is served within ``limit / expected_replicas`` and then denied;
  after the restart everything queued is reconciled into Redis exactly once; the gateway never
  crashes and stays ready.
"""

from __future__ import annotations

import concurrent.futures
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.metering.tokens import byte_upper_bound_chat
from tests.harness import (
    ADMIN_TOKEN,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    http_json,
    wait_for,
    write_config,
)

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# mock-gpt (behind gpt-4o): $1.00 / $0.50 cached / 1M input, $2.00 / 1M output, in nano-USD per token.
GPT_IN_NANO, GPT_OUT_NANO = 1000, 2000


def usd_to_nano(text: str) -> int:
    return int(Decimal(text) * 1_000_000_000)


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call:
    """One chat request with a known reservation (gpt-4o, fixed max_tokens)."""

    tag: str  # our x-request-id
    team_key: str
    max_tokens: int
    completion_tokens: int
    stream: bool = False
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    wire: str = "openai"

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"request {self.tag}: tell me something"}]

    def reservation_nano(self) -> int:
        """What the gateway must reserve: the prompt's byte bound and max_tokens, at the dearest rates."""
        return byte_upper_bound_chat(self.messages) * GPT_IN_NANO + self.max_tokens * GPT_OUT_NANO

    def send(self, base: str) -> tuple[int, Any, dict[str, str]]:
        body: dict[str, Any] = {
            "model": "claude-sonnet" if self.wire == "anthropic" else "gpt-4o",
            "messages": self.messages,
            "max_tokens": self.max_tokens,
        }
        if self.stream:
            body["stream"] = True
        headers = {
            "x-request-id": self.tag,
            "x-mock-completion-tokens": str(self.completion_tokens),
            "x-mock-latency-ms": str(self.latency_ms),
            "x-mock-chunk-delay-ms": str(self.chunk_delay_ms),
        }
        if self.wire == "anthropic":
            headers |= {"x-api-key": self.team_key, "anthropic-version": "2023-06-01"}
            return http_json("POST", base + "/v1/messages", body, headers)
        headers["authorization"] = f"Bearer {self.team_key}"
        return http_json("POST", base + "/v1/chat/completions", body, headers)


def told_cost(body: Any, headers: dict[str, str]) -> int:
    """The cost the gateway reported: a header on a body, an SSE comment at the end of a stream."""
    if "x-gateway-cost-usd" in headers:
        return usd_to_nano(headers["x-gateway-cost-usd"])
    assert isinstance(body, str), body
    line = next(x for x in body.splitlines() if x.startswith(": x-gateway-cost-usd="))
    return usd_to_nano(line.split("=", 1)[1])


# ---------------------------------------------------------------------- books


def scope(base: str, team: str) -> dict[str, Any]:
    status, body, _ = http_json("GET", base + "/admin/budgets", headers=ADMIN)
    assert status == 200, body
    entry = next(t for t in body["data"] if t["team"] == team)
    found: dict[str, Any] = next(s for s in entry["scopes"] if s["scope"] == f"team:{team}")
    return found


def polled_scope(base: str, team: str) -> dict[str, Any]:
    """``scope`` for polling across a Redis restart: a failed read is "not yet" (the next poll retries)."""
    status, body, _ = http_json("GET", base + "/admin/budgets", headers=ADMIN)
    if status == 503:
        return {"reserved_usd": None, "spent_usd": "-1"}
    assert status == 200, body
    entry = next(t for t in body["data"] if t["team"] == team)
    found: dict[str, Any] = next(s for s in entry["scopes"] if s["scope"] == f"team:{team}")
    return found


def quiet_scope(base: str, team: str, timeout: float = 10.0) -> dict[str, Any]:
    """The scope once nothing is reserved any more (settlements land after the response)."""
    result: dict[str, Any] = wait_for(
        f"{team} to have nothing reserved",
        lambda: (s := polled_scope(base, team))["reserved_usd"] == "0.000000000" and s,
        timeout,
    )
    return result


def redis_ledger(url: str, team: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(f"gw:{{{team}}}:ledger")
    finally:
        client.close()
    out = []
    for _id, fields in entries:
        rec = orjson.loads(fields[b"r"])
        if fields.get(b"status") == b"expired":  # the Lua expiry: the intent plus the full charge
            rec.update(status="expired", estimated=True, cost_nano=int(fields[b"cost_nano"]))
        out.append(rec)
    return out


def file_ledger(state_dir: Path, team: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(state_dir.glob("ledger-*.jsonl")):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [r for r in out if r.get("team") == team]


def by_tag(ledger: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Our x-request-id -> its record, asserting there is exactly one record per request."""
    tags = Counter(str(r.get("client_request_id") or r["request_id"]) for r in ledger)
    dupes = [t for t, n in tags.items() if n > 1]
    assert not dupes, f"requests charged more than once: {dupes}"
    return {str(r.get("client_request_id") or r["request_id"]): r for r in ledger}


def assert_served_once(mock: MockProvider, ledger: list[dict[str, Any]]) -> None:
    """Whatever the provider served (and so billed) is in the ledger, exactly once."""
    ids = Counter(str(r["request_id"]) for r in ledger)
    served = mock.served_ids()
    assert served
    assert all(ids[i] == 1 for i in served), [i for i in served if ids[i] != 1]


# ---------------------------------------------------------------------- kill -9


def crash_config(tmp: Path, mock_url: str) -> Path:
    cfg = base_config(mock_url)
    cfg["server"]["timeouts"] = {"connect_s": 2, "first_byte_s": 5, "idle_s": 5, "total_s": 5}
    cfg["store"]["lease_grace_s"] = 1  # a dead process's leases are charged 6 s after they were taken
    cfg["teams"] = {
        "crash": {
            "budget": {"usd": "1", "period": "total"},
            "keys": [{"id": "crash", "key": "sk-crash"}],
            "cache": {"mode": "off"},
        }
    }
    return write_config(tmp, cfg)


COMPLETED = [
    Call("done-0", "sk-crash", max_tokens=30, completion_tokens=12),
    Call("done-1", "sk-crash", max_tokens=30, completion_tokens=40),  # capped at 30
    Call("done-2", "sk-crash", max_tokens=25, completion_tokens=7, stream=True),
    Call("done-3", "sk-crash", max_tokens=50, completion_tokens=50, stream=True),
]
IN_FLIGHT = [
    *(
        Call(f"slow-{i}", "sk-crash", max_tokens=40 + i, completion_tokens=20, latency_ms=4000)
        for i in range(5)
    ),
    *(
        Call(f"stream-{i}", "sk-crash", max_tokens=60, completion_tokens=60, stream=True, chunk_delay_ms=100)
        for i in range(4)
    ),
]


def crash_and_recover(
    tmp: Path, mock: MockProvider, redis_url: str | None
) -> tuple[GatewayProc, dict[str, int], int]:
    """Serve COMPLETED, start IN_FLIGHT, kill -9 the gateway, start a new one on the same books.

    Returns (the new gateway, the cost each completed request was told, reserved at the crash).
    """
    path = crash_config(tmp, mock.url)
    first = GatewayProc(path, redis_url=redis_url)
    told = {}
    for call in COMPLETED:
        status, body, headers = call.send(first.url)
        assert status == 200, body
        told[call.tag] = told_cost(body, headers)
    settled = quiet_scope(first.url, "crash")
    assert usd_to_nano(settled["spent_usd"]) == sum(told.values())

    pool = concurrent.futures.ThreadPoolExecutor(len(IN_FLIGHT))
    futures = [pool.submit(call.send, first.url) for call in IN_FLIGHT]
    expected_reserved = sum(c.reservation_nano() for c in IN_FLIGHT)
    wait_for(
        "every in-flight request to hold its lease",
        lambda: usd_to_nano(scope(first.url, "crash")["reserved_usd"]) == expected_reserved,
        timeout=10,
        every=0.05,
    )
    time.sleep(0.3)  # the streams are mid-way, the slow bodies still waiting on the provider
    crashed = scope(first.url, "crash")
    first.kill9()
    first.stop()  # reaps it and closes its log
    for f in futures:  # every client saw its connection die: nothing was answered
        assert f.exception(timeout=10) is not None
    pool.shutdown()
    assert usd_to_nano(crashed["reserved_usd"]) == expected_reserved
    assert crashed["requests"] == len(COMPLETED) + len(IN_FLIGHT)
    return GatewayProc(path, redis_url=redis_url), told, expected_reserved


def check_crash_books(ledger: list[dict[str, Any]], told: dict[str, int], mock: MockProvider) -> None:
    records = by_tag(ledger)
    assert set(records) == {c.tag for c in COMPLETED} | {c.tag for c in IN_FLIGHT}
    for call in COMPLETED:
        rec = records[call.tag]
        assert rec["status"] == 200 and rec["estimated"] is False
        assert rec["cost_nano"] == told[call.tag]
    for call in IN_FLIGHT:
        rec = records[call.tag]
        assert rec["status"] == "expired" and rec["estimated"] is True, rec
        assert rec["cost_nano"] == call.reservation_nano(), call.tag
        assert rec["team"] == "crash" and rec["requested_model"] == "gpt-4o"
    assert_served_once(mock, ledger)


@pytest.fixture
def own_mock(tmp_path: Path) -> Iterator[MockProvider]:
    provider = MockProvider(tmp_path)
    yield provider
    provider.stop()


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_kill9_with_redis_charges_every_lease_once(
    tmp_path: Path, own_mock: MockProvider, redis_srv: RedisServer
) -> None:
    second, told, reserved = crash_and_recover(tmp_path, own_mock, redis_srv.url)
    try:
        # The new process's sweeper charges the dead process's leases once they are due.
        final = quiet_scope(second.url, "crash", timeout=20)
        assert usd_to_nano(final["spent_usd"]) == sum(told.values()) + reserved
        ledger = redis_ledger(redis_srv.url, "crash")
        check_crash_books(ledger, told, own_mock)
        # Expiry is idempotent: a reservation (which first expires whatever is due) charges nothing
        # more, and a settled request is still charged its actual cost only.
        after = Call("after", "sk-crash", max_tokens=10, completion_tokens=10)
        status, body, headers = after.send(second.url)
        assert status == 200, body
        again = quiet_scope(second.url, "crash")
        assert usd_to_nano(again["spent_usd"]) == usd_to_nano(final["spent_usd"]) + told_cost(body, headers)
        assert len(redis_ledger(redis_srv.url, "crash")) == len(ledger) + 1
    finally:
        second.stop()


def test_kill9_with_embedded_store_charges_every_lease_once(tmp_path: Path, own_mock: MockProvider) -> None:
    second, told, reserved = crash_and_recover(tmp_path, own_mock, None)
    try:
        # The journal survived the crash; the restart replays it and charges the open leases at once.
        final = quiet_scope(second.url, "crash", timeout=5)
        assert usd_to_nano(final["spent_usd"]) == sum(told.values()) + reserved
        ledger = file_ledger(tmp_path / "state", "crash")
        check_crash_books(ledger, told, own_mock)
    finally:
        second.stop()
    # A further restart replays the compacted snapshot: nothing is charged twice.
    third = GatewayProc(tmp_path / "gateway.yaml")
    try:
        assert scope(third.url, "crash")["spent_usd"] == final["spent_usd"]
        assert len(file_ledger(tmp_path / "state", "crash")) == len(ledger)
    finally:
        third.stop()


# ---------------------------------------------------------------------- Redis outage

OPEN_LIMIT_NANO = 600_000  # $0.0006; two expected replicas: each may spend $0.0003 while Redis is down


def outage_config(tmp: Path, mock_url: str) -> Path:
    cfg = base_config(mock_url)
    cfg["store"]["expected_replicas"] = 2
    cfg["teams"] = {
        "closed": {
            "budget": {"usd": "1", "period": "total"},
            "on_store_error": "fail_closed",
            "keys": [{"id": "closed", "key": "sk-closed"}],
            "cache": {"mode": "off"},
        },
        "open": {
            "budget": {"usd": "0.0006", "period": "total"},
            "on_store_error": "fail_open",
            "keys": [{"id": "open", "key": "sk-open"}],
            "cache": {"mode": "off"},
        },
    }
    return write_config(tmp, cfg)


def ready(base: str) -> bool:
    status, body, _ = http_json("GET", base + "/readyz")
    return status == 200 and body["ready"] is True


def test_redis_outage_fail_closed_fail_open_and_reconcile(
    tmp_path: Path, own_mock: MockProvider, redis_srv: RedisServer
) -> None:
    # Persist on shutdown, as a production Redis would: the restart brings the books back.
    client = redis.Redis.from_url(redis_srv.url)
    client.config_set("save", "3600 1")
    client.close()
    gw = GatewayProc(outage_config(tmp_path, own_mock.url), redis_url=redis_srv.url)
    served: dict[str, int] = {}  # our request id -> the cost the client was told
    try:
        for i, team_key in enumerate(("sk-closed", "sk-open", "sk-closed")):
            call = Call(f"before-{i}", team_key, max_tokens=20, completion_tokens=20)
            status, body, headers = call.send(gw.url)
            assert status == 200, body
            served[call.tag] = told_cost(body, headers)

        # Requests in flight while Redis goes away: reserved in Redis, settled after it is back.
        slow = [
            Call("slow-closed", "sk-closed", max_tokens=20, completion_tokens=20, latency_ms=1500),
            Call("slow-open", "sk-open", max_tokens=20, completion_tokens=15, latency_ms=1500, stream=True),
        ]
        pool = concurrent.futures.ThreadPoolExecutor(2)
        slow_futures = [pool.submit(c.send, gw.url) for c in slow]
        wait_for("the slow requests' leases", lambda: scope(gw.url, "open")["reserved_usd"] != "0.000000000")
        redis_srv.stop()

        # fail_closed: 503 in the caller's wire format, with a short Retry-After.
        status, body, headers = Call("down-closed-oa", "sk-closed", 20, 20).send(gw.url)
        assert status == 503, body
        assert body["error"]["type"] == "service_unavailable"
        assert body["error"]["code"] == "store_unavailable"
        assert headers["retry-after"] == "1"
        status, body, headers = Call("down-closed-an", "sk-closed", 20, 20, wire="anthropic").send(gw.url)
        assert status == 503, body
        assert body["type"] == "error" and body["error"]["type"] == "api_error"

        # fail_open: served under the local guard (limit / expected_replicas), then denied.
        guard = OPEN_LIMIT_NANO // 2
        outage_costs: list[int] = []
        outcomes = []
        for i in range(12):
            call = Call(f"down-open-{i}", "sk-open", max_tokens=20, completion_tokens=20, stream=i % 2 == 1)
            status, body, headers = call.send(gw.url)
            outcomes.append(status)
            if status == 200:
                served[call.tag] = told_cost(body, headers)
                outage_costs.append(served[call.tag])
            else:
                assert status == 429, body
                assert body["error"]["code"] == "budget_exceeded"
                assert headers["x-should-retry"] == "false"
            assert ready(gw.url)
        first_denial = outcomes.index(429)
        assert first_denial >= 2 and all(s == 429 for s in outcomes[first_denial:]), outcomes
        assert sum(outage_costs) <= guard
        # A further request would have broken the guard: the guard reserves the upper bound.
        bound = Call("x", "sk-open", 20, 20).reservation_nano()
        assert sum(outage_costs) + bound > guard

        for f, call in zip(slow_futures, slow, strict=True):
            status, body, headers = f.result(timeout=10)
            assert status == 200, body
            served[call.tag] = told_cost(body, headers)
        pool.shutdown()
        assert gw.proc.popen.poll() is None and ready(gw.url)
        status, body, _ = http_json("GET", gw.url + "/readyz")
        assert body["store_ok"] is False

        redis_srv.restart()

        # Everything queued while Redis was down lands exactly once.
        open_tags = [t for t in served if t in ("before-1", "slow-open") or t.startswith("down-open")]
        closed_tags = [t for t in served if t not in open_tags]
        open_final = wait_for(
            "the fail-open spend to be reconciled",
            lambda: (
                (s := polled_scope(gw.url, "open"))["reserved_usd"] == "0.000000000"
                and usd_to_nano(s["spent_usd"]) == sum(served[t] for t in open_tags)
                and s
            ),
            timeout=20,
        )
        assert usd_to_nano(open_final["spent_usd"]) <= OPEN_LIMIT_NANO
        closed_final = quiet_scope(gw.url, "closed")
        assert usd_to_nano(closed_final["spent_usd"]) == sum(served[t] for t in closed_tags)
        for team, tags in (("open", open_tags), ("closed", closed_tags)):
            records = by_tag(redis_ledger(redis_srv.url, team))
            assert set(records) == set(tags)
            for tag in tags:
                assert records[tag]["cost_nano"] == served[tag] and records[tag]["status"] == 200
        metrics = http_json("GET", gw.url + "/metrics")[1]
        assert f'llm_gateway_fail_open_requests_total{{team="open"}} {float(len(outage_costs))}' in metrics

        # Back to normal: the store answers again, the remaining budget is usable.
        status, body, _ = Call("after-open", "sk-open", 20, 20).send(gw.url)
        assert status == 200, body
        assert ready(gw.url) and http_json("GET", gw.url + "/readyz")[1]["store_ok"] is True
    finally:
        assert gw.proc.popen.poll() is None, "the gateway crashed"
        gw.stop()


# ---------------------------------------------------------------------- client gone mid-admission


def test_a_client_gone_while_its_admission_is_in_flight_costs_nothing_and_holds_no_lock(
    tmp_path: Path, own_mock: MockProvider, redis_srv: RedisServer
) -> None:
    """Redis is paused, so the admission script (reservation + cache fill lock) waits in the socket;
    the client gives up and the gateway cancels the request. When Redis resumes, the script runs and
    reserves: the gateway must release that lease at $0 (not let it expire into spend) and drop the
    fill lock, or identical requests would wait ``lock_wait_ms`` for an entry nobody is filling."""
    cfg = base_config(own_mock.url)
    cfg["teams"] = {
        "gone": {
            "budget": {"usd": "1", "period": "total"},
            "keys": [{"id": "gone", "key": "sk-gone"}],
            "cache": {"mode": "always"},
        }
    }
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}
    headers = {"authorization": "Bearer sk-gone", "content-type": "application/json"}
    gateway = GatewayProc(write_config(tmp_path, cfg), redis_url=redis_srv.url)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        # A first request loads the scripts: a fresh Redis would answer the paused one NOSCRIPT (not run).
        warm = {**body, "messages": [{"role": "user", "content": "warm up"}]}
        assert http_json("POST", gateway.url + "/v1/chat/completions", warm, headers)[0] == 200
        spent_before = quiet_scope(gateway.url, "gone")["spent_usd"]
        client.execute_command("CLIENT", "PAUSE", 700, "ALL")  # shorter than the 1 s store timeout
        request = urllib.request.Request(
            gateway.url + "/v1/chat/completions", data=orjson.dumps(body), headers=headers, method="POST"
        )
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(request, timeout=0.2)
        time.sleep(0.7)  # Redis runs the script, then the release queued behind it
        assert quiet_scope(gateway.url, "gone")["spent_usd"] == spent_before
        ledger = wait_for("the release's ledger record", lambda: redis_ledger(redis_srv.url, "gone")[1:])
        assert [(r["status"], r["cost_nano"]) for r in ledger] == [(499, 0)]
        assert wait_for("the fill lock to go", lambda: not client.keys("gw:{gone}:cl:*"), timeout=5)
        # The request still shows: an access-log line and a 4xx in the error-rate metric.
        assert wait_for("the 499 access log line", lambda: '"status":499' in gateway.proc.log(), timeout=5)
        metrics = http_json("GET", gateway.url + "/metrics")[1]
        assert 'llm_gateway_requests_total{model="gpt-4o",operation="chat",provider="-",' in metrics
        assert 'route="default",status_class="4xx",team="gone"} 1.0' in metrics
        started = time.monotonic()
        status, answer, _ = http_json("POST", gateway.url + "/v1/chat/completions", body, headers)
        assert status == 200, answer
        assert time.monotonic() - started < 1.5  # no wait on a lock nobody holds
    finally:
        client.close()
        gateway.stop()
