"""Budgets that hold: reserve the upper bound before calling upstream, settle the actual after.

One ``reserve`` per request checks every scope (team, key) and the RPM/TPM limits in one atomic
store operation (one Lua script on Redis). The upper bound is strict: the prompt part is an
exact count or a byte-length bound (a byte-level BPE token covers at least one byte), the output
part is ``max_tokens`` or, when the client sent none, whatever the tightest scope can still pay
for (capped at the model's max output) and that cap is injected into the upstream request.

When the store is unreachable the team's ``on_store_error`` decides: ``fail_closed`` answers 503;
``fail_open`` serves under a per-process guard of ``limit / expected_replicas`` and queues the
spend, which is reconciled into the store (deduplicated by request id) when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import jsonutil
from gateway.config.runtime import UNLIMITED, BudgetSpec, Principal
from gateway.errors import BudgetExceeded, RateLimited, StoreUnavailable
from gateway.metering.pricing import Rates, nano_to_usd_str
from gateway.observability.metrics import Metrics
from gateway.periods import period_bounds, seconds_until_reset
from gateway.store.base import (
    CacheProbe,
    Charge,
    RateLimit,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    Settlement,
    Store,
    StoreError,
    StoreUncertain,
)
from gateway.tasks import TaskGroup

log = logging.getLogger("gateway.budget")

_BATCH = 256


@dataclass(slots=True)
class Reservation:
    lease_id: str
    team: str
    scopes: list[ScopeLimit]
    out_tokens: int  # the output cap this reservation pays for
    reserved_nano: int
    reserved_tokens: int
    remaining_nano: int
    mode: str  # "store" | "local" (fail-open guard) | "none" (no budget, no limits)
    rate_remaining: dict[str, int] = field(default_factory=dict)
    lease_ttl_ms: int = 0  # how long the store keeps the lease before charging it in full
    reserved_at: float = 0.0  # time.monotonic() when the store took it: the lease's TTL runs from here


@dataclass(slots=True)
class Ask:
    """What one request wants to reserve, priced with one deployment's rates."""

    lease_id: str
    prompt_tokens_bound: int
    out_tokens_max: int
    flexible: bool  # the client gave no max_tokens: the output cap may shrink to fit
    rates: Rates
    intent: dict[str, Any]
    lease_ttl_ms: int
    choices: int = 1  # n: every choice may use the output cap, and a flexible cap must give each >= 1


def _scope_limits(spec: BudgetSpec | None, scope: str, now: datetime) -> ScopeLimit | None:
    if spec is None:
        return None
    period_id, _, _ = period_bounds(spec.period, now)
    return ScopeLimit(scope=scope, period=period_id, usd_limit_nano=spec.usd_nano, token_limit=spec.tokens)


def scopes_for(principal: Principal, now: datetime) -> list[ScopeLimit]:
    scopes = [
        _scope_limits(principal.team.budget, f"team:{principal.team.name}", now),
        _scope_limits(principal.budget, f"key:{principal.key_id}", now),
    ]
    return [s for s in scopes if s is not None]


def rate_limits_for(principal: Principal, now_s: float) -> list[RateLimit]:
    window = int(now_s // 60)
    out = []
    for kind, team_limit, key_limit in (
        ("rpm", principal.team.rpm, principal.rpm),
        ("tpm", principal.team.tpm, principal.tpm),
    ):
        if team_limit:
            out.append(RateLimit(kind, f"team:{principal.team.name}", team_limit, window))
        if key_limit:
            out.append(RateLimit(kind, f"key:{principal.key_id}", key_limit, window))
    return out


class _LocalGuard:
    """Fail-open spend cap for one process while the store is down: limit / expected replicas."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}  # counter -> nano spent or reserved locally

    def reserve(self, scopes: list[ScopeLimit], cost: int, replicas: int) -> bool:
        for s in scopes:
            if (
                s.usd_limit_nano != UNLIMITED
                and self.spent.get(s.counter, 0) + cost > s.usd_limit_nano // replicas
            ):
                return False
        for s in scopes:
            self.spent[s.counter] = self.spent.get(s.counter, 0) + cost
        return True

    def adjust(self, scopes: list[ScopeLimit], delta: int) -> None:
        for s in scopes:
            self.spent[s.counter] = max(0, self.spent.get(s.counter, 0) + delta)


class LeaseKeeper:
    """Renews one lease every half TTL, counted from the reservation (the first chunk may come long
    after it), on a loop timer: nothing runs per chunk. Stops itself once the lease is gone."""

    __slots__ = ("_interval_s", "_manager", "_res", "_tasks", "_timer")

    def __init__(self, manager: BudgetManager, res: Reservation, tasks: TaskGroup) -> None:
        self._manager, self._res, self._tasks = manager, res, tasks
        self._interval_s = res.lease_ttl_ms / 2000
        first = max(0.0, res.reserved_at + self._interval_s - time.monotonic())
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(first, self._tick)

    def _tick(self) -> None:
        self._tasks.spawn(self._renew(), name="lease-renew")
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    async def _renew(self) -> None:
        if not await self._manager.renew(self._res) and self.running:
            log.warning("lease %s expired into spend before its stream ended", self._res.lease_id)
            self.stop()

    @property
    def running(self) -> bool:
        return self._timer is not None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BudgetManager:
    def __init__(self, store: Store, metrics: Metrics, expected_replicas: int = 1) -> None:
        self.store = store
        self.metrics = metrics
        self.replicas = expected_replicas
        self.guard = _LocalGuard()
        self.pending: deque[Charge] = deque()
        self.pending_settles: deque[Settlement] = deque()
        self.utilization: dict[str, float] = {}  # team -> last known share of its budget used
        self._crossed: dict[str, float] = {}
        self._reconciler: asyncio.Task[None] | None = None
        # One batch write at a time: a batch cancelled after Redis ran it but before its answer arrived
        # stays queued and is sent again, which costs nothing (a settled lease is gone, records are
        # deduplicated) but reads in the log as a lease that "expired into spend".
        self._flushing = asyncio.Lock()
        self._spilled: list[Path] = []
        self.spill_dir: Path | None = None  # where the queue goes if it cannot be written (set by core)
        # Scopes and limits per principal for the current minute: period ids only change on minute
        # boundaries (UTC midnight), so this is exact, and spares a calendar computation per request.
        self._limits: dict[int, tuple[Principal, int, list[ScopeLimit], list[RateLimit]]] = {}

    def _scopes_and_limits(
        self, principal: Principal, now: datetime
    ) -> tuple[list[ScopeLimit], list[RateLimit]]:
        ts = now.timestamp()
        minute = int(ts // 60)
        cached = self._limits.get(id(principal))
        if cached is not None and cached[0] is principal and cached[1] == minute:
            return cached[2], cached[3]
        scopes, limits = scopes_for(principal, now), rate_limits_for(principal, ts)
        if len(self._limits) > 10_000:
            self._limits.clear()
        self._limits[id(principal)] = (principal, minute, scopes, limits)
        return scopes, limits

    # ------------------------------------------------------------------ reserve

    async def reserve(
        self, principal: Principal, ask: Ask, now: datetime | None = None, *, final: bool = True
    ) -> Reservation:
        """``final=False`` for an attempt the caller follows with another if denied: a request's
        denial is counted (store and metrics) once, on its final attempt.

        A final denial is checked once more after this process settles what it already owes the team:
        settles are queued after each response, so a client's next request can otherwise find its
        previous request's lease still reserved and be refused a budget that has room."""
        owed = final and any(s.team == principal.team.name for s in self.pending_settles)
        try:
            _, reservation = await self.admit(principal, ask, None, now, final=final and not owed)
        except (BudgetExceeded, RateLimited):
            if not owed:
                raise
            with contextlib.suppress(StoreError):  # still queued: the flusher retries; the answer stands
                await self.flush_once()
            _, reservation = await self.admit(principal, ask, None, now, final=True)
        assert reservation is not None
        return reservation

    async def admit(
        self,
        principal: Principal,
        ask: Ask,
        probe: CacheProbe | None,
        now: datetime | None = None,
        *,
        final: bool = True,
    ) -> tuple[bytes | None, Reservation | None]:
        """The cache probe and the reservation in one store operation (one Redis round trip).

        Returns ``(entry, None)`` on a cache hit (nothing reserved) and ``(None, reservation)`` on a
        miss, with ``probe.locked`` telling whether this request holds the cache fill lock. A store
        failure is a cache miss without a lock (the cache fails open) and then the team's
        ``on_store_error`` decides the budget's answer."""
        now = now or datetime.now(UTC)
        scopes, limits = self._scopes_and_limits(principal, now)
        rates = ask.rates
        fixed_nano = -(
            -ask.prompt_tokens_bound * max(rates.input, rates.cached_input, rates.cache_write) // 1000
        )
        out_price = max(rates.output, rates.reasoning)
        # No budget and no rate limit: nothing to reserve (the request is still metered and ledgered).
        unmetered = Reservation(
            ask.lease_id, principal.team.name, [], ask.out_tokens_max, 0, 0, UNLIMITED, "none"
        )
        if not scopes and not limits and probe is None:
            return None, unmetered
        req = (
            None
            if not scopes and not limits
            else ReserveRequest(
                team=principal.team.name,
                lease_id=ask.lease_id,
                now_ms=int(now.timestamp() * 1000),
                lease_ttl_ms=ask.lease_ttl_ms,
                scopes=scopes,
                fixed_nano=fixed_nano,
                fixed_tokens=ask.prompt_tokens_bound,
                out_price_pico=out_price,
                out_tokens_max=ask.out_tokens_max,
                out_tokens_min=min(ask.choices, ask.out_tokens_max) if ask.flexible else ask.out_tokens_max,
                rate_limits=limits,
                intent=ask.intent,
                count_denial=final,
            )
        )
        asked_at = time.monotonic()  # the store counts the lease's TTL from about now (req.now_ms)
        try:
            admission = await self.store.admit(principal.team.name, req, probe)
        except asyncio.CancelledError:
            # The client went away while the script was in flight. Nothing reached a provider, but the
            # lease may exist: left alone it would expire into spend (the whole reservation).
            if req is not None:
                self._release_unanswered(req, 499)
            raise
        except StoreError as exc:
            if probe is not None:
                self.metrics.cache_errors.labels("admit").inc()
                probe.locked, probe.lock_ms = False, 0  # the cache failed open: no lock, no wait
            if req is None:
                return None, unmetered
            self.metrics.store_errors.labels("reserve").inc()
            return None, self._fail_open(principal, req, exc)
        if admission.entry is not None:
            return admission.entry, None
        if req is None:
            return None, unmetered
        result = admission.result
        assert result is not None
        if not result.ok:
            raise self._denial(principal, result, scopes, limits, now, final)
        self._note_utilization(principal, scopes, result)
        return None, Reservation(
            ask.lease_id,
            principal.team.name,
            scopes,
            result.out_tokens,
            result.reserved_nano,
            result.reserved_tokens,
            result.remaining_nano,
            "store",
            result.rate_remaining,
            ask.lease_ttl_ms,
            asked_at,
        )

    def keep_lease(self, res: Reservation, tasks: TaskGroup) -> LeaseKeeper | None:
        """Renew a stream's lease while it runs; the caller stops the keeper when the stream ends.

        A lease lives ``total_s + lease_grace_s``, which bounds a non-streamed request, but a stream
        runs as long as chunks keep coming. Unrenewed, a longer stream's lease would expire into
        spend: the team charged the whole reservation and the actual cost dropped at settle."""
        if res.mode != "store" or res.lease_ttl_ms <= 0:
            return None
        return LeaseKeeper(self, res, tasks)

    async def renew(self, res: Reservation) -> bool:
        """Push the lease's expiry a TTL ahead. False once it is gone (settled or expired); True when
        it is alive or the store could not say (the next tick tries again)."""
        try:
            return await self.store.renew_lease(
                res.team, res.lease_id, int(time.time() * 1000) + res.lease_ttl_ms
            )
        except StoreError as exc:  # retried at the next tick; a lease that expires meanwhile over-charges
            self.metrics.store_errors.labels("renew").inc()
            log.warning("renewing lease %s failed: %s", res.lease_id, exc)
            return True

    def _release_unanswered(self, req: ReserveRequest, status: int) -> None:
        """A reservation whose answer never came back may exist in the store: queue its release at $0
        (a no-op if the script never ran). Queued on the same connection as the script, so it runs after."""
        record = {**req.intent, "status": status, "cost_nano": 0, "estimated": False}
        self.pending_settles.append(
            Settlement(
                team=req.team,
                lease_id=req.lease_id,
                cost_nano=0,
                tokens=0,
                record=record,
                now_ms=req.now_ms,
                unanswered=True,
            )
        )
        self._ensure_reconciler()

    def _fail_open(self, principal: Principal, req: ReserveRequest, exc: Exception) -> Reservation:
        if principal.team.on_store_error != "fail_open":
            if isinstance(exc, StoreUncertain):
                # The script may have run: release its lease at $0 once the store answers again, or it
                # would expire into spend for a request that was refused.
                self._release_unanswered(req, 503)
            raise StoreUnavailable(
                "the budget store is unavailable and this team fails closed; retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        out = req.out_tokens_max
        cost = req.fixed_nano + -(-out * req.out_price_pico // 1000)
        if not self.guard.reserve(req.scopes, cost, self.replicas):
            if req.count_denial:
                self.metrics.budget_denied.labels(principal.team.name, "fail_open_guard").inc()
            raise BudgetExceeded(
                "budget guard reached while the budget store is unavailable",
                headers={"x-should-retry": "false"},
            )
        self.metrics.fail_open.labels(principal.team.name).inc()
        log.warning(
            "store unavailable, serving team %s under the fail-open guard: %s", principal.team.name, exc
        )
        return Reservation(
            req.lease_id, req.team, req.scopes, out, cost, req.fixed_tokens + out, UNLIMITED, "local"
        )

    def _denial(
        self,
        principal: Principal,
        result: ReserveResult,
        scopes: list[ScopeLimit],
        limits: list[RateLimit],
        now: datetime,
        final: bool,
    ) -> Exception:
        team = principal.team.name
        if result.reason in ("rpm", "tpm"):
            self.metrics.rate_limited.labels(team, result.reason).inc()
            reset_s = 60 - int(now.timestamp()) % 60
            headers = {"Retry-After": str(reset_s)}
            for rl in limits:
                if rl.scope == result.scope or rl.scope.startswith("team:"):
                    noun = "requests" if rl.kind == "rpm" else "tokens"
                    headers[f"x-ratelimit-limit-{noun}"] = str(rl.limit)
                    headers[f"x-ratelimit-remaining-{noun}"] = str(
                        result.rate_remaining.get(f"{rl.kind}:{rl.scope}", 0)
                    )
                    headers[f"x-ratelimit-reset-{noun}"] = f"{reset_s}s"
            return RateLimited(f"rate limit exceeded: {result.reason} for {result.scope}", headers=headers)
        if final:
            self.metrics.budget_denied.labels(team, result.reason or "usd").inc()
        spec = principal.budget if result.scope.startswith("key:") else principal.team.budget
        headers = {"x-should-retry": "false"}
        reset = seconds_until_reset(spec.period, now) if spec else None
        if reset is not None:
            headers["Retry-After"] = str(reset)
        remaining = (
            "unlimited" if result.remaining_nano == UNLIMITED else nano_to_usd_str(result.remaining_nano)
        )
        what = "token" if result.reason == "tokens" else "USD"
        return BudgetExceeded(
            f"{what} budget exceeded for {result.scope} (remaining {remaining} USD); "
            f"the budget resets in {reset}s"
            if reset
            else f"{what} budget exceeded for {result.scope}",
            headers=headers,
        )

    def _note_utilization(
        self, principal: Principal, scopes: list[ScopeLimit], result: ReserveResult
    ) -> None:
        team_scope = next((s for s in scopes if s.scope.startswith("team:")), None)
        if team_scope is None or team_scope.usd_limit_nano <= 0 or result.remaining_nano == UNLIMITED:
            return
        used = 1 - max(0, result.remaining_nano) / team_scope.usd_limit_nano
        self.utilization[principal.team.name] = used

    def check_thresholds(self, principal: Principal, scope: ScopeLimit, used: float) -> None:
        """Soft thresholds on *spent* money (the gauges refresher calls this): reservations are upper
        bounds, and one request without max_tokens can reserve most of what is left, which is no
        reason to warn anyone."""
        spec = principal.team.budget
        if spec is None:
            return
        key = f"{scope.counter}"
        last = self._crossed.get(key, 0.0)
        for threshold in spec.thresholds:
            if last < threshold <= used:
                self.metrics.budget_thresholds.labels(
                    principal.team.name, scope.scope, f"{threshold:g}"
                ).inc()
                log.warning(
                    "budget threshold crossed",
                    extra={
                        "event": "budget_threshold",
                        "team": principal.team.name,
                        "scope": scope.scope,
                        "threshold": threshold,
                        "utilization": round(used, 4),
                    },
                )
        if used > last:
            self._crossed[key] = used

    # ------------------------------------------------------------------ settle

    def submit(self, res: Reservation, cost_nano: int, tokens: int, record: dict[str, Any]) -> None:
        """The hot path's settle: queue it and return. One flusher task writes queued settlements in
        batches (one store round trip per batch); failures stay queued and are retried, never dropped."""
        if res.mode == "local":
            self.guard.adjust(res.scopes, cost_nano - res.reserved_nano)
            self._queue_record(res.team, record, cost_nano, tokens, res.scopes)
            return
        if res.mode == "none":
            self._queue_record(res.team, record, cost_nano, tokens, [])
            return
        self.pending_settles.append(
            Settlement(
                team=res.team,
                lease_id=res.lease_id,
                cost_nano=cost_nano,
                tokens=tokens,
                record=record,
                now_ms=int(time.time() * 1000),
            )
        )
        self._ensure_reconciler()

    def submit_record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> None:
        """A lease-less charge (a cache hit at $0), queued like ``submit``; deduplicated by request id."""
        self._queue_record(team, record, cost_nano, tokens, scopes)

    async def settle(self, res: Reservation, cost_nano: int, tokens: int, record: dict[str, Any]) -> None:
        """Settle now, waiting for the store (``submit`` is the hot path's queued form). Never loses a
        record: failures are queued and retried."""
        if res.mode != "store":
            self.submit(res, cost_nano, tokens, record)
            return
        settlement = Settlement(
            team=res.team,
            lease_id=res.lease_id,
            cost_nano=cost_nano,
            tokens=tokens,
            record=record,
            now_ms=int(time.time() * 1000),
        )
        try:
            settled = await self.store.settle(settlement)
        except StoreError as exc:
            self.metrics.store_errors.labels("settle").inc()
            log.warning("settle failed, queued for retry: %s", exc)
            self.pending_settles.append(settlement)
            self._ensure_reconciler()
            return
        if not settled:
            log.warning(
                "lease %s had already expired into spend; actual cost %s not applied twice",
                res.lease_id,
                nano_to_usd_str(cost_nano),
            )

    async def record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> None:
        """A charge without a lease (cache hits at $0, denials): deduplicated by request id."""
        try:
            await self.store.record(team, record, cost_nano, tokens, scopes)
        except StoreError:
            self.metrics.store_errors.labels("record").inc()
            self._queue_record(team, record, cost_nano, tokens, scopes)

    def _queue_record(
        self, team: str, record: dict[str, Any], cost: int, tokens: int, scopes: list[ScopeLimit]
    ) -> None:
        self.pending.append((team, record, cost, tokens, scopes))
        self._ensure_reconciler()

    def _ensure_reconciler(self) -> None:
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.get_running_loop().create_task(
                self._reconcile(), name="budget-reconcile"
            )

    async def _reconcile(self) -> None:
        delay = 0.05
        while self.pending or self.pending_settles:
            try:
                await self.flush_once()
                delay = 0.05
                if not (self.pending or self.pending_settles):
                    self._forget_spills()
            except StoreError:
                self.metrics.store_errors.labels("settle").inc()
                self.metrics.ledger_pending.labels().set(len(self.pending) + len(self.pending_settles))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # a bug or a malformed record: keep the queue on disk, never drop it
                log.exception("writing settlements failed; the queue is spilled for the next start")
                if self.spill_dir is None:
                    await asyncio.sleep(2.0)
                    continue
                self.spill(self.spill_dir)
        self.metrics.ledger_pending.labels().set(0)

    async def flush_once(self) -> None:
        """Write queued settlements and records in batches. Safe to repeat after a partial failure:
        a settle whose lease is gone is a no-op and records are deduplicated by request id."""
        async with self._flushing:
            await self._flush_batches()

    async def _flush_batches(self) -> None:
        while self.pending_settles:
            batch = list(itertools.islice(self.pending_settles, _BATCH))
            results = await self.store.settle_many(batch)
            rejected = [s for s, answer in zip(batch, results, strict=True) if isinstance(answer, StoreError)]
            if rejected:  # on disk before they leave the queue: a failed write keeps them queued
                self._set_aside(rejected, [], _first_error(results))
            for settlement, settled in zip(batch, results, strict=True):
                self.pending_settles.popleft()
                if settled is False and not settlement.unanswered:
                    log.warning(
                        "lease %s had already expired into spend; actual cost %s not applied twice",
                        settlement.lease_id,
                        nano_to_usd_str(settlement.cost_nano),
                    )
        while self.pending:
            batch_records = list(itertools.islice(self.pending, _BATCH))
            answers = await self.store.record_many(batch_records)
            refused = [
                q for q, answer in zip(batch_records, answers, strict=True) if isinstance(answer, StoreError)
            ]
            if refused:
                self._set_aside([], refused, _first_error(answers))
            for (_team, _record, cost, _tokens, scopes), answer in zip(batch_records, answers, strict=True):
                self.pending.popleft()
                if scopes and not isinstance(answer, StoreError):
                    self.guard.adjust(scopes, -cost)  # now counted in the store, not only here

    def _set_aside(self, settles: list[Settlement], records: list[Charge], error: StoreError) -> None:
        """Items the store refused one by one (a Lua runtime error: corrupt lease data, a script from
        another version). Retrying cannot fix them, and left in the queue they would block every later
        settlement, so they go to a ``rejected-*.jsonl`` file (the spill format) for an operator: never
        replayed on its own, since a script that failed part-way may have applied part of its writes."""
        count = len(settles) + len(records)
        self.metrics.store_errors.labels("rejected").inc(count)
        lines = _queue_lines(settles, records)
        if self.spill_dir is None:
            log.error("the store refused %d ledger writes (%s): %s", count, error, b" ".join(lines).decode())
            return
        path = _write_lines(self.spill_dir, "rejected", lines)
        log.error("the store refused %d ledger writes (%s); they are kept in %s", count, error, path)

    async def drain(self, timeout: float, spill_dir: Path | None = None) -> None:
        """Graceful shutdown: write what is queued within the deadline; if the store cannot take it
        (it is down), spill it to ``spill_dir`` so the next start reconciles it: nothing is lost."""
        deadline = time.monotonic() + timeout
        if self._reconciler is not None:
            # Let a batch already sent come back (within the deadline): cancelled, it would be resent.
            try:
                acquired: bool = await asyncio.wait_for(self._flushing.acquire(), timeout)
            except TimeoutError:
                acquired = False
            self._reconciler.cancel()  # holding the lock, if it came: it stops between two batches
            if acquired:
                self._flushing.release()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        while (self.pending or self.pending_settles) and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.flush_once(), max(0.01, deadline - time.monotonic()))
            except Exception:  # the store is down (or worse): what is left is spilled below
                break
        spill_dir = spill_dir or self.spill_dir
        if not (self.pending or self.pending_settles):
            self._forget_spills()
        elif spill_dir is not None:
            self.spill(spill_dir)

    def _forget_spills(self) -> None:
        for path in self._spilled:  # replayed spills are in the store now
            path.unlink(missing_ok=True)
        self._spilled.clear()

    def spill(self, spill_dir: Path) -> Path:
        """Write the queued settlements and records to a file that ``load_spills`` replays later."""
        lines = _queue_lines(list(self.pending_settles), list(self.pending))
        path = _write_lines(spill_dir, "spill", lines)
        log.warning("store unavailable at shutdown: %d settlements spilled to %s", len(lines), path)
        self.pending.clear()
        self.pending_settles.clear()
        return path

    def load_spills(self, spill_dir: Path) -> int:
        """Queue what an earlier process spilled; the files go once the queue has been written.
        Replaying twice is harmless: a settle without its lease is a no-op, records are deduplicated."""
        files = sorted(spill_dir.glob("spill-*.jsonl")) if spill_dir.is_dir() else []
        count = 0
        for path in files:
            for line in path.read_bytes().splitlines():
                try:
                    item = jsonutil.loads(line)
                except jsonutil.JSONDecodeError:
                    continue
                if item.get("kind") == "settle":
                    self.pending_settles.append(
                        Settlement(
                            team=item["team"],
                            lease_id=item["lease_id"],
                            cost_nano=item["cost_nano"],
                            tokens=item["tokens"],
                            record=item["record"],
                            now_ms=item["now_ms"],
                        )
                    )
                else:
                    scopes = [ScopeLimit(scope=s, period=p) for s, p in item["scopes"]]
                    self.pending.append(
                        (item["team"], item["record"], item["cost_nano"], item["tokens"], scopes)
                    )
                count += 1
        self._spilled.extend(files)
        if count:
            self._ensure_reconciler()
        return count


def _first_error(answers: list[bool | StoreError]) -> StoreError:
    return next(a for a in answers if isinstance(a, StoreError))


def _queue_lines(settles: list[Settlement], records: list[Charge]) -> list[bytes]:
    lines = [
        jsonutil.dumps(
            {
                "kind": "settle",
                "team": s.team,
                "lease_id": s.lease_id,
                "cost_nano": s.cost_nano,
                "tokens": s.tokens,
                "record": s.record,
                "now_ms": s.now_ms,
            }
        )
        for s in settles
    ]
    lines += [
        jsonutil.dumps(
            {
                "kind": "record",
                "team": t,
                "record": r,
                "cost_nano": c,
                "tokens": n,
                "scopes": [[s.scope, s.period] for s in scopes],
            }
        )
        for t, r, c, n, scopes in records
    ]
    return lines


def _write_lines(directory: Path, prefix: str, lines: list[bytes]) -> Path:
    """Atomically (a rename), under a name no other process or call uses."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{os.getpid()}-{time.time_ns()}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    os.replace(tmp, path)
    return path
