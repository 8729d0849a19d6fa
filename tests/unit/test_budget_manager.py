"""BudgetManager: reservations, the errors a denial becomes, and what happens while the store is down.

The store is the real embedded MemoryStore on a temp dir; "down" is a wrapper around it that raises
StoreError, as RedisStore does when Redis cannot answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.budget import Ask, BudgetManager, Reservation
from gateway.config.runtime import UNLIMITED, BudgetSpec, CachePolicy, Principal, TeamSpec
from gateway.errors import BudgetExceeded, RateLimited, StoreUnavailable
from gateway.metering.pricing import Rates
from gateway.observability.metrics import Metrics
from gateway.periods import seconds_until_reset
from gateway.store.base import (
    Charge,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
    StoreError,
)
from gateway.store.memory import MemoryStore
from gateway.store.redis import _script_fault
from gateway.store.resp import ReplyError
from gateway.tasks import TaskGroup

# 2026-11-28 is a Saturday; 12:00:15 UTC leaves 45 s in the rate-limit window.
NOW = datetime(2026, 11, 28, 12, 0, 15, tzinfo=UTC)
# $1 per 1M input tokens (1000 nano each), $2 per 1M output tokens (2000 nano each).
RATES = Rates(
    input=1_000_000,
    cached_input=500_000,
    cache_write=1_000_000,
    output=2_000_000,
    reasoning=2_000_000,
    provider="mock",
)


class FlakyStore(MemoryStore):
    """The embedded store with a switch: while ``down`` every budget operation raises StoreError."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.down = False
        self.record_calls = 0

    def _check(self) -> None:
        if self.down:
            raise StoreError("redis: connection refused (test)")

    async def reserve(self, req: ReserveRequest) -> ReserveResult:
        self._check()
        return await super().reserve(req)

    async def settle(self, settlement: Settlement) -> bool:
        self._check()
        return await super().settle(settlement)

    async def settle_many(self, settlements: list[Settlement]) -> list[bool | StoreError]:
        self._check()
        return await super().settle_many(settlements)

    async def record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> bool:
        self._check()
        self.record_calls += 1
        return await super().record(team, record, cost_nano, tokens, scopes)

    async def record_many(self, charges: list[Charge]) -> list[bool | StoreError]:
        self._check()
        return await super().record_many(charges)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    built = FlakyStore(tmp_path / "state")
    await built.start()
    yield built
    await built.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def budget(
    usd_nano: int = UNLIMITED,
    tokens: int = UNLIMITED,
    period: str = "monthly",
    thresholds: tuple[float, ...] = (),
) -> BudgetSpec:
    return BudgetSpec(usd_nano, tokens, period, thresholds, action="deny", downgrade_to="")


def principal(
    team_budget: BudgetSpec | None = None,
    key_budget: BudgetSpec | None = None,
    *,
    on_store_error: str = "fail_closed",
    team_rpm: int | None = None,
    key_tpm: int | None = None,
    name: str = "acme",
) -> Principal:
    team = TeamSpec(
        name=name,
        allow=re.compile(".*"),
        budget=team_budget,
        rpm=team_rpm,
        tpm=None,
        on_store_error=on_store_error,
        cache=CachePolicy(mode="off", ttl_s=0, namespace=name),
        tags={},
    )
    return Principal(key_id="k1", team=team, name="key one", budget=key_budget, tpm=key_tpm)


_seq = iter(range(10**9))


def ask(prompt: int = 100, out: int = 1_000, flexible: bool = False) -> Ask:
    lease_id = f"req-{next(_seq)}"
    return Ask(
        lease_id=lease_id,
        prompt_tokens_bound=prompt,
        out_tokens_max=out,
        flexible=flexible,
        rates=RATES,
        intent={"request_id": lease_id, "team": "acme", "ts_ms": int(NOW.timestamp() * 1000)},
        lease_ttl_ms=60_000,
    )


def ledger_record(res: Reservation, cost: int) -> dict[str, Any]:
    return {
        "request_id": res.lease_id,
        "team": res.team,
        "ts_ms": int(NOW.timestamp() * 1000),
        "cost_nano": cost,
    }


def team_scope(p: Principal) -> ScopeLimit:
    assert p.team.budget is not None
    return ScopeLimit(f"team:{p.team.name}", "2026-11", p.team.budget.usd_nano, p.team.budget.tokens)


async def team_usage(store: FlakyStore, p: Principal) -> ScopeUsage:
    return (await store.scope_usage(p.team.name, [team_scope(p)]))[team_scope(p).counter]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------- reservations


async def test_reserve_and_settle_through_the_store(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    res = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert (res.mode, res.out_tokens, res.reserved_nano, res.reserved_tokens) == (
        "store",
        1_000,
        2_100_000,
        1_100,
    )
    assert res.remaining_nano == 10_000_000 - 2_100_000
    assert [s.counter for s in res.scopes] == ["team:acme|2026-11"]
    assert await team_usage(store, p) == ScopeUsage(0, 0, 2_100_000, 1_100, 0, 1)

    await mgr.settle(res, 700_000, 400, ledger_record(res, 700_000))
    assert await team_usage(store, p) == ScopeUsage(700_000, 400, 0, 0, 0, 1)
    assert mgr.utilization["acme"] == pytest.approx(0.21)


async def test_no_budget_and_no_limits_reserves_nothing(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    res = await mgr.reserve(principal(), ask(), now=NOW)
    assert (res.mode, res.scopes, res.reserved_nano, res.remaining_nano) == ("none", [], 0, UNLIMITED)


async def test_flexible_ask_gets_what_the_budget_pays_for(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(1_000_000))
    res = await mgr.reserve(p, ask(prompt=100, out=4_096, flexible=True), now=NOW)
    # (1_000_000 - 100 * 1000) nano / 2000 nano per output token = 450 tokens.
    assert (res.out_tokens, res.reserved_nano, res.remaining_nano) == (450, 1_000_000, 0)


async def test_soft_thresholds_are_counted_once_on_spent_money(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000, thresholds=(0.2, 0.5)))
    labels = {"team": "acme", "scope": "team:acme"}
    res = await mgr.reserve(p, ask(prompt=100, out=4_000), now=NOW)  # 81 % reserved: no warning yet
    assert sample(metrics, "llm_gateway_budget_threshold_crossings_total", **labels, threshold="0.2") == 0
    (scope,) = [s for s in res.scopes if s.scope == "team:acme"]
    mgr.check_thresholds(p, scope, 0.21)  # what the gauges refresher passes: spent / limit
    mgr.check_thresholds(p, scope, 0.42)
    assert sample(metrics, "llm_gateway_budget_threshold_crossings_total", **labels, threshold="0.2") == 1
    assert sample(metrics, "llm_gateway_budget_threshold_crossings_total", **labels, threshold="0.5") == 0
    mgr.check_thresholds(p, scope, 0.63)
    mgr.check_thresholds(p, scope, 0.70)
    assert sample(metrics, "llm_gateway_budget_threshold_crossings_total", **labels, threshold="0.5") == 1


# ---------------------------------------------------------------------------- denials


async def test_usd_denial_is_a_429_with_retry_after_the_reset(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(1_000_000, period="monthly"))
    with pytest.raises(BudgetExceeded) as caught:
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)  # 2.1 M nano > 1 M
    err = caught.value
    reset = 2 * 86400 + 12 * 3600 - 15  # to 2026-12-01T00:00:00Z
    assert seconds_until_reset("monthly", NOW) == reset
    assert (err.status, err.code) == (429, "budget_exceeded")
    assert err.headers == {"x-should-retry": "false", "Retry-After": str(reset)}
    assert "USD budget exceeded for team:acme" in err.message
    assert "remaining 0.001000000 USD" in err.message and f"resets in {reset}s" in err.message
    assert sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="usd") == 1
    assert (await team_usage(store, p)).denials == 1


async def test_a_non_final_attempt_is_not_counted_as_a_denial(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(1_000_000))
    with pytest.raises(BudgetExceeded):
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW, final=False)
    assert sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="usd") == 0
    assert (await team_usage(store, p)).denials == 0
    with pytest.raises(BudgetExceeded):
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="usd") == 1
    assert (await team_usage(store, p)).denials == 1


async def test_key_denial_uses_the_keys_period(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10**12, period="monthly"), budget(500_000, period="daily"))
    with pytest.raises(BudgetExceeded) as caught:
        await mgr.reserve(p, ask(), now=NOW)
    assert caught.value.headers["Retry-After"] == str(12 * 3600 - 15)  # to midnight UTC
    assert "for key:k1" in caught.value.message


async def test_token_denial_and_a_total_budget_has_no_retry_after(
    store: FlakyStore, metrics: Metrics
) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(tokens=1_000, period="total"))
    with pytest.raises(BudgetExceeded) as caught:
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    err = caught.value
    assert err.headers == {"x-should-retry": "false"}
    assert err.message == "token budget exceeded for team:acme"
    assert sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="tokens") == 1


async def test_rpm_denial_carries_rate_limit_headers(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(team_rpm=2)
    first = await mgr.reserve(p, ask(), now=NOW)
    assert (first.mode, first.rate_remaining) == ("store", {"rpm:team:acme": 1})
    await mgr.reserve(p, ask(), now=NOW)
    with pytest.raises(RateLimited) as caught:
        await mgr.reserve(p, ask(), now=NOW)
    err = caught.value
    assert (err.status, err.code) == (429, "rate_limit_exceeded")
    assert err.headers == {
        "Retry-After": "45",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "45s",
    }
    assert sample(metrics, "llm_gateway_rate_limited_requests_total", team="acme", kind="rpm") == 1
    assert sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="usd") == 0
    # The next minute is a new window.
    later = NOW.replace(minute=1)
    assert (await mgr.reserve(p, ask(), now=later)).mode == "store"


async def test_tpm_denial_on_the_key_reports_both_windows(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(team_rpm=100, key_tpm=2_000)
    await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)  # 1100 tokens of 2000
    with pytest.raises(RateLimited) as caught:
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert caught.value.headers == {
        "Retry-After": "45",
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "45s",
        "x-ratelimit-limit-tokens": "2000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "45s",
    }


# ---------------------------------------------------------------------------- store down


async def test_fail_closed_answers_503(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    store.down = True
    with pytest.raises(StoreUnavailable) as caught:
        await mgr.reserve(principal(budget(10**9)), ask(), now=NOW)
    assert (caught.value.status, caught.value.code) == (503, "store_unavailable")
    assert caught.value.headers == {"Retry-After": "1"}
    assert sample(metrics, "llm_gateway_store_errors_total", operation="reserve") == 1


async def test_fail_open_serves_under_the_per_replica_guard(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics, expected_replicas=2)
    p = principal(budget(10_000_000), on_store_error="fail_open")  # this replica may use 5 M nano
    store.down = True
    served = [await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW) for _ in range(2)]  # 2.1 M each
    assert [(r.mode, r.reserved_nano, r.remaining_nano) for r in served] == [
        ("local", 2_100_000, UNLIMITED)
    ] * 2
    with pytest.raises(BudgetExceeded) as caught:
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert caught.value.headers == {"x-should-retry": "false"}
    assert sample(metrics, "llm_gateway_fail_open_requests_total", team="acme") == 2
    assert (
        sample(metrics, "llm_gateway_budget_denied_requests_total", team="acme", reason="fail_open_guard")
        == 1
    )
    # A settled request frees the guard down to its actual cost.
    await mgr.settle(served[0], 100_000, 10, ledger_record(served[0], 100_000))
    assert (await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)).mode == "local"
    store.down = False
    await mgr.drain(5)


async def test_fail_open_spend_is_reconciled_exactly_once(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000), on_store_error="fail_open")
    store.down = True
    served = [await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW) for _ in range(3)]
    for i, res in enumerate(served):
        await mgr.settle(res, 1_000_000 + i, 100, ledger_record(res, 1_000_000 + i))
    assert len(mgr.pending) == 3 and sum(mgr.guard.spent.values()) == 3_000_003

    store.down = False
    await mgr.drain(5)  # the reconciler retries with backoff until the store answers
    assert not mgr.pending and not mgr.pending_settles
    assert await team_usage(store, p) == ScopeUsage(3_000_003, 300, 0, 0, 0, 0)
    assert sum(mgr.guard.spent.values()) == 0, "now counted in the store, not locally"
    rows = await store.ledger("acme", 0, 2 * 10**13)
    assert sorted(r["request_id"] for r in rows) == sorted(r.lease_id for r in served)

    # A retry of records the store already has (an answer lost on the way back) changes nothing.
    for i, res in enumerate(served):
        mgr.pending.append(("acme", ledger_record(res, 1_000_000 + i), 1_000_000 + i, 100, res.scopes))
    await mgr.flush_once()
    assert not mgr.pending
    assert await team_usage(store, p) == ScopeUsage(3_000_003, 300, 0, 0, 0, 0)
    assert len(await store.ledger("acme", 0, 2 * 10**13)) == 3


async def test_settle_while_the_store_is_down_is_queued_and_applied_once(
    store: FlakyStore, metrics: Metrics
) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    res = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    store.down = True
    await mgr.settle(res, 300_000, 50, ledger_record(res, 300_000))
    assert [s.lease_id for s in mgr.pending_settles] == [res.lease_id]
    assert sample(metrics, "llm_gateway_store_errors_total", operation="settle") >= 1

    store.down = False
    await mgr.drain(5)
    assert not mgr.pending_settles
    assert await team_usage(store, p) == ScopeUsage(300_000, 50, 0, 0, 0, 1)
    # The same settlement again (a retry) is a no-op: the lease is gone.
    mgr.pending_settles.append(Settlement("acme", res.lease_id, 300_000, 50, ledger_record(res, 300_000)))
    await mgr.flush_once()
    assert await team_usage(store, p) == ScopeUsage(300_000, 50, 0, 0, 0, 1)
    assert len(await store.ledger("acme", 0, 2 * 10**13)) == 1


async def test_submit_queues_and_the_flusher_writes(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    reservations = [await mgr.reserve(p, ask(prompt=10, out=10), now=NOW) for _ in range(5)]
    for res in reservations:
        mgr.submit(res, 1_000, 5, ledger_record(res, 1_000))
    mgr.submit_record("acme", {"request_id": "hit-1", "team": "acme", "ts_ms": 1}, 0, 0, [team_scope(p)])
    await mgr.drain(5)
    assert not mgr.pending and not mgr.pending_settles
    assert await team_usage(store, p) == ScopeUsage(5_000, 25, 0, 0, 0, 5)
    assert sample(metrics, "llm_gateway_ledger_pending_records") == 0


async def test_record_while_down_is_queued(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    store.down = True
    await mgr.record("acme", {"request_id": "hit-9", "team": "acme", "ts_ms": 1}, 7, 1, [team_scope(p)])
    assert len(mgr.pending) == 1
    assert sample(metrics, "llm_gateway_store_errors_total", operation="record") == 1
    store.down = False
    await mgr.drain(5)
    assert await team_usage(store, p) == ScopeUsage(7, 1, 0, 0, 0, 0)


# ---------------------------------------------------------------------------- lease renewal


async def test_the_first_renewal_is_timed_from_the_reservation(store: FlakyStore, metrics: Metrics) -> None:
    """A stream whose first chunk came late must not wait another half TTL for its first renewal."""
    mgr = BudgetManager(store, metrics)
    res = await mgr.reserve(principal(budget(10**12)), ask(), now=NOW)
    expires_before = store.book.leases[res.lease_id].expires_ms
    res.reserved_at -= 40  # 40 s ago; the TTL is 60 s, so a renewal is 10 s overdue
    tasks = TaskGroup()
    keeper = mgr.keep_lease(res, tasks)
    assert keeper is not None
    await asyncio.sleep(0.05)
    assert store.book.leases[res.lease_id].expires_ms >= int(time.time() * 1000) + 59_000 > expires_before
    keeper.stop()
    await tasks.drain(1)


async def test_the_keeper_stops_once_its_lease_is_gone(store: FlakyStore, metrics: Metrics) -> None:
    mgr = BudgetManager(store, metrics)
    short = ask()
    short.lease_ttl_ms = 100  # a renewal every 50 ms
    res = await mgr.reserve(principal(budget(10**12)), short, now=NOW)
    tasks = TaskGroup()
    keeper = mgr.keep_lease(res, tasks)
    assert keeper is not None and keeper.running
    await mgr.settle(res, 1_000, 10, ledger_record(res, 1_000))
    await asyncio.sleep(0.2)
    assert not keeper.running, "renewing a settled lease stops the keeper"
    await tasks.drain(1)


def test_only_a_lua_runtime_error_is_the_items_own() -> None:
    assert _script_fault(ReplyError("ERR user_script:78: attempt to perform arithmetic on a nil value"))
    for passing in (
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script",
        "OOM command not allowed when used memory > 'maxmemory'. script: 3d5b, on @user_script:12.",
        "READONLY You can't write against a read only replica. script: 3d5b, on @user_script:12.",
        "NOSCRIPT No matching script",
    ):
        assert not _script_fault(ReplyError(passing)), passing
    assert not _script_fault(1)


class SlowAnswerStore(FlakyStore):
    """Applies each settle batch at once and holds its answer until ``answer`` is set: the window in
    which a shutdown used to cancel a batch the store had already applied, and then send it again."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.answer = asyncio.Event()
        self.sent: list[list[str]] = []

    async def settle_many(self, settlements: list[Settlement]) -> list[bool | StoreError]:
        results = await super().settle_many(settlements)
        self.sent.append([s.lease_id for s in settlements])
        await self.answer.wait()
        return results


async def test_shutdown_waits_for_a_batch_in_flight_instead_of_sending_it_again(
    tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    store = SlowAnswerStore(tmp_path / "state")
    await store.start()
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    res = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    mgr.submit(res, 300_000, 50, ledger_record(res, 300_000))
    await asyncio.sleep(0.05)  # the flusher has sent the batch; its answer is on the way
    assert store.sent == [[res.lease_id]]
    drain = asyncio.create_task(mgr.drain(5))
    await asyncio.sleep(0.05)
    store.answer.set()
    await drain
    assert store.sent == [[res.lease_id]], "a batch the store applied was sent a second time"
    assert "expired into spend" not in caplog.text
    assert not mgr.pending_settles
    assert await team_usage(store, p) == ScopeUsage(300_000, 50, 0, 0, 0, 1)
    await store.close()


async def test_shutdown_does_not_wait_past_its_deadline_for_a_batch_in_flight(
    tmp_path: Path, metrics: Metrics
) -> None:
    store = SlowAnswerStore(tmp_path / "state")  # its answer never comes
    await store.start()
    mgr = BudgetManager(store, metrics)
    p = principal(budget(10_000_000))
    res = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    mgr.submit(res, 300_000, 50, ledger_record(res, 300_000))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await mgr.drain(0.3, tmp_path / "spill")
    assert time.monotonic() - started < 2
    assert list((tmp_path / "spill").glob("spill-*.jsonl")), "what is still queued is spilled, not lost"
    store.answer.set()
    await store.close()


async def test_a_final_denial_first_settles_what_this_process_owes_the_team(
    store: FlakyStore, metrics: Metrics
) -> None:
    """A client's next request must not be refused because its previous request's settle is still
    queued (settles are written after the response): the budget has room once that settle lands."""
    mgr = BudgetManager(store, metrics)
    p = principal(budget(3_000_000))  # one 2.1 M reservation at a time
    first = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert first.reserved_nano == 2_100_000
    mgr.submit(first, 300_000, 50, ledger_record(first, 300_000))  # queued, not yet written
    assert mgr.pending_settles
    second = await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    assert second.reserved_nano == 2_100_000 and not mgr.pending_settles
    assert (await team_usage(store, p)).spent_nano == 300_000

    # Still no room after settling: refused, and the denial is counted once.
    mgr.submit(second, 2_100_000, 1_100, ledger_record(second, 2_100_000))
    with pytest.raises(BudgetExceeded):
        await mgr.reserve(p, ask(prompt=100, out=1_000), now=NOW)
    usage = await team_usage(store, p)
    assert usage.spent_nano == 2_400_000 and usage.reserved_nano == 0
    assert usage.denials == 1
