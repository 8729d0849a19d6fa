"""BudgetBook, the reference budget arithmetic: worked examples, then a stateful property test.

The state machine keeps its own ledger of what every counter must hold and checks the book against
it after every step, together with the guarantees the README makes: a hard limit is never overshot
while settlements stay within their reservations, reservations always return to zero, an expired
lease is charged in full exactly once, and a late settle changes nothing.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.store.base import (
    UNLIMITED,
    RateLimit,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
)
from gateway.store.book import BudgetBook, expired_record

TEAM = "acme"
T_SCOPE, K_SCOPE = f"team:{TEAM}", "key:k1"
TTL_MS = 30_000


def scopes(
    period: str = "2026-11", team_usd: int = UNLIMITED, team_tok: int = UNLIMITED, key_usd: int = UNLIMITED
) -> list[ScopeLimit]:
    return [
        ScopeLimit(T_SCOPE, period, team_usd, team_tok),
        ScopeLimit(K_SCOPE, period, key_usd, UNLIMITED),
    ]


def req(
    lease_id: str,
    sc: list[ScopeLimit],
    *,
    fixed_nano: int = 0,
    fixed_tokens: int = 0,
    price: int = 0,
    out_max: int = 0,
    out_min: int | None = None,
    now_ms: int = 0,
    rates: list[RateLimit] | None = None,
) -> ReserveRequest:
    return ReserveRequest(
        team=TEAM,
        lease_id=lease_id,
        now_ms=now_ms,
        lease_ttl_ms=TTL_MS,
        scopes=sc,
        fixed_nano=fixed_nano,
        fixed_tokens=fixed_tokens,
        out_price_pico=price,
        out_tokens_max=out_max,
        out_tokens_min=out_max if out_min is None else out_min,
        rate_limits=rates or [],
        intent={"request_id": lease_id, "team": TEAM, "ts_ms": now_ms},
    )


def settle(lease_id: str, cost: int, tokens: int) -> Settlement:
    return Settlement(TEAM, lease_id, cost, tokens, {"request_id": lease_id})


def usage(book: BudgetBook, counter: str) -> ScopeUsage:
    return book.usage.get(counter) or ScopeUsage()


# ---------------------------------------------------------------------------- worked examples


def test_fixed_reservation_reserves_the_upper_bound_on_every_scope() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000_000, key_usd=600_000)
    # 100 prompt tokens at 1000 nano + 50 output tokens at 2_000_000 pico (= 2000 nano) each.
    res = book.reserve(req("a", sc, fixed_nano=100_000, fixed_tokens=100, price=2_000_000, out_max=50))
    assert res.ok and res.out_tokens == 50
    assert (res.reserved_nano, res.reserved_tokens) == (200_000, 150)
    assert res.remaining_nano == 400_000  # the key is the tightest scope
    assert res.remaining_tokens == UNLIMITED
    for s in sc:
        assert usage(book, s.counter) == ScopeUsage(0, 0, 200_000, 150, 0, 1)


def test_output_cost_rounds_up_to_the_nano() -> None:
    book = BudgetBook()
    res = book.reserve(req("a", scopes(), price=1, out_max=3))  # 3 pico = 0.003 nano
    assert res.reserved_nano == 1


def test_fixed_reservation_that_does_not_fit_is_denied_on_the_tightest_scope() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000_000, key_usd=300_000)
    res = book.reserve(req("a", sc, fixed_nano=100_000, price=2_000_000, out_max=101))
    assert not res.ok
    assert (res.reason, res.scope) == ("usd", K_SCOPE)
    assert (res.out_tokens, res.reserved_nano, res.remaining_nano) == (0, 0, 300_000)
    assert usage(book, sc[1].counter).denials == 1
    assert usage(book, sc[0].counter).denials == 0
    assert not book.leases
    assert usage(book, sc[0].counter).reserved_nano == 0


def test_a_denial_the_caller_retries_is_not_counted() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000)
    attempt = req("a", sc, fixed_nano=2_000)
    attempt.count_denial = False
    res = book.reserve(attempt)
    assert (res.ok, res.reason, res.scope) == (False, "usd", T_SCOPE)
    assert usage(book, sc[0].counter).denials == 0
    assert not book.reserve(req("b", sc, fixed_nano=2_000)).ok
    assert usage(book, sc[0].counter).denials == 1


def test_flexible_reservation_shrinks_the_output_to_what_the_budget_pays_for() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000_000, team_tok=10_000)
    # free 1_000_000 - fixed 100_000 = 900_000 nano -> floor(900_000 * 1000 / 2_000_001) = 449 tokens.
    res = book.reserve(
        req("a", sc, fixed_nano=100_000, fixed_tokens=100, price=2_000_001, out_max=4096, out_min=1)
    )
    assert res.ok and res.out_tokens == 449
    assert res.reserved_nano == 100_000 + -(-449 * 2_000_001 // 1000)
    assert res.reserved_nano <= 1_000_000
    # The token budget binds next: 10_000 - 449 - 100 left, 100 of them for the prompt.
    res2 = book.reserve(req("b", sc, fixed_tokens=100, price=0, out_max=50_000, out_min=1))
    assert res2.ok and res2.out_tokens == 10_000 - 549 - 100
    assert res2.remaining_tokens == 0


def test_flexible_reservation_below_its_minimum_is_denied() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000)
    res = book.reserve(req("a", sc, fixed_nano=900, price=200_000, out_max=100, out_min=1))
    assert not res.ok and (res.reason, res.scope) == ("usd", T_SCOPE)  # 100 nano buys 0 tokens at 200 nano
    assert usage(book, sc[0].counter).denials == 1
    res = book.reserve(req("b", sc, fixed_nano=900, price=200_000, out_max=100, out_min=0))
    assert res.ok and res.out_tokens == 0 and res.reserved_nano == 900


def test_prompt_larger_than_the_free_budget_is_denied_even_when_flexible() -> None:
    book = BudgetBook()
    sc = scopes(team_tok=100)
    res = book.reserve(req("a", sc, fixed_tokens=101, out_max=10, out_min=0))
    assert not res.ok and res.reason == "tokens" and res.remaining_tokens == 100


def test_settle_replaces_the_reservation_by_the_actual() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000_000)
    book.reserve(req("a", sc, fixed_nano=1_000, fixed_tokens=10, price=1_000_000, out_max=100))
    assert book.settle(settle("a", 40_000, 50))
    assert usage(book, sc[0].counter) == ScopeUsage(40_000, 50, 0, 0, 0, 1)
    assert not book.settle(settle("a", 40_000, 50))  # settled once only
    assert usage(book, sc[0].counter).spent_nano == 40_000


def test_settle_above_the_reservation_charges_the_truth() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=100_000)
    res = book.reserve(req("a", sc, fixed_nano=90_000, out_max=0))
    assert res.ok
    assert book.settle(settle("a", 150_000, 7))
    assert usage(book, sc[0].counter) == ScopeUsage(150_000, 7, 0, 0, 0, 1)
    denied = book.reserve(req("b", sc, out_max=0))  # an empty request still fits at $0
    assert denied.ok and denied.remaining_nano == 0
    denied = book.reserve(req("c", sc, fixed_nano=1))
    assert not denied.ok and denied.remaining_nano == 0


def test_expired_lease_is_charged_in_full_exactly_once() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=1_000_000)
    book.reserve(req("a", sc, fixed_nano=5_000, fixed_tokens=5, price=1_000_000, out_max=10, now_ms=1_000))
    assert book.due_leases(TEAM, 1_000 + TTL_MS - 1, 100) == []
    due = book.due_leases(TEAM, 1_000 + TTL_MS, 100)
    assert [lease.lease_id for lease in due] == ["a"]
    lease = book.expire("a")
    assert lease is not None and (lease.cost_nano, lease.tokens) == (15_000, 15)
    assert book.expire("a") is None
    assert usage(book, sc[0].counter) == ScopeUsage(15_000, 15, 0, 0, 0, 1)
    assert not book.settle(settle("a", 1, 1))  # the late settle is a no-op
    assert usage(book, sc[0].counter) == ScopeUsage(15_000, 15, 0, 0, 0, 1)


def test_due_leases_only_for_the_team_and_up_to_the_limit() -> None:
    book = BudgetBook()
    for i in range(5):
        book.reserve(req(f"l{i}", scopes(), now_ms=i))
    other = req("x", scopes(), now_ms=0)
    other.team = "other"
    book.reserve(other)
    assert len(book.due_leases(TEAM, 10 * TTL_MS, 3)) == 3
    assert {x.lease_id for x in book.due_leases(TEAM, 10 * TTL_MS, 100)} == {f"l{i}" for i in range(5)}


def test_expired_record_marks_the_estimate() -> None:
    book = BudgetBook()
    book.reserve(req("a", scopes(), fixed_nano=77, fixed_tokens=3, now_ms=5))
    lease = book.expire("a")
    assert lease is not None
    rec = expired_record(lease, 99_999)
    assert rec == {
        "request_id": "a",
        "team": TEAM,
        "ts_ms": 5,
        "cost_nano": 77,
        "estimated": True,
        "status": "expired",
        "settled_ms": 99_999,
        "usage": {},
    }
    assert "cost_nano" not in lease.intent  # the intent itself is left alone


def test_record_is_deduplicated_by_request_id() -> None:
    book = BudgetBook()
    sc = scopes()
    assert book.record("r1", 500, 5, sc)
    assert not book.record("r1", 500, 5, sc)
    assert book.record("r2", 0, 0, sc)
    for s in sc:
        assert usage(book, s.counter) == ScopeUsage(500, 5, 0, 0, 0, 0)


def test_period_rollover_starts_fresh_counters_and_keeps_the_old_ones() -> None:
    book = BudgetBook()
    nov, dec = scopes("2026-11", team_usd=100_000), scopes("2026-12", team_usd=100_000)
    assert book.reserve(req("a", nov, fixed_nano=100_000)).ok
    assert not book.reserve(req("b", nov, fixed_nano=1)).ok
    res = book.reserve(req("c", dec, fixed_nano=100_000))
    assert res.ok and res.remaining_nano == 0
    # A request is charged to the period in which it started, even when it settles after the rollover.
    assert book.settle(settle("a", 60_000, 1))
    assert usage(book, nov[0].counter) == ScopeUsage(60_000, 1, 0, 0, 1, 1)
    assert usage(book, dec[0].counter) == ScopeUsage(0, 0, 100_000, 0, 0, 1)


def test_limit_raise_mid_period_applies_to_the_next_request() -> None:
    book = BudgetBook()
    assert book.reserve(req("a", scopes(team_usd=1_000), fixed_nano=1_000)).ok
    assert not book.reserve(req("b", scopes(team_usd=1_000), fixed_nano=500)).ok
    res = book.reserve(req("c", scopes(team_usd=1_500), fixed_nano=500))
    assert res.ok and res.remaining_nano == 0
    # Lowering below what is used denies everything that costs anything; spend is untouched.
    res = book.reserve(req("d", scopes(team_usd=100), fixed_nano=1))
    assert not res.ok and res.remaining_nano == 0
    assert usage(book, scopes()[0].counter).reserved_nano == 1_500


def test_rpm_counts_requests_and_is_not_a_budget_denial() -> None:
    book = BudgetBook()
    sc = scopes(team_usd=10**9)
    rpm = [RateLimit("rpm", T_SCOPE, 2, window=7)]
    assert book.reserve(req("a", sc, fixed_tokens=1000, rates=rpm)).rate_remaining == {f"rpm:{T_SCOPE}": 1}
    assert book.reserve(req("b", sc, rates=rpm)).ok
    res = book.reserve(req("c", sc, rates=rpm))
    assert not res.ok and (res.reason, res.scope) == ("rpm", T_SCOPE)
    assert res.rate_remaining == {f"rpm:{T_SCOPE}": 0}
    assert res.remaining_nano == 10**9  # the budget itself is untouched
    assert usage(book, sc[0].counter).denials == 0
    assert usage(book, sc[0].counter).requests == 2
    # The next window starts from zero.
    assert book.reserve(req("d", sc, rates=[RateLimit("rpm", T_SCOPE, 2, window=8)])).ok


def test_tpm_counts_reserved_tokens_and_refunds_the_unused_part_at_settle() -> None:
    book = BudgetBook()
    tpm = [RateLimit("tpm", K_SCOPE, 1_000, window=3)]
    res = book.reserve(req("a", scopes(), fixed_tokens=100, out_max=800, rates=tpm))
    assert res.ok and res.rate_remaining == {f"tpm:{K_SCOPE}": 100}
    res = book.reserve(req("b", scopes(), fixed_tokens=100, out_max=1, rates=tpm))
    assert not res.ok and (res.reason, res.scope) == ("tpm", K_SCOPE)
    # The flexible minimum is what a TPM check needs, not the maximum.
    assert book.reserve(req("c", scopes(), fixed_tokens=50, out_max=800, out_min=0, rates=tpm)).ok
    assert book.rate[f"tpm|{K_SCOPE}|3"] == 900 + 850
    assert book.settle(settle("a", 0, 300))  # used 300 of 900: 600 back
    assert book.rate[f"tpm|{K_SCOPE}|3"] == 300 + 850
    assert book.settle(settle("c", 0, 2_000))  # more than reserved: nothing back, never negative
    assert book.rate[f"tpm|{K_SCOPE}|3"] == 300 + 850


def test_prune_rate_drops_closed_windows() -> None:
    book = BudgetBook()
    for window in (1, 2, 3):
        book.reserve(req(f"l{window}", scopes(), rates=[RateLimit("rpm", T_SCOPE, 5, window)]))
    book.prune_rate(3)
    assert list(book.rate) == [f"rpm|{T_SCOPE}|3"]


# ---------------------------------------------------------------------------- the state machine

_usd_limits = st.one_of(
    st.just(UNLIMITED),
    st.integers(0, 3_000_000),
    st.integers(0, 200_000_000),
    st.sampled_from([0, 1, 1_000, 10**9]),
)
_tok_limits = st.one_of(st.just(UNLIMITED), st.integers(0, 30_000))
_prices = st.sampled_from([0, 1, 999, 1_000, 150_000, 2_000_000, 15_000_001])


@dataclass
class _Lease:
    cost: int
    tokens: int
    counters: list[str]
    expires_ms: int
    tpm: list[str] = field(default_factory=list)


def _fields(u: ScopeUsage) -> tuple[int, ...]:
    return astuple(u)  # type: ignore[no-any-return]


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = BudgetBook()
        self.now = 1_700_000_000_000
        self.period = 0
        self.limits = {T_SCOPE: (UNLIMITED, UNLIMITED), K_SCOPE: (UNLIMITED, UNLIMITED)}
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.open: dict[str, _Lease] = {}
        self.closed: set[str] = set()
        self.expected: dict[str, ScopeUsage] = {}
        self.rate: dict[str, int] = {}
        self.seen: set[str] = set()
        # Per counter, the most spent + reserved may reach: the largest limit any reservation was
        # checked against (infinite once one ran unlimited), plus charges nobody checked (a settle
        # above its reservation, a record).
        self.bound_usd: dict[str, float] = {}
        self.bound_tok: dict[str, float] = {}
        self.seq = 0

    # -------------------------------------------------------------- helpers

    def _scopes(self) -> list[ScopeLimit]:
        period = f"p{self.period}"
        return [ScopeLimit(s, period, usd, tok) for s, (usd, tok) in self.limits.items()]

    def _rates(self) -> list[RateLimit]:
        window = self.now // 60_000
        out = []
        if self.rpm is not None:
            out.append(RateLimit("rpm", T_SCOPE, self.rpm, window))
        if self.tpm is not None:
            out.append(RateLimit("tpm", K_SCOPE, self.tpm, window))
        return out

    def _exp(self, counter: str) -> ScopeUsage:
        return self.expected.setdefault(counter, ScopeUsage())

    def _snapshot(self) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str]]:
        usage = {c: _fields(u) for c, u in self.book.usage.items() if any(_fields(u))}
        return usage, dict(self.book.rate), set(self.book.leases)

    # -------------------------------------------------------------- rules

    @initialize(
        team_usd=_usd_limits,
        team_tok=_tok_limits,
        key_usd=_usd_limits,
        key_tok=_tok_limits,
        rpm=st.sampled_from([None, None, None, 0, 1, 3, 6]),
        tpm=st.one_of(st.none(), st.none(), st.integers(0, 20_000)),
    )
    def start(
        self, team_usd: int, team_tok: int, key_usd: int, key_tok: int, rpm: int | None, tpm: int | None
    ) -> None:
        self.set_limits(team_usd, team_tok, key_usd, key_tok)
        self.set_rate_limits(rpm, tpm)

    @rule(team_usd=_usd_limits, team_tok=_tok_limits, key_usd=_usd_limits, key_tok=_tok_limits)
    def set_limits(self, team_usd: int, team_tok: int, key_usd: int, key_tok: int) -> None:
        self.limits = {T_SCOPE: (team_usd, team_tok), K_SCOPE: (key_usd, key_tok)}

    @rule(
        rpm=st.sampled_from([None, None, None, 0, 1, 3, 6]),
        tpm=st.one_of(st.none(), st.none(), st.integers(0, 20_000)),
    )
    def set_rate_limits(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm

    @rule()
    def rollover(self) -> None:
        self.period += 1
        for s in self._scopes():
            assert s.counter not in self.book.usage, "a new period starts from nothing"

    @rule(ms=st.sampled_from([0, 1, 999, 20_000, TTL_MS, 61_000]))
    def advance_clock(self, ms: int) -> None:
        self.now += ms

    @rule(
        fixed_nano=st.one_of(st.integers(0, 100_000), st.integers(0, 2_000_000), st.sampled_from([0, 1])),
        fixed_tokens=st.one_of(st.integers(0, 300), st.integers(0, 4_000)),
        price=_prices,
        out_max=st.one_of(st.integers(0, 300), st.integers(0, 5_000)),
        flexible=st.booleans(),
        out_min_share=st.sampled_from([0, 1, 50, 100]),
        final=st.sampled_from([True, True, True, False]),
    )
    def reserve(
        self,
        fixed_nano: int,
        fixed_tokens: int,
        price: int,
        out_max: int,
        flexible: bool,
        out_min_share: int,
        final: bool,
    ) -> None:
        self.seq += 1
        lease_id = f"l{self.seq:04d}"
        out_min = (max(1, out_max * out_min_share // 100) if out_max else 0) if flexible else out_max
        out_min = min(out_min, out_max)
        sc, rates = self._scopes(), self._rates()
        before = self._snapshot()
        res = self.book.reserve(
            ReserveRequest(
                team=TEAM,
                lease_id=lease_id,
                now_ms=self.now,
                lease_ttl_ms=TTL_MS,
                scopes=sc,
                fixed_nano=fixed_nano,
                fixed_tokens=fixed_tokens,
                out_price_pico=price,
                out_tokens_max=out_max,
                out_tokens_min=out_min,
                rate_limits=rates,
                intent={"request_id": lease_id},
                count_denial=final,
            )
        )
        for s in sc:
            for bound, limit in ((self.bound_usd, s.usd_limit_nano), (self.bound_tok, s.token_limit)):
                cap = float("inf") if limit == UNLIMITED else limit
                bound[s.counter] = max(bound.get(s.counter, 0), cap)
        self._check_reserve(
            res, lease_id, sc, rates, before, fixed_nano, fixed_tokens, price, out_max, out_min, final
        )

    def _check_reserve(
        self,
        res: ReserveResult,
        lease_id: str,
        sc: list[ScopeLimit],
        rates: list[RateLimit],
        before: tuple[dict[str, tuple[int, ...]], dict[str, int], set[str]],
        fixed_nano: int,
        fixed_tokens: int,
        price: int,
        out_max: int,
        out_min: int,
        final: bool,
    ) -> None:
        # The tightest scope: the first one with the least free (USD and tokens separately).
        free: dict[str, tuple[int, str]] = {}
        for s in sc:
            u = self._exp(s.counter)
            for kind, limit, used in (
                ("usd", s.usd_limit_nano, u.spent_nano + u.reserved_nano),
                ("tokens", s.token_limit, u.spent_tokens + u.reserved_tokens),
            ):
                if limit != UNLIMITED and (kind not in free or max(0, limit - used) < free[kind][0]):
                    free[kind] = (max(0, limit - used), s.scope)
        free_nano = free["usd"][0] if "usd" in free else UNLIMITED
        free_tok = free["tokens"][0] if "tokens" in free else UNLIMITED

        for rl in rates:
            counter = f"{rl.kind}|{rl.scope}|{rl.window}"
            need = 1 if rl.kind == "rpm" else fixed_tokens + out_min
            if self.rate.get(counter, 0) + need > rl.limit:
                event(f"reserve: rate limited ({rl.kind})")
                assert (res.ok, res.reason, res.scope) == (False, rl.kind, rl.scope)
                assert (res.remaining_nano, res.remaining_tokens) == (free_nano, free_tok)
                assert res.rate_remaining == self._rate_remaining(rates)
                assert self._snapshot() == before, "a rate-limited request changes nothing"
                return

        # out = min(out_max, floor((free - fixed) * 1000 / price), free_tokens - fixed_tokens)
        caps = {"max": out_max}
        if free_nano != UNLIMITED:
            if free_nano < fixed_nano:
                caps["usd"] = -1
            elif price > 0:
                caps["usd"] = (free_nano - fixed_nano) * 1000 // price
        if free_tok != UNLIMITED:
            caps["tokens"] = free_tok - fixed_tokens
        out = min(caps.values())
        if out < out_min or out < 0:
            reason = (
                "tokens" if caps.get("tokens", out_max) < min(out_max, caps.get("usd", out_max)) else "usd"
            )
            event(f"reserve: denied ({reason}, {'flexible' if out_min < out_max else 'fixed'})")
            assert (res.ok, res.reason, res.scope) == (False, reason, free[reason][1])
            assert (res.out_tokens, res.reserved_nano, res.reserved_tokens) == (0, 0, 0)
            assert (res.remaining_nano, res.remaining_tokens) == (free_nano, free_tok)
            for s in sc:
                if s.scope == free[reason][1] and final:  # a denial the caller retries is not counted
                    self._exp(s.counter).denials += 1
            assert lease_id not in self.book.leases
            return

        cost = fixed_nano + -(-out * price // 1000)
        tokens = fixed_tokens + out
        binding = min(caps, key=caps.__getitem__)
        event(f"reserve: ok, shrunk by {binding}" if out < out_max else "reserve: ok")
        assert res.ok and (res.reason, res.scope) == ("", "")
        assert (res.out_tokens, res.reserved_nano, res.reserved_tokens) == (out, cost, tokens)
        assert free_nano == UNLIMITED or cost <= free_nano, "a reservation never exceeds the free budget"
        assert free_tok == UNLIMITED or tokens <= free_tok
        assert res.remaining_nano == (UNLIMITED if free_nano == UNLIMITED else free_nano - cost)
        assert res.remaining_tokens == (UNLIMITED if free_tok == UNLIMITED else free_tok - tokens)
        for s in sc:
            u = self._exp(s.counter)
            u.reserved_nano += cost
            u.reserved_tokens += tokens
            u.requests += 1
        tpm = []
        for rl in rates:
            counter = f"{rl.kind}|{rl.scope}|{rl.window}"
            self.rate[counter] = self.rate.get(counter, 0) + (1 if rl.kind == "rpm" else tokens)
            if rl.kind == "tpm":
                tpm.append(counter)
        assert res.rate_remaining == self._rate_remaining(rates)
        self.open[lease_id] = _Lease(cost, tokens, [s.counter for s in sc], self.now + TTL_MS, tpm)

    def _rate_remaining(self, rates: list[RateLimit]) -> dict[str, int]:
        return {
            f"{rl.kind}:{rl.scope}": max(0, rl.limit - self.rate.get(f"{rl.kind}|{rl.scope}|{rl.window}", 0))
            for rl in rates
        }

    @precondition(lambda self: self.open or self.closed)
    @rule(pick=st.integers(0, 10**6), num=st.sampled_from([0, 1, 2, 3, 4, 6]))
    def settle(self, pick: int, num: int) -> None:
        """Settle at num/4 of the reservation: 0, below, exact, or above (the truth wins)."""
        ids = sorted(self.open) + sorted(self.closed)
        lease_id = ids[pick % len(ids)]
        lease = self.open.get(lease_id)
        if lease is None:
            event("settle: late (no-op)")
            before = self._snapshot()
            assert not self.book.settle(settle(lease_id, 123, 4))
            assert self._snapshot() == before, "a late settle changes nothing"
            return
        cost, tokens = lease.cost * num // 4, lease.tokens * num // 4
        assert self.book.settle(settle(lease_id, cost, tokens))
        del self.open[lease_id]
        self.closed.add(lease_id)
        for counter in lease.counters:
            u = self._exp(counter)
            u.reserved_nano -= lease.cost
            u.reserved_tokens -= lease.tokens
            u.spent_nano += cost
            u.spent_tokens += tokens
            self.bound_usd[counter] = self.bound_usd.get(counter, 0) + max(0, cost - lease.cost)
            self.bound_tok[counter] = self.bound_tok.get(counter, 0) + max(0, tokens - lease.tokens)
        refund = max(0, lease.tokens - tokens)
        if lease.tpm and refund:
            event("settle: tpm refund")
        for counter in lease.tpm:
            self.rate[counter] = max(0, self.rate[counter] - refund)

    @rule(limit=st.sampled_from([1, 2, 100]))
    def expire_due(self, limit: int) -> None:
        due = self.book.due_leases(TEAM, self.now, limit)
        expected_due = {i for i, lease in self.open.items() if lease.expires_ms <= self.now}
        assert len(due) == min(limit, len(expected_due))
        assert {x.lease_id for x in due} <= expected_due
        for found in due:
            event("lease expired")
            lease = self.open.pop(found.lease_id)
            charged = self.book.expire(found.lease_id)
            assert charged is not None and (charged.cost_nano, charged.tokens) == (lease.cost, lease.tokens)
            assert self.book.expire(found.lease_id) is None, "charged exactly once"
            self.closed.add(found.lease_id)
            for counter in lease.counters:
                u = self._exp(counter)
                u.reserved_nano -= lease.cost
                u.reserved_tokens -= lease.tokens
                u.spent_nano += lease.cost
                u.spent_tokens += lease.tokens

    @rule(rid=st.sampled_from(["r1", "r2", "r3"]), cost=st.integers(0, 50_000), tokens=st.integers(0, 500))
    def record(self, rid: str, cost: int, tokens: int) -> None:
        sc = self._scopes()
        assert self.book.record(rid, cost, tokens, sc) == (rid not in self.seen)
        if rid in self.seen:
            return
        self.seen.add(rid)
        for s in sc:
            u = self._exp(s.counter)
            u.spent_nano += cost
            u.spent_tokens += tokens
            self.bound_usd[s.counter] = self.bound_usd.get(s.counter, 0) + cost
            self.bound_tok[s.counter] = self.bound_tok.get(s.counter, 0) + tokens

    # -------------------------------------------------------------- invariants

    @invariant()
    def counters_match_the_model(self) -> None:
        for counter, u in self.book.usage.items():
            assert _fields(u) == _fields(self.expected.get(counter, ScopeUsage())), counter
        for counter, u in self.expected.items():
            assert _fields(usage(self.book, counter)) == _fields(u), counter
        assert set(self.book.leases) == set(self.open)
        assert {c: n for c, n in self.book.rate.items() if n} == {c: n for c, n in self.rate.items() if n}

    @invariant()
    def limits_hold(self) -> None:
        for counter, u in self.book.usage.items():
            assert u.reserved_nano >= 0 and u.reserved_tokens >= 0
            assert u.spent_nano + u.reserved_nano <= self.bound_usd.get(counter, 0), counter
            assert u.spent_tokens + u.reserved_tokens <= self.bound_tok.get(counter, 0), counter

    @invariant()
    def nothing_reserved_without_an_open_lease(self) -> None:
        if not self.open:
            for u in self.book.usage.values():
                assert (u.reserved_nano, u.reserved_tokens) == (0, 0)

    def teardown(self) -> None:
        # Every lease ends settled or expired: nothing stays reserved.
        self.now += 2 * TTL_MS
        self.expire_due(10**6)
        assert not self.book.leases
        self.nothing_reserved_without_an_open_lease()


BookMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBudgetBook = BookMachine.TestCase
