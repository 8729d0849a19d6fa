"""Choosing a deployment of a logical model: balancing strategies and circuit breakers.

State (EWMA latencies, breaker counters) is per process and keyed by deployment id, so it
survives policy reloads; it is advisory, never part of the budget guarantee.

Circuit breaker: closed -> open after ``consecutive_failures`` failures in a row, or an error
rate of at least ``error_rate`` over ``min_requests`` in the window; open for ``cooldown_s``;
then half-open: exactly one probe request is let through; success closes, failure re-opens.
A probe that never reports back (the request was cancelled, or an earlier deployment in the
balancer order answered first) expires after another ``cooldown_s``, so a circuit cannot stay
half-open forever.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.config.model import BreakerConfig
from gateway.config.runtime import DeploymentSpec, ModelSpec

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_EWMA_ALPHA = 0.2


@dataclass(slots=True)
class Breaker:
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False
    probe_at: float = 0.0  # when the current probe was handed out
    outcomes: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=512))


class Router:
    def __init__(self, breaker: BreakerConfig, rng: random.Random | None = None) -> None:
        self.cfg = breaker
        self.rng = rng or random.Random()
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, float] = {}  # deployment id -> EWMA seconds

    def configure(self, breaker: BreakerConfig) -> None:
        self.cfg = breaker

    # ------------------------------------------------------------------ choice

    def order(self, model: ModelSpec, now: float | None = None) -> list[DeploymentSpec]:
        """The deployments to try, best first, with open circuits left out."""
        now = time.monotonic() if now is None else now
        usable = [d for d in model.deployments if self.available(d.id, now)]
        if len(usable) <= 1:
            return usable
        if model.strategy == "priority":
            return sorted(usable, key=lambda d: -d.priority)
        if model.strategy == "least_cost":
            return sorted(usable, key=lambda d: (d.rates.input + d.rates.output, -d.priority))
        if model.strategy == "least_latency":
            # Untried deployments go first so each gets measured.
            return sorted(usable, key=lambda d: self.latency.get(d.id, 0.0))
        return self._weighted(usable)

    def _weighted(self, usable: list[DeploymentSpec]) -> list[DeploymentSpec]:
        remaining, out = list(usable), []
        while remaining:
            pick = self.rng.choices(remaining, weights=[d.weight for d in remaining])[0]
            out.append(pick)
            remaining.remove(pick)
        return out

    # ------------------------------------------------------------------ breaker

    def has_usable(self, model: ModelSpec, now: float | None = None) -> bool:
        """Side-effect free: could any deployment take a request now (closed, or due for a probe)?"""
        now = time.monotonic() if now is None else now
        for d in model.deployments:
            b = self.breakers.get(d.id)
            if (
                b is None
                or b.state == CLOSED
                or (b.state == OPEN and now - b.opened_at >= self.cfg.cooldown_s)
                or (b.state == HALF_OPEN and self._probe_free(b, now))
            ):
                return True
        return False

    def available(self, deployment_id: str, now: float) -> bool:
        b = self.breakers.get(deployment_id)
        if b is None or b.state == CLOSED:
            return True
        if b.state == OPEN and now - b.opened_at >= self.cfg.cooldown_s:
            b.state, b.probing = HALF_OPEN, False
        if b.state == HALF_OPEN and self._probe_free(b, now):
            b.probing, b.probe_at = True, now  # exactly one probe at a time
            return True
        return False

    def _probe_free(self, b: Breaker, now: float) -> bool:
        return not b.probing or now - b.probe_at >= self.cfg.cooldown_s

    def state(self, deployment_id: str) -> str:
        b = self.breakers.get(deployment_id)
        return b.state if b else CLOSED

    def record(
        self, deployment_id: str, ok: bool, latency_s: float | None = None, now: float | None = None
    ) -> str:
        """Record an attempt's outcome; returns the breaker state afterwards."""
        now = time.monotonic() if now is None else now
        b = self.breakers.setdefault(deployment_id, Breaker())
        if ok and latency_s is not None:
            prev = self.latency.get(deployment_id)
            self.latency[deployment_id] = (
                latency_s if prev is None else prev + _EWMA_ALPHA * (latency_s - prev)
            )
        b.outcomes.append((now, ok))
        if ok:
            b.consecutive = 0
            if b.state == HALF_OPEN:
                b.state, b.probing = CLOSED, False
                b.outcomes.clear()
            return b.state
        b.consecutive += 1
        if b.state == HALF_OPEN or self._tripped(b, now):
            b.state, b.opened_at, b.probing = OPEN, now, False
        return b.state

    def _tripped(self, b: Breaker, now: float) -> bool:
        if b.consecutive >= self.cfg.consecutive_failures:
            return True
        recent = [ok for t, ok in b.outcomes if now - t <= self.cfg.window_s]
        if len(recent) < self.cfg.min_requests:
            return False
        return recent.count(False) / len(recent) >= self.cfg.error_rate
