"""The Redis Lua scripts compute exactly what BudgetBook (the reference arithmetic) computes.

Hypothesis generates operation sequences (reserve, settle, sweep, record, clock, rollover, limit
changes) with numbers up to the documented range: limits up to 9e14 nano-USD ($900k), prices up to
7.5e7 pico-USD per token ($75 per 1M), outputs up to 200k tokens. Lua numbers are doubles, so this is
where a lost digit or an inexact division would show. Each example runs against a fresh BudgetBook
and against a real redis-server under a fresh team, and every result must be identical.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import astuple, dataclass
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.store.base import (
    UNLIMITED,
    RateLimit,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
)
from gateway.store.book import BudgetBook
from gateway.store.redis import RedisStore
from tests.harness import RedisServer

START_MS = 1_795_000_000_000
TTL_MS = 30_000
SWEEP_LIMIT = 10  # what the reserve script expires before checking


@dataclass(frozen=True)
class Limits:
    team_usd: int
    team_tok: int
    key_usd: int
    key_tok: int


@dataclass(frozen=True)
class Reserve:
    fixed_nano: int
    fixed_tokens: int
    price: int
    out_max: int
    out_min_share: int | None  # None: a fixed reservation; else the flexible minimum, in % of out_max
    count_denial: bool = True


@dataclass(frozen=True)
class Settle:
    pick: int
    quarters: int  # settle at quarters/4 of the reservation (above 4: more than reserved)


@dataclass(frozen=True)
class Record:
    request_id: str
    cost: int
    tokens: int


@dataclass(frozen=True)
class Advance:
    ms: int


@dataclass(frozen=True)
class Sweep:
    pass


@dataclass(frozen=True)
class Rollover:
    pass


Op = Limits | Reserve | Settle | Record | Advance | Sweep | Rollover


def _spread(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers of every magnitude in [lo, hi]: plain st.integers mostly draws small ones."""
    return st.integers(len(str(lo)), len(str(hi))).flatmap(
        lambda digits: st.integers(max(lo, 10 ** (digits - 1)), min(hi, 10**digits - 1))
    )


_usd = st.one_of(
    st.just(UNLIMITED),
    _spread(0, 9 * 10**14),
    _spread(10**14, 9 * 10**14),
    st.sampled_from([0, 1, 10**14 + 7, 9 * 10**14]),
)
_tok = st.one_of(st.just(UNLIMITED), _spread(0, 10**9), _spread(10**6, 10**9))
_limits = st.builds(Limits, _usd, _tok, _usd, _tok)
# Capped so that a dozen reservations on an unlimited scope stay far below 2^53.
_fixed_nano = st.one_of(_spread(0, 3 * 10**14), _spread(10**14, 3 * 10**14), st.sampled_from([0, 1]))
_price = st.one_of(st.sampled_from([0, 1, 999, 1_000, 2_000_001, 75_000_000]), _spread(0, 75_000_000))
_reserve = st.builds(
    Reserve,
    _fixed_nano,
    st.one_of(_spread(0, 2_000), _spread(0, 1_000_000)),
    _price,
    _spread(0, 200_000),
    st.one_of(st.none(), st.sampled_from([0, 1, 50, 100])),
    st.sampled_from([True, True, False]),
)
_op: st.SearchStrategy[Op] = st.one_of(
    _reserve,
    _reserve,
    _reserve,
    st.builds(Settle, st.integers(0, 1_000), st.sampled_from([0, 1, 3, 4, 6])),
    st.builds(Record, st.sampled_from(["r1", "r2"]), _spread(0, 10**12), _spread(0, 10**6)),
    st.builds(Advance, st.sampled_from([1, 999, TTL_MS, 61_000])),
    st.just(Sweep()),
    st.just(Rollover()),
    _limits,
)
_rates = st.tuples(
    st.one_of(st.none(), st.none(), st.integers(0, 5)),  # team rpm
    st.one_of(st.none(), st.none(), _spread(0, 2_000_000)),  # key tpm
)


class Scenario:
    """The inputs both runs derive from the same operations: scopes, rate limits, ids, clock."""

    def __init__(self, team: str, limits: Limits, rates: tuple[int | None, int | None]) -> None:
        self.team = team
        self.limits = limits
        self.rpm, self.tpm = rates
        self.now = START_MS
        self.period = 0
        self.seq = 0
        self.leases: list[str] = []

    def scopes(self) -> list[ScopeLimit]:
        lim, period = self.limits, f"p{self.period}"
        return [
            ScopeLimit(f"team:{self.team}", period, lim.team_usd, lim.team_tok),
            ScopeLimit(f"key:{self.team}-k", period, lim.key_usd, lim.key_tok),
        ]

    def all_scopes(self) -> list[ScopeLimit]:
        return [
            ScopeLimit(f"{kind}:{self.team}{suffix}", f"p{p}")
            for p in range(self.period + 1)
            for kind, suffix in (("team", ""), ("key", "-k"))
        ]

    def rate_limits(self) -> list[RateLimit]:
        window, out = self.now // 60_000, []
        if self.rpm is not None:
            out.append(RateLimit("rpm", f"team:{self.team}", self.rpm, window))
        if self.tpm is not None:
            out.append(RateLimit("tpm", f"key:{self.team}-k", self.tpm, window))
        return out

    def reserve_request(self, op: Reserve) -> ReserveRequest:
        self.seq += 1
        lease_id = f"l{self.seq:03d}"
        self.leases.append(lease_id)
        out_min = op.out_max if op.out_min_share is None else op.out_max * op.out_min_share // 100
        return ReserveRequest(
            team=self.team,
            lease_id=lease_id,
            now_ms=self.now,
            lease_ttl_ms=TTL_MS,
            scopes=self.scopes(),
            fixed_nano=op.fixed_nano,
            fixed_tokens=op.fixed_tokens,
            out_price_pico=op.price,
            out_tokens_max=op.out_max,
            out_tokens_min=out_min,
            rate_limits=self.rate_limits(),
            intent={"request_id": lease_id, "team": self.team, "ts_ms": self.now},
            count_denial=op.count_denial,
        )

    def settlement(self, op: Settle, reserved: dict[str, tuple[int, int]]) -> Settlement:
        lease_id = self.leases[op.pick % len(self.leases)] if self.leases else "none"
        cost, tokens = reserved.get(lease_id, (8, 8))
        cost, tokens = cost * op.quarters // 4, tokens * op.quarters // 4
        rec = {"request_id": lease_id, "team": self.team, "ts_ms": self.now, "cost_nano": cost}
        return Settlement(self.team, lease_id, cost, tokens, rec, now_ms=self.now)

    def charge(self, op: Record) -> tuple[dict[str, Any], list[ScopeLimit]]:
        # A fixed timestamp: Redis deduplicates per ledger day, the book forever.
        return {"request_id": op.request_id, "team": self.team, "ts_ms": START_MS}, self.scopes()


def _result(res: ReserveResult) -> tuple[Any, ...]:
    return astuple(res)


def _reserved(res: ReserveResult) -> tuple[int, int]:
    return res.reserved_nano, res.reserved_tokens


def _sweep(book: BudgetBook, team: str, now: int, limit: int) -> int:
    """The sweep as the scripts do it: due leases by expiry time, then id (ZRANGEBYSCORE order)."""
    due = sorted(
        (x for x in book.leases.values() if x.team == team and x.expires_ms <= now),
        key=lambda x: (x.expires_ms, x.lease_id),
    )[:limit]
    for lease in due:
        book.expire(lease.lease_id)
    return len(due)


Outcome = tuple[list[Any], list[tuple[int, ...]]]  # per operation, then every counter's usage


def run_book(sc: Scenario, ops: list[Op]) -> Outcome:
    book, out, reserved = BudgetBook(), [], {}
    for op in ops:
        if isinstance(op, Reserve):
            req = sc.reserve_request(op)
            _sweep(book, sc.team, sc.now, SWEEP_LIMIT)
            res = book.reserve(req)
            reserved[req.lease_id] = _reserved(res)
            out.append(_result(res))
        elif isinstance(op, Settle):
            out.append(book.settle(sc.settlement(op, reserved)))
        elif isinstance(op, Record):
            _, scopes = sc.charge(op)
            out.append(book.record(op.request_id, op.cost, op.tokens, scopes))
        elif isinstance(op, Sweep):
            out.append(_sweep(book, sc.team, sc.now, 100))
        else:
            out.append(_step(sc, op))
    out.append(_sweep(book, sc.team, sc.now + 10 * TTL_MS, 1_000))
    return out, [astuple(book.usage.get(s.counter) or ScopeUsage()) for s in sc.all_scopes()]


async def run_redis(url: str, sc: Scenario, ops: list[Op]) -> Outcome:
    store = RedisStore(url)
    out: list[Any] = []
    reserved: dict[str, tuple[int, int]] = {}
    try:
        for op in ops:
            if isinstance(op, Reserve):
                req = sc.reserve_request(op)
                res = await store.reserve(req)
                reserved[req.lease_id] = _reserved(res)
                out.append(_result(res))
            elif isinstance(op, Settle):
                out.append(await store.settle(sc.settlement(op, reserved)))
            elif isinstance(op, Record):
                rec, scopes = sc.charge(op)
                out.append(await store.record(sc.team, rec, op.cost, op.tokens, scopes))
            elif isinstance(op, Sweep):
                out.append(await store.expire_leases(sc.team, sc.now, 100))
            else:
                out.append(_step(sc, op))
        out.append(await store.expire_leases(sc.team, sc.now + 10 * TTL_MS, 1_000))
        usage = await store.scope_usage(sc.team, sc.all_scopes())
    finally:
        await store.close()
    return out, [astuple(usage[s.counter]) for s in sc.all_scopes()]


def _step(sc: Scenario, op: Op) -> str:
    """Operations that only move the scenario: the clock, the period, the limits."""
    if isinstance(op, Advance):
        sc.now += op.ms
    elif isinstance(op, Rollover):
        sc.period += 1
    elif isinstance(op, Limits):
        sc.limits = op
    return type(op).__name__


_NO_RATES: tuple[int | None, int | None] = (None, None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limits=_limits,
    rates=_rates,
    ops=st.lists(_op, min_size=3, max_size=20),
)
# A $0 lease: settling or expiring it once sent HINCRBY "-0", which Redis rejects.
@example(
    limits=Limits(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED),
    rates=_NO_RATES,
    ops=[Reserve(0, 0, 0, 0, None), Reserve(0, 5, 0, 0, None), Settle(0, 4), Advance(TTL_MS), Sweep()],
)
# A cost of 15 significant digits: the lease string once kept only 14 of them.
@example(
    limits=Limits(9 * 10**14, UNLIMITED, UNLIMITED, UNLIMITED),
    rates=_NO_RATES,
    ops=[
        Reserve(123_456_789_012_345, 3, 0, 0, None),
        Reserve(100_000_000_000_001, 0, 0, 0, None),
        Settle(0, 4),
    ],
)
# Flexible on a huge free budget at the top price: the exact-division path.
@example(
    limits=Limits(9 * 10**14 - 1, 10**9, 10**14 + 7, UNLIMITED),
    rates=(5, 2_000_000),
    ops=[
        Reserve(99_999_999_999_999, 1_000_000, 75_000_000, 200_000, 1),
        Reserve(7, 1, 75_000_000, 200_000, 1),
        Reserve(0, 0, 74_999_999, 199_999, 100),
        Settle(0, 6),
        Settle(1, 1),
    ],
)
def test_lua_matches_book(
    redis_server: RedisServer, limits: Limits, rates: tuple[int | None, int | None], ops: list[Op]
) -> None:
    team = f"lua-{uuid.uuid4().hex[:12]}"
    expected, expected_usage = run_book(Scenario(team, limits, rates), ops)
    got, got_usage = asyncio.run(run_redis(redis_server.url, Scenario(team, limits, rates), ops))
    assert got == expected
    assert got_usage == expected_usage
    for usage in expected_usage:
        assert usage[2:4] == (0, 0), "the final sweep leaves nothing reserved"
