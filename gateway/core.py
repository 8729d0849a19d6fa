"""Assemble the gateway from its config: store, auth, budget, cache, providers, pipeline.

Also owns what outlives a request: policy reloads (validated in full, swapped atomically,
the old policy kept on any error), the lease sweeper, and the budget gauges refresher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.auth import Authenticator
from gateway.budget import BudgetManager, scopes_for
from gateway.cache import ResponseCache
from gateway.config.load import load_config
from gateway.config.runtime import Config, Principal
from gateway.config.yamlsource import ConfigError
from gateway.dispatch import Dispatcher
from gateway.ids import RequestIds
from gateway.metering.tokens import TokenCounter, preload
from gateway.observability.logging import AccessLog
from gateway.observability.metrics import Metrics
from gateway.overload import InFlightLimit
from gateway.periods import period_bounds, period_seconds
from gateway.pipeline import Pipeline
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Adapter, UpstreamClient
from gateway.providers.openai import OpenAIAdapter
from gateway.routing import Router
from gateway.store.base import Store, StoreError
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.tasks import TaskGroup, cancel_and_wait

log = logging.getLogger("gateway.core")

SWEEP_INTERVAL_S = 5.0
GAUGE_INTERVAL_S = 5.0
WATCH_INTERVAL_S = 1.0


def make_store(config: Config) -> Store:
    s = config.source.store
    url = os.environ.get("GATEWAY_REDIS_URL") or s.redis_url
    if url or s.backend == "redis":
        if not url:
            raise ConfigError(
                [f"{config.path}: store.backend is redis but no redis_url / GATEWAY_REDIS_URL is set"]
            )
        return RedisStore(url, pool_size=s.pool_size, socket_timeout_s=s.socket_timeout_s)
    state_dir = Path(s.state_dir)
    if not state_dir.is_absolute():
        state_dir = Path(config.path).parent / state_dir
    return MemoryStore(state_dir, cache_max_bytes=config.source.cache.backend_max_bytes)


class Gateway:
    def __init__(self, config: Config, store: Store | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.store = store or make_store(config)
        self.tasks = TaskGroup()
        self.ids = RequestIds()
        self.in_flight = InFlightLimit(config.source.server.max_in_flight)
        self.access_log = AccessLog()
        self.auth = Authenticator(self.store, lambda: self.config)
        self.budget = BudgetManager(self.store, self.metrics, config.source.store.expected_replicas)
        self.budget.spill_dir = self.spill_dir
        self.cache = ResponseCache(self.store, config.source.cache, self.metrics)
        self.client = UpstreamClient()
        adapters: dict[str, Adapter] = {
            "openai": OpenAIAdapter(),
            "azure": OpenAIAdapter(),
            "anthropic": AnthropicAdapter(),
        }
        self.router = Router(config.source.routing.breaker)
        self.dispatcher = Dispatcher(self.client, adapters, self.router, self.metrics)
        self.counter = TokenCounter()
        self.pipeline = Pipeline(
            config=config,
            auth=self.auth,
            budget=self.budget,
            cache=self.cache,
            dispatcher=self.dispatcher,
            counter=self.counter,
            metrics=self.metrics,
            tasks=self.tasks,
        )
        self._background: list[asyncio.Task[None]] = []
        self._config_mtime = self._mtime()
        self.ready = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def spill_dir(self) -> Path:
        """Where settlements wait if the store is down at shutdown (replayed at the next start)."""
        state_dir = Path(self.config.source.store.state_dir)
        return state_dir if state_dir.is_absolute() else Path(self.config.path).parent / state_dir

    async def start(self, watch: bool = True) -> None:
        await self.store.start()
        self.budget.load_spills(self.spill_dir)
        await self.client.start()
        await self.auth.start()
        models = {d.upstream_model for m in self.config.models.values() for d in m.deployments}
        await asyncio.to_thread(preload, models, 5.0)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._every(SWEEP_INTERVAL_S, self.sweep_leases), name="lease-sweeper"),
            loop.create_task(self._every(GAUGE_INTERVAL_S, self.refresh_budget_gauges), name="budget-gauges"),
            loop.create_task(self._every(1.0, self.publish_metrics), name="publish-metrics"),
        ]
        if watch:
            self._background.append(
                loop.create_task(self._every(WATCH_INTERVAL_S, self._watch), name="config-watch")
            )
        self.ready = True

    async def close(self, grace_s: float = 10.0) -> None:
        self.ready = False
        await self.tasks.drain(grace_s)
        await self.budget.drain(grace_s, self.spill_dir)
        await self.cache.drain()
        self.access_log.flush()
        self.metrics.flush()  # a worker's last counts reach its multiprocess files before it exits
        await cancel_and_wait(self._background)
        await self.auth.close()
        await self.client.close()
        await self.store.close()

    async def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                result = fn()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("background job %s failed", getattr(fn, "__name__", fn))

    # ------------------------------------------------------------------ reload

    def _mtime(self) -> float:
        try:
            cfg = self.config
            paths = [Path(cfg.path), Path(cfg.path).parent / cfg.source.prices]
            return max(p.stat().st_mtime for p in paths)
        except OSError:
            return 0.0

    async def _watch(self) -> None:
        mtime = self._mtime()
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            await self.reload()

    async def reload(self) -> tuple[bool, list[str]]:
        """Validate the files in full, then swap atomically; on any error keep the running policy."""
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            self.metrics.policy_reload_errors.labels().inc()
            log.error(
                "policy reload rejected; the previous policy stays active", extra={"problems": exc.problems}
            )
            return False, exc.problems
        self.config = new
        self.pipeline.config = new
        self.in_flight.cap = new.source.server.max_in_flight
        self.cache.cfg = new.source.cache
        self.router.configure(new.source.routing.breaker)
        self._config_mtime = self._mtime()
        self.metrics.policy_reloads.labels().inc()
        log.info("policy reloaded", extra={"path": new.path, "rules": len(new.rules.rules)})
        return True, []

    # ------------------------------------------------------------------ background jobs

    async def sweep_leases(self) -> None:
        """Charge leases whose process died (the reserve path also does this lazily, per team)."""
        now_ms = int(time.time() * 1000)
        teams = set(self.config.teams)
        with contextlib.suppress(StoreError):
            teams |= set(await self.store.teams())
        for team in teams:
            try:
                await self.store.expire_leases(team, now_ms)
            except StoreError:
                self.metrics.store_errors.labels("expire").inc()
                return

    def publish_metrics(self) -> None:
        # Sampled, not updated per request: a gauge write per request and per answer is hot-path
        # work (and a file write per change in multiprocess mode) for a value read every scrape.
        self.metrics.inflight.labels().set(self.in_flight.count)
        # And the buffered counters and histograms: in multiprocess mode a scrape reads the other
        # workers' files, so each worker applies its buffers at least every second.
        self.metrics.flush()

    async def refresh_budget_gauges(self) -> None:
        now = datetime.now(UTC)
        for team in self.config.teams.values():
            if team.budget is None:
                continue
            probe = Principal(key_id="-", team=team)
            scopes = scopes_for(probe, now)
            try:
                usage = await self.store.scope_usage(team.name, scopes)
            except StoreError:
                self.metrics.store_errors.labels("gauges").inc()
                return
            for scope in scopes:
                u = usage[scope.counter]
                labels = (team.name, scope.scope, scope.period)
                m = self.metrics
                if scope.usd_limit_nano >= 0:
                    m.budget_limit.labels(*labels).set(scope.usd_limit_nano / 1e9)
                    used = (
                        (u.spent_nano + u.reserved_nano) / scope.usd_limit_nano
                        if scope.usd_limit_nano
                        else 1.0
                    )
                    m.budget_utilization.labels(team.name, scope.scope).set(used)
                    self.budget.utilization[team.name] = used
                    if scope.usd_limit_nano:
                        self.budget.check_thresholds(probe, scope, u.spent_nano / scope.usd_limit_nano)
                m.budget_spent.labels(*labels).set(u.spent_nano / 1e9)
                m.budget_reserved.labels(*labels).set(u.reserved_nano / 1e9)
                if scope.token_limit >= 0:
                    m.budget_limit_tokens.labels(*labels).set(scope.token_limit)
                m.budget_spent_tokens.labels(*labels).set(u.spent_tokens)
                m.budget_reserved_tokens.labels(*labels).set(u.reserved_tokens)
                _, _, end = period_bounds(team.budget.period, now)
                m.budget_period_end.labels(team.name, scope.scope).set(end.timestamp())
                length = period_seconds(team.budget.period, now)
                if length:
                    m.budget_period_seconds.labels(team.name, scope.scope).set(length)
