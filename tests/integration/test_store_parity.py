"""The two store backends behave identically: every scenario below runs, unchanged, against the
embedded store (``MemoryStore`` on a temp dir) and against a real redis-server (``RedisStore``).

Every test works on its own team (a fresh uuid), so the shared session Redis needs no flushing.
Times are real wall-clock milliseconds: Redis stream ids (the ledger) are taken from the server clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.base import (
    UNLIMITED,
    KeyRecord,
    RateLimit,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
    Store,
)
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

pytestmark = pytest.mark.parametrize("backend", ["memory", "redis"])

TTL_MS = 60_000


@pytest.fixture
async def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    built: Store
    if backend == "memory":
        built = MemoryStore(tmp_path / "state")
    else:
        built = RedisStore(request.getfixturevalue("redis_server").url)
    await built.start()
    yield built
    await built.close()


@pytest.fixture
def team() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def now_ms() -> int:
    return int(time.time() * 1000)


def scopes(
    team: str,
    period: str = "2026-11",
    team_usd: int = UNLIMITED,
    key_usd: int = UNLIMITED,
    team_tok: int = UNLIMITED,
) -> list[ScopeLimit]:
    return [
        ScopeLimit(f"team:{team}", period, team_usd, team_tok),
        ScopeLimit(f"key:{team}-k", period, key_usd),
    ]


async def reserve(
    store: Store,
    team: str,
    lease_id: str,
    sc: list[ScopeLimit],
    *,
    at: int,
    fixed_nano: int = 0,
    fixed_tokens: int = 0,
    price: int = 0,
    out_max: int = 0,
    out_min: int | None = None,
    rates: list[RateLimit] | None = None,
    ttl_ms: int = TTL_MS,
    count_denial: bool = True,
) -> ReserveResult:
    return await store.reserve(
        ReserveRequest(
            team=team,
            lease_id=lease_id,
            now_ms=at,
            lease_ttl_ms=ttl_ms,
            scopes=sc,
            fixed_nano=fixed_nano,
            fixed_tokens=fixed_tokens,
            out_price_pico=price,
            out_tokens_max=out_max,
            out_tokens_min=out_max if out_min is None else out_min,
            rate_limits=rates or [],
            intent=record(team, lease_id, at),
            count_denial=count_denial,
        )
    )


def record(team: str, request_id: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "team": team, "ts_ms": ts, "served_model": "m", **extra}


def settlement(team: str, lease_id: str, cost: int, tokens: int, ts: int) -> Settlement:
    rec = record(team, lease_id, ts, cost_nano=cost, status="ok", usage={"input_tokens": tokens})
    return Settlement(team, lease_id, cost, tokens, rec, now_ms=ts)


async def usage(store: Store, team: str, sc: list[ScopeLimit]) -> list[ScopeUsage]:
    got = await store.scope_usage(team, sc)
    return [got[s.counter] for s in sc]


# ---------------------------------------------------------------------------- reserve and settle


async def test_reserve_then_settle(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=1_000_000, key_usd=600_000)
    res = await reserve(
        store, team, "l1", sc, at=t, fixed_nano=100_000, fixed_tokens=100, price=2_000_000, out_max=50
    )
    assert (res.ok, res.reason, res.scope, res.out_tokens) == (True, "", "", 50)
    assert (res.reserved_nano, res.reserved_tokens) == (200_000, 150)
    assert (res.remaining_nano, res.remaining_tokens) == (400_000, UNLIMITED)
    assert await usage(store, team, sc) == [ScopeUsage(0, 0, 200_000, 150, 0, 1)] * 2

    assert await store.settle(settlement(team, "l1", 120_000, 90, t))
    assert await usage(store, team, sc) == [ScopeUsage(120_000, 90, 0, 0, 0, 1)] * 2
    assert not await store.settle(settlement(team, "l1", 120_000, 90, t)), "settled once only"
    assert await usage(store, team, sc) == [ScopeUsage(120_000, 90, 0, 0, 0, 1)] * 2

    rows = await store.ledger(team, t, t + 1)
    assert [(r["request_id"], r["cost_nano"], r["status"]) for r in rows] == [("l1", 120_000, "ok")]
    assert team in await store.teams()


async def test_settle_above_the_reservation_charges_the_truth(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=100_000)
    assert (await reserve(store, team, "l1", sc, at=t, fixed_nano=90_000)).ok
    assert await store.settle(settlement(team, "l1", 150_000, 7, t))
    assert (await usage(store, team, sc))[0] == ScopeUsage(150_000, 7, 0, 0, 0, 1)
    res = await reserve(store, team, "l2", sc, at=t, fixed_nano=1)
    assert (res.ok, res.reason, res.remaining_nano) == (False, "usd", 0)


async def test_unknown_lease_settles_to_nothing(store: Store, team: str) -> None:
    assert not await store.settle(settlement(team, "never-reserved", 5, 5, now_ms()))
    assert await store.ledger(team, 0, now_ms() + 1) == []


async def test_settle_many_and_record_many(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team)
    for i in range(3):
        assert (await reserve(store, team, f"l{i}", sc, at=t, fixed_nano=1_000)).ok
    batch = [settlement(team, f"l{i}", 10 * i, i, t) for i in (0, 1, 2)] + [settlement(team, "l1", 99, 9, t)]
    assert await store.settle_many(batch) == [True, True, True, False]
    charges = [
        (team, record(team, "r1", t, cost_nano=5), 5, 1, sc),
        (team, record(team, "r2", t, cost_nano=7), 7, 1, sc),
        (team, record(team, "r1", t, cost_nano=5), 5, 1, sc),
    ]
    assert await store.record_many(charges) == [True, True, False]
    assert (await usage(store, team, sc))[0] == ScopeUsage(30 + 12, 3 + 2, 0, 0, 0, 3)
    assert sorted(r["request_id"] for r in await store.ledger(team, t, t + 1)) == [
        "l0",
        "l1",
        "l2",
        "r1",
        "r2",
    ]


# ---------------------------------------------------------------------------- denials


async def test_denial_is_counted_on_the_tightest_scope_only(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=1_000_000, key_usd=300_000)
    res = await reserve(store, team, "l1", sc, at=t, fixed_nano=100_000, price=2_000_000, out_max=101)
    assert (res.ok, res.reason, res.scope) == (False, "usd", f"key:{team}-k")
    assert (res.out_tokens, res.reserved_nano, res.reserved_tokens) == (0, 0, 0)
    assert (res.remaining_nano, res.remaining_tokens) == (300_000, UNLIMITED)
    assert await usage(store, team, sc) == [ScopeUsage(), ScopeUsage(denials=1)]
    assert not await store.settle(settlement(team, "l1", 1, 1, t)), "a denied request holds no lease"


async def test_a_denial_the_caller_retries_is_not_counted(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=1_000)
    res = await reserve(store, team, "l1", sc, at=t, fixed_nano=2_000, count_denial=False)
    assert (res.ok, res.reason, res.scope, res.remaining_nano) == (False, "usd", f"team:{team}", 1_000)
    assert (await usage(store, team, sc))[0] == ScopeUsage()
    assert not (await reserve(store, team, "l2", sc, at=t, fixed_nano=2_000)).ok
    assert (await usage(store, team, sc))[0] == ScopeUsage(denials=1)


async def test_token_budget_denial(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_tok=1_000)
    assert (await reserve(store, team, "l1", sc, at=t, fixed_tokens=400, out_max=400)).ok
    res = await reserve(store, team, "l2", sc, at=t, fixed_tokens=100, out_max=101)
    assert (res.ok, res.reason, res.scope, res.remaining_tokens) == (False, "tokens", f"team:{team}", 200)
    assert (await usage(store, team, sc))[0] == ScopeUsage(0, 0, 0, 800, 1, 1)


async def test_flexible_reservation_shrinks_then_denies(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=1_000_000)
    # (1_000_000 - 100_000) * 1000 // 2_000_001 = 449 output tokens fit.
    res = await reserve(
        store, team, "l1", sc, at=t, fixed_nano=100_000, price=2_000_001, out_max=4096, out_min=1
    )
    assert (res.ok, res.out_tokens, res.reserved_nano) == (True, 449, 100_000 + 898_001)
    assert res.remaining_nano == 1_000_000 - 998_001
    res = await reserve(store, team, "l2", sc, at=t, fixed_nano=0, price=2_000_001, out_max=4096, out_min=1)
    assert (res.ok, res.reason, res.remaining_nano) == (False, "usd", 1_999)  # 1_999 nano buy no token
    assert (await usage(store, team, sc))[0].denials == 1


# ---------------------------------------------------------------------------- leases


async def test_expired_lease_is_charged_in_full_once(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=10**9)
    res = await reserve(
        store,
        team,
        "l1",
        sc,
        at=t,
        fixed_nano=5_000,
        fixed_tokens=5,
        price=1_000_000,
        out_max=10,
        ttl_ms=1_000,
    )
    assert res.reserved_nano == 15_000
    assert await store.expire_leases(team, t + 999) == 0
    assert await store.expire_leases(team, t + 1_000) == 1
    assert await store.expire_leases(team, t + 5_000) == 0, "charged exactly once"
    assert await usage(store, team, sc) == [ScopeUsage(15_000, 15, 0, 0, 0, 1)] * 2
    assert not await store.settle(settlement(team, "l1", 1, 1, t)), "a late settle is a no-op"
    assert await usage(store, team, sc) == [ScopeUsage(15_000, 15, 0, 0, 0, 1)] * 2

    rows = await store.ledger(team, t, t + 1)
    assert len(rows) == 1
    row = rows[0]
    assert (row["request_id"], row["team"], row["ts_ms"]) == ("l1", team, t)
    assert (row["cost_nano"], row["status"], row["estimated"], row["usage"]) == (15_000, "expired", True, {})
    assert row["settled_ms"] == t + 1_000


async def test_a_renewed_lease_expires_later_never_earlier(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=10**9)
    assert (await reserve(store, team, "l1", sc, at=t, fixed_nano=5_000, ttl_ms=1_000)).ok
    assert await store.renew_lease(team, "l1", t + 3_000)
    assert await store.renew_lease(team, "l1", t + 2_000), "a late renewal still finds the lease"
    assert await store.expire_leases(team, t + 2_999) == 0, "kept to the later expiry"
    assert await store.settle(settlement(team, "l1", 1_000, 1, t + 2_999))
    assert await usage(store, team, sc) == [ScopeUsage(1_000, 1, 0, 0, 0, 1)] * 2
    assert not await store.renew_lease(team, "l1", t + 9_000), "a settled lease is gone"
    assert not await store.renew_lease(team, "unknown", t + 9_000)
    assert await store.expire_leases(team, t + 10_000) == 0


async def test_reserve_sweeps_the_teams_due_leases(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team, team_usd=30_000)
    assert (await reserve(store, team, "l1", sc, at=t, fixed_nano=20_000, ttl_ms=1_000)).ok
    assert not (await reserve(store, team, "l2", sc, at=t + 500, fixed_nano=20_000)).ok
    # At t + 1000 the first lease expires into spend before the check: still no room.
    res = await reserve(store, team, "l3", sc, at=t + 1_000, fixed_nano=10_000)
    assert (res.ok, res.remaining_nano) == (True, 0)
    assert (await usage(store, team, sc))[0] == ScopeUsage(20_000, 0, 10_000, 0, 1, 2)
    assert [r["status"] for r in await store.ledger(team, t, t + 1)] == ["expired"]


async def test_leases_of_other_teams_are_left_alone(store: Store, team: str) -> None:
    other = team + "-other"
    t = now_ms()
    assert (await reserve(store, other, "x1", scopes(other), at=t, fixed_nano=7, ttl_ms=1)).ok
    assert await store.expire_leases(team, t + 10) == 0
    assert (await reserve(store, team, "l1", scopes(team), at=t + 10)).ok
    assert (await usage(store, other, scopes(other)))[0] == ScopeUsage(0, 0, 7, 0, 0, 1)
    assert await store.expire_leases(other, t + 10) == 1


# ---------------------------------------------------------------------------- records


async def test_record_is_deduplicated_by_request_id(store: Store, team: str) -> None:
    t = now_ms()
    sc = scopes(team)
    assert await store.record(team, record(team, "r1", t, cost_nano=500), 500, 5, sc)
    assert not await store.record(team, record(team, "r1", t, cost_nano=500), 500, 5, sc)
    assert await store.record(team, record(team, "r2", t, cost_nano=0), 0, 0, sc)
    assert await usage(store, team, sc) == [ScopeUsage(500, 5, 0, 0, 0, 0)] * 2
    assert sorted(r["request_id"] for r in await store.ledger(team, t, t + 1)) == ["r1", "r2"]
    assert team in await store.teams()


async def test_ledger_filters_by_timestamp(store: Store, team: str) -> None:
    t = now_ms() - 10_000
    for i in range(4):
        await store.record(team, record(team, f"r{i}", t + 1_000 * i), 1, 1, [])
    rows = await store.ledger(team, t + 1_000, t + 3_000)
    assert [r["request_id"] for r in rows] == ["r1", "r2"]
    assert await store.ledger(team, t + 3_001, t + 4_000) == []
    assert [r["request_id"] for r in await store.ledger(team + "-nobody", t, t + 4_000)] == []


# ---------------------------------------------------------------------------- rate limits


async def test_rpm_counts_requests_per_window(store: Store, team: str) -> None:
    t = now_ms()
    window = t // 60_000
    sc = scopes(team, team_usd=10**9)

    def rpm(w: int) -> list[RateLimit]:
        return [RateLimit("rpm", f"team:{team}", 2, w)]

    first = await reserve(store, team, "l1", sc, at=t, fixed_tokens=1_000, rates=rpm(window))
    assert first.rate_remaining == {f"rpm:team:{team}": 1}
    assert (await reserve(store, team, "l2", sc, at=t, rates=rpm(window))).ok
    res = await reserve(store, team, "l3", sc, at=t, rates=rpm(window))
    assert (res.ok, res.reason, res.scope) == (False, "rpm", f"team:{team}")
    assert res.rate_remaining == {f"rpm:team:{team}": 0}
    assert (res.remaining_nano, res.remaining_tokens) == (10**9, UNLIMITED)
    assert (await usage(store, team, sc))[0] == ScopeUsage(0, 0, 0, 1_000, 0, 2), "not a budget denial"
    assert (await reserve(store, team, "l4", sc, at=t + 60_000, rates=rpm(window + 1))).ok


async def test_tpm_counts_reserved_tokens_and_refunds_at_settle(store: Store, team: str) -> None:
    t = now_ms()
    tpm = [RateLimit("tpm", f"key:{team}-k", 1_000, t // 60_000)]
    sc = scopes(team)
    res = await reserve(store, team, "l1", sc, at=t, fixed_tokens=100, out_max=800, rates=tpm)
    assert (res.ok, res.rate_remaining) == (True, {f"tpm:key:{team}-k": 100})
    res = await reserve(store, team, "l2", sc, at=t, fixed_tokens=100, out_max=1, rates=tpm)
    assert (res.ok, res.reason, res.scope) == (False, "tpm", f"key:{team}-k")
    assert await store.settle(settlement(team, "l1", 0, 300, t))  # 600 of the 900 come back
    res = await reserve(store, team, "l3", sc, at=t, fixed_tokens=100, out_max=600, rates=tpm)
    assert (res.ok, res.rate_remaining) == (True, {f"tpm:key:{team}-k": 0})


# ---------------------------------------------------------------------------- periods and limits


async def test_period_rollover_starts_fresh_counters(store: Store, team: str) -> None:
    t = now_ms()
    nov, dec = scopes(team, "2026-11", team_usd=100_000), scopes(team, "2026-12", team_usd=100_000)
    assert (await reserve(store, team, "a", nov, at=t, fixed_nano=100_000)).ok
    assert not (await reserve(store, team, "b", nov, at=t, fixed_nano=1)).ok
    res = await reserve(store, team, "c", dec, at=t, fixed_nano=100_000)
    assert (res.ok, res.remaining_nano) == (True, 0)
    # Charged to the period it started in, even when it settles after the rollover.
    assert await store.settle(settlement(team, "a", 60_000, 1, t))
    assert (await usage(store, team, nov))[0] == ScopeUsage(60_000, 1, 0, 0, 1, 1)
    assert (await usage(store, team, dec))[0] == ScopeUsage(0, 0, 100_000, 0, 0, 1)
    assert (await usage(store, team, scopes(team, "2027-01")))[0] == ScopeUsage()


async def test_limit_raise_mid_period_applies_to_the_next_request(store: Store, team: str) -> None:
    t = now_ms()
    assert (await reserve(store, team, "a", scopes(team, team_usd=1_000), at=t, fixed_nano=1_000)).ok
    assert not (await reserve(store, team, "b", scopes(team, team_usd=1_000), at=t, fixed_nano=500)).ok
    res = await reserve(store, team, "c", scopes(team, team_usd=1_500), at=t, fixed_nano=500)
    assert (res.ok, res.remaining_nano) == (True, 0)
    res = await reserve(store, team, "d", scopes(team, team_usd=100), at=t, fixed_nano=1)
    assert (res.ok, res.remaining_nano) == (False, 0)
    assert (await usage(store, team, scopes(team)))[0] == ScopeUsage(0, 0, 1_500, 0, 2, 2)


async def test_scope_usage_of_untouched_counters_is_zero(store: Store, team: str) -> None:
    assert await store.scope_usage(team, []) == {}
    sc = scopes(team)
    assert await store.scope_usage(team, sc) == {s.counter: ScopeUsage() for s in sc}


# ---------------------------------------------------------------------------- cache


async def test_cache_get_set_and_ttl(store: Store, team: str) -> None:
    assert await store.cache_get(team, "k") is None
    await store.cache_set(team, "k", b"\x00value", ttl_s=1)
    await store.cache_set(team, "long", b"kept", ttl_s=60)
    assert await store.cache_get(team, "k") == b"\x00value"
    assert await store.cache_get(team + "-other", "k") is None, "namespaced by team"
    await store.cache_set(team, "long", b"replaced", ttl_s=60)
    assert await store.cache_get(team, "long") == b"replaced"
    await asyncio.sleep(1.1)
    assert await store.cache_get(team, "k") is None
    assert await store.cache_get(team, "long") == b"replaced"


async def test_cache_lock(store: Store, team: str) -> None:
    assert await store.cache_lock(team, "k", ttl_ms=10_000)
    assert not await store.cache_lock(team, "k", ttl_ms=10_000)
    assert await store.cache_lock(team + "-other", "k", ttl_ms=10_000)
    await store.cache_unlock(team, "k")
    assert await store.cache_lock(team, "k", ttl_ms=50)
    await asyncio.sleep(0.15)
    assert await store.cache_lock(team, "k", ttl_ms=50), "a lock expires on its own"
    await store.cache_unlock(team, "missing")  # unlocking nothing is fine


# ---------------------------------------------------------------------------- keys


async def test_keys_create_list_revoke(store: Store, team: str) -> None:
    ids = [f"{team}-a", f"{team}-b"]
    for i, key_id in enumerate(ids):
        await store.create_key(KeyRecord(key_id, team, f"sha-{key_id}", name=f"n{i}", created_ms=i))
    got = await store.get_key(f"sha-{ids[0]}")
    assert got == KeyRecord(ids[0], team, f"sha-{ids[0]}", name="n0", created_ms=0, source="admin")
    assert await store.get_key("sha-nobody") is None
    assert {k.key_id for k in await store.list_keys()} >= set(ids)

    version, _ = await store.revocations()
    assert await store.revoke_key(ids[0])
    version2, revoked = await store.revocations()
    assert version2 == version + 1 and ids[0] in revoked and ids[1] not in revoked
    listed = {k.key_id for k in await store.list_keys()}
    assert ids[0] not in listed and ids[1] in listed
    assert not await store.revoke_key(f"{team}-unknown")  # unknown, but still recorded as revoked
    version3, revoked = await store.revocations()
    assert version3 == version + 2 and f"{team}-unknown" in revoked


async def test_a_record_releases_the_lease_of_the_same_request(store: Store, team: str) -> None:
    """A reservation whose answer never reached the gateway (a timeout) leaves a lease; the fail-open
    charge recorded later under the same request id releases it, so it is never charged twice."""
    sc = scopes(team, team_usd=10_000_000)
    t0 = now_ms()
    lease = await reserve(
        store, team, "req-uncertain", sc, at=t0, fixed_nano=1_000, price=1_000_000, out_max=100
    )
    assert lease.ok
    record = {"request_id": "req-uncertain", "ts_ms": t0, "team": team, "usage": {}, "tags": {}}
    assert await store.record(team, record, 5_000, 50, sc)
    usage = (await store.scope_usage(team, sc))[sc[0].counter]
    assert (usage.spent_nano, usage.reserved_nano, usage.reserved_tokens) == (5_000, 0, 0)
    assert await store.expire_leases(team, t0 + 10 * TTL_MS) == 0  # nothing left to expire
    assert (await store.scope_usage(team, sc))[sc[0].counter].spent_nano == 5_000
