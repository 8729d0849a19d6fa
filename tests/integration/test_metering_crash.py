"""kill -9 under load: nothing the upstream served escapes the ledger, and nothing is billed twice.

A gateway (embedded store, then Redis) is killed while requests are held upstream (the mock's
x-mock-latency-ms and slow streams) and while a steady trickle of fast requests is in every other
stage. After a restart (and, for Redis, the lease expiry plus a sweep) the ledger must hold:
every request the mock logged as served, exactly once; the held ones as ``expired`` estimated
records charged their full reservation; no request id twice; and a budget counter equal to the
ledger's sum. The mock here is this test's own, so its served log is this load's only.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.metering.pricing import nano_to_usd_str
from gateway.metering.tokens import byte_upper_bound_chat
from tests.harness import ADMIN_TOKEN, GatewayProc, MockProvider, RedisServer, base_config, write_config
from tests.integration.test_metering import Answer, post, rid
from tests.integration.test_reports import all_records

TEAM = "crash"
MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": "Summarize the quarterly cost report in one line."}]
N_FAST = 24  # completed before the kill
N_HELD = 8  # non-stream, held upstream by x-mock-latency-ms when the gateway dies
N_STREAMS = 4  # streams mid-flight when the gateway dies
TOTAL_S = 2.0  # request deadline; with the grace below, a Redis lease expires 2.5 s after its reserve
GRACE_S = 0.5

# The reservation is the strict upper bound for gpt-4o (mock-gpt): every prompt byte at the
# highest input rate (1.00 USD/1M = 1000 nano per token) plus max_tokens at the output rate
# (2.00 USD/1M = 2000 nano per token).
RESERVATION_NANO = byte_upper_bound_chat(MESSAGES, None) * 1000 + MAX_TOKENS * 2000


def crash_config(mock_url: str) -> dict[str, Any]:
    cfg = base_config(mock_url)
    cfg["server"]["timeouts"] = {
        "connect_s": 2,
        "first_byte_s": TOTAL_S,
        "idle_s": TOTAL_S,
        "total_s": TOTAL_S,
    }
    cfg["server"]["shutdown_grace_s"] = 1
    cfg["store"]["lease_grace_s"] = GRACE_S
    # A budget, so every request holds a lease whose write-ahead intent outlives the process.
    cfg["teams"][TEAM] = {"keys": [{"id": TEAM, "key": f"sk-{TEAM}"}], "budget": {"usd": 1000}}
    cfg["routing"] = {"retry": {"max_attempts": 1}}
    return cfg


@dataclass
class Sent:
    client_id: str
    kind: str  # fast | held | stream | trickle
    answer: Answer | None = None  # None: the connection died with the gateway

    @property
    def completed(self) -> bool:
        if self.answer is None or self.answer.status != 200:
            return False
        if self.kind == "stream":
            return self.answer.raw.rstrip().split(b"\n")[-1].startswith(b": x-gateway-cost-usd=")
        return True


def request(url: str, sent: Sent, headers: dict[str, str], stream: bool = False) -> Sent:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
    hdrs = {"authorization": f"Bearer sk-{TEAM}", "x-request-id": sent.client_id, **headers}
    try:
        sent.answer = post(f"{url}/v1/chat/completions", body, hdrs)
    except (OSError, http.client.HTTPException):  # reset, refused, or a chunked body cut short
        sent.answer = None
    return sent


def admin(url: str, path: str) -> Any:
    req = urllib.request.Request(url + path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())


def team_scope(url: str) -> dict[str, Any]:
    data = admin(url, "/admin/budgets")["data"]
    team = next(t for t in data if t["team"] == TEAM)
    return next(s for s in team["scopes"] if s["scope"] == f"team:{TEAM}")


def usd_nano(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 10**9 + int(frac.ljust(9, "0"))


def mock_requests(mock: MockProvider) -> int:
    with urllib.request.urlopen(mock.url + "/_mock/stats", timeout=5) as resp:
        return int(orjson.loads(resp.read())["requests"])


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def expired_at_reservation(record: dict[str, Any]) -> bool:
    return (
        record["status"] == "expired"
        and record["estimated"] is True
        and record["cost_nano"] == RESERVATION_NANO
    )


def check_record(s: Sent, record: dict[str, Any] | None, served: set[str]) -> None:
    if s.kind == "fast":  # long settled before the kill
        assert s.answer is not None and record is not None
        assert record["status"] == 200 and record["estimated"] is False
        assert s.answer.headers["x-gateway-cost-usd"] == nano_to_usd_str(record["cost_nano"])
    elif s.kind in ("held", "stream"):  # reserved and upstream when the process died
        assert record is not None and expired_at_reservation(record), (s.client_id, record)
    elif record is None:  # the kill caught it before its reservation: it never reached upstream
        assert s.client_id not in served and not s.completed
    elif s.completed and record["status"] == 200:  # answered and settled
        assert s.answer is not None and record["estimated"] is False
        assert s.answer.headers["x-gateway-cost-usd"] == nano_to_usd_str(record["cost_nano"])
    else:
        # Reserved, then the process died before the settle (which runs after the answer is
        # written, off the response path): charged in full, never free. An answered request's
        # reservation is its cost's upper bound, so the estimate never bills less than it showed.
        assert expired_at_reservation(record), (s, record)
        if s.completed and s.answer is not None:
            assert usd_nano(s.answer.headers["x-gateway-cost-usd"]) <= record["cost_nano"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_kill9_under_load_loses_nothing_and_bills_nothing_twice(tmp_path: Path, backend: str) -> None:
    mock = MockProvider(tmp_path)
    redis = RedisServer(tmp_path / "redis") if backend == "redis" else None
    redis_url = redis.url if redis else None
    config = write_config(tmp_path, crash_config(mock.url))
    run = uuid.uuid4().hex[:8]
    sent: list[Sent] = []
    gateway = GatewayProc(config, redis_url=redis_url)
    restarted: GatewayProc | None = None
    started_ms = int(time.time() * 1000)
    try:
        url = gateway.url
        with ThreadPoolExecutor(8) as pool:
            fast = [Sent(f"cr-{run}-fast-{i}", "fast") for i in range(N_FAST)]
            sent += list(pool.map(lambda s: request(url, s, {}), fast))
        assert all(s.completed for s in sent)

        # Held upstream: every one of these has its lease reserved when the gateway dies.
        held = [Sent(f"cr-{run}-held-{i}", "held") for i in range(N_HELD)]
        streams = [Sent(f"cr-{run}-stream-{i}", "stream") for i in range(N_STREAMS)]
        slow = {"x-mock-latency-ms": "2500"}
        paced = {"x-mock-chunk-delay-ms": "300", "x-mock-completion-tokens": str(MAX_TOKENS)}
        threads = [threading.Thread(target=request, args=(url, s, slow)) for s in held]
        threads += [threading.Thread(target=request, args=(url, s, paced, True)) for s in streams]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: mock_requests(mock) == N_FAST + N_HELD + N_STREAMS, 10, "the held requests upstream"
        )
        # Exactly the held requests are reserved now, each for the hand-computed upper bound.
        wait_until(
            lambda: usd_nano(team_scope(url)["reserved_usd"]) == (N_HELD + N_STREAMS) * RESERVATION_NANO,
            5,
            "the reservations of the held requests (and only those)",
        )

        # A trickle of fast requests on top, caught in whatever stage the kill finds them.
        trickle: list[Sent] = []
        stop = threading.Event()

        def hammer(worker: int) -> None:
            i = 0
            while not stop.is_set():
                one = Sent(f"cr-{run}-trickle-{worker}-{i}", "trickle")
                trickle.append(one)
                if request(url, one, {}).answer is None:
                    return  # the gateway is gone
                i += 1

        hammers = [threading.Thread(target=hammer, args=(w,)) for w in range(2)]
        for thread in hammers:
            thread.start()
        wait_until(lambda: len(trickle) >= 10, 10, "the trickle to get going")
        threads += hammers

        gateway.kill9()
        stop.set()
        for thread in threads:
            thread.join(30)
        sent += held + streams + trickle
        assert not any(s.completed for s in held + streams)

        restarted = GatewayProc(config, redis_url=redis_url)
        all_ids = {s.client_id for s in sent}

        def ledger() -> list[dict[str, Any]]:
            return [
                r
                for r in all_records(
                    tmp_path / "state", redis_url, [TEAM], started_ms - 60_000, started_ms + 3_600_000
                )
                if rid(r) in all_ids
            ]

        must = {s.client_id for s in held + streams} | {s.client_id for s in sent if s.completed}
        # Memory: the restart itself expires the dead process's leases. Redis: the lease TTL
        # (total_s + lease_grace_s) passes, then the 5 s sweeper charges them.
        wait_until(lambda: must <= {rid(r) for r in ledger()}, 20, "the expired leases to reach the ledger")
        time.sleep(0.5)  # anything still on its way would show up as a duplicate now
        records = ledger()
        by_id = {rid(r): r for r in records}
        # Read last: a held request may still be answered (into a dead socket) after the kill.
        served = set(mock.served_ids())

        # No request twice, by the client's id or by the gateway's.
        assert [i for i, n in Counter(rid(r) for r in records).items() if n > 1] == []
        assert len({r["request_id"] for r in records}) == len(records)
        # Everything the upstream served is billed.
        assert served <= {r["request_id"] for r in records}, served - {r["request_id"] for r in records}
        assert len(served) >= N_FAST

        for s in sent:
            check_record(s, by_id.get(s.client_id), served)

        # The budget counter and the ledger tell the same story.
        after = team_scope(restarted.url)
        assert usd_nano(after["reserved_usd"]) == 0
        assert usd_nano(after["spent_usd"]) == sum(r["cost_nano"] for r in records)
    finally:
        for proc in (restarted, gateway):
            if proc is not None:
                proc.stop()
        mock.stop()
        if redis is not None:
            redis.stop()
