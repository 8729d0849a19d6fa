"""The budget arithmetic, in plain Python: the reference the Redis Lua script mirrors line by line.

The embedded store runs this directly; the property tests run it against the Lua script.
Nothing here awaits, so every operation is atomic within the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.store.base import (
    UNLIMITED,
    RateLimit,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
)


@dataclass(slots=True)
class Lease:
    lease_id: str
    team: str
    counters: list[str]
    cost_nano: int
    tokens: int
    expires_ms: int
    intent: dict[str, Any]
    tpm: list[str] = field(default_factory=list)


def _free(limit: int, used: int) -> int:
    return UNLIMITED if limit == UNLIMITED else max(0, limit - used)


def _min_free(a: int, b: int) -> int:
    if a == UNLIMITED:
        return b
    if b == UNLIMITED:
        return a
    return min(a, b)


def expired_record(lease: Lease, now_ms: int) -> dict[str, Any]:
    """The ledger record of a lease nobody settled: charged in full, marked estimated."""
    record = dict(lease.intent)
    record.update(
        cost_nano=lease.cost_nano,
        estimated=True,
        status="expired",
        settled_ms=now_ms,
    )
    record.setdefault("usage", {})
    return record


class BudgetBook:
    def __init__(self) -> None:
        self.usage: dict[str, ScopeUsage] = {}  # counter ("scope|period") -> usage
        self.leases: dict[str, Lease] = {}
        self.rate: dict[str, int] = {}  # "kind|scope|window" -> count
        self.seen: set[str] = set()  # request ids recorded without a lease (dedupe)

    def _usage(self, counter: str) -> ScopeUsage:
        found = self.usage.get(counter)
        if found is None:
            found = self.usage[counter] = ScopeUsage()
        return found

    # ------------------------------------------------------------------ reserve

    def reserve(self, req: ReserveRequest) -> ReserveResult:
        free_nano, free_tokens, deny_usd, deny_tok = UNLIMITED, UNLIMITED, "", ""
        for scope in req.scopes:
            u = self._usage(scope.counter)
            f_usd = _free(scope.usd_limit_nano, u.spent_nano + u.reserved_nano)
            f_tok = _free(scope.token_limit, u.spent_tokens + u.reserved_tokens)
            if f_usd != UNLIMITED and (free_nano == UNLIMITED or f_usd < free_nano):
                free_nano, deny_usd = f_usd, scope.scope
            if f_tok != UNLIMITED and (free_tokens == UNLIMITED or f_tok < free_tokens):
                free_tokens, deny_tok = f_tok, scope.scope

        limited = self._rate_check(req.rate_limits, req.fixed_tokens + req.out_tokens_min)
        if limited is not None:
            return ReserveResult(
                ok=False,
                reason=limited.kind,
                scope=limited.scope,
                remaining_nano=free_nano,  # as the Lua script reports it
                remaining_tokens=free_tokens,
                rate_remaining=self._rate_remaining(req.rate_limits),
            )

        out = req.out_tokens_max
        reason, scope_name = "", ""
        if free_nano != UNLIMITED:
            by_usd = (
                -1
                if free_nano < req.fixed_nano
                else (
                    (free_nano - req.fixed_nano) * 1000 // req.out_price_pico
                    if req.out_price_pico > 0
                    else out
                )
            )
            if by_usd < out:
                out, reason, scope_name = by_usd, "usd", deny_usd
        if free_tokens != UNLIMITED:
            by_tok = free_tokens - req.fixed_tokens
            if by_tok < out:
                out, reason, scope_name = by_tok, "tokens", deny_tok
        if out < req.out_tokens_min or out < 0:
            for scope in req.scopes:
                if scope.scope == scope_name and req.count_denial:
                    self._usage(scope.counter).denials += 1
            return ReserveResult(
                ok=False,
                reason=reason,
                scope=scope_name,
                remaining_nano=free_nano,
                remaining_tokens=free_tokens,
            )

        cost = req.fixed_nano + -(-out * req.out_price_pico // 1000)
        tokens = req.fixed_tokens + out
        for scope in req.scopes:
            u = self._usage(scope.counter)
            u.reserved_nano += cost
            u.reserved_tokens += tokens
            u.requests += 1
        tpm = self._rate_take(req.rate_limits, tokens)
        self.leases[req.lease_id] = Lease(
            lease_id=req.lease_id,
            team=req.team,
            counters=[s.counter for s in req.scopes],
            cost_nano=cost,
            tokens=tokens,
            expires_ms=req.now_ms + req.lease_ttl_ms,
            intent=req.intent,
            tpm=tpm,
        )
        return ReserveResult(
            ok=True,
            out_tokens=out,
            reserved_nano=cost,
            reserved_tokens=tokens,
            remaining_nano=free_nano if free_nano == UNLIMITED else free_nano - cost,
            remaining_tokens=free_tokens if free_tokens == UNLIMITED else free_tokens - tokens,
            rate_remaining=self._rate_remaining(req.rate_limits),
        )

    def _rate_check(self, limits: list[RateLimit], tokens: int) -> RateLimit | None:
        for rl in limits:
            used = self.rate.get(f"{rl.kind}|{rl.scope}|{rl.window}", 0)
            need = 1 if rl.kind == "rpm" else tokens
            if used + need > rl.limit:
                return rl
        return None

    def _rate_take(self, limits: list[RateLimit], tokens: int) -> list[str]:
        tpm_counters = []
        for rl in limits:
            counter = f"{rl.kind}|{rl.scope}|{rl.window}"
            self.rate[counter] = self.rate.get(counter, 0) + (1 if rl.kind == "rpm" else tokens)
            if rl.kind == "tpm":
                tpm_counters.append(counter)
        return tpm_counters

    def _rate_remaining(self, limits: list[RateLimit]) -> dict[str, int]:
        return {
            f"{rl.kind}:{rl.scope}": max(0, rl.limit - self.rate.get(f"{rl.kind}|{rl.scope}|{rl.window}", 0))
            for rl in limits
        }

    # ------------------------------------------------------------------ settle, record, expire

    def settle(self, s: Settlement) -> bool:
        lease = self.leases.pop(s.lease_id, None)
        if lease is None:
            return False  # already expired into spend (or settled): never count twice
        for counter in lease.counters:
            u = self._usage(counter)
            u.reserved_nano -= lease.cost_nano
            u.reserved_tokens -= lease.tokens
            u.spent_nano += s.cost_nano
            u.spent_tokens += s.tokens
        # Give back the tokens a TPM window reserved but the request did not use.
        refund = max(0, lease.tokens - s.tokens)
        for counter in lease.tpm:
            if counter in self.rate:
                self.rate[counter] = max(0, self.rate[counter] - refund)
        return True

    def record(self, request_id: str, cost_nano: int, tokens: int, scopes: list[ScopeLimit]) -> bool:
        if request_id in self.seen:
            return False
        self.seen.add(request_id)
        lease = self.leases.pop(request_id, None)
        if lease is not None:  # its reservation timed out on the gateway's side: release, then charge
            for counter in lease.counters:
                u = self._usage(counter)
                u.reserved_nano -= lease.cost_nano
                u.reserved_tokens -= lease.tokens
        for scope in scopes:
            u = self._usage(scope.counter)
            u.spent_nano += cost_nano
            u.spent_tokens += tokens
        return True

    def due_leases(self, team: str, now_ms: int, limit: int) -> list[Lease]:
        due = [x for x in self.leases.values() if x.team == team and x.expires_ms <= now_ms]
        return due[:limit]

    def renew(self, lease_id: str, expires_ms: int) -> bool:
        """Push a live lease's expiry later (never earlier); False if it is gone."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.expires_ms = max(lease.expires_ms, expires_ms)
        return True

    def expire(self, lease_id: str) -> Lease | None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return None
        for counter in lease.counters:
            u = self._usage(counter)
            u.reserved_nano -= lease.cost_nano
            u.reserved_tokens -= lease.tokens
            u.spent_nano += lease.cost_nano
            u.spent_tokens += lease.tokens
        return lease

    def prune_rate(self, min_window: int) -> None:
        """Drop rate counters of closed windows (the Redis keys expire on their own)."""
        for counter in [c for c in self.rate if int(c.rsplit("|", 1)[1]) < min_window]:
            del self.rate[counter]
