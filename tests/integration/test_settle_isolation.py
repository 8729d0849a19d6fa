"""One settlement the store refuses (a Lua error) must not hold up the ones queued behind it.

Before, any script error in a batch failed the whole batch, and the flusher retried it forever:
one corrupt lease stopped every later settlement of that process. Now the store answers that item
with its own error, the rest are applied, and the refused item is kept in a ``rejected-*.jsonl``
file (never dropped, never replayed on its own). Real redis-server, real scripts.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway import jsonutil
from gateway.budget import Ask, BudgetManager
from gateway.config.runtime import BudgetSpec, CachePolicy, Principal, TeamSpec
from gateway.metering.pricing import Rates
from gateway.observability.metrics import Metrics
from gateway.store.base import ScopeLimit, Settlement, StoreError
from gateway.store.redis import RedisStore
from tests.harness import RedisServer

RATES = Rates(input=1_000_000, cached_input=0, cache_write=0, output=2_000_000, reasoning=0, provider="mock")


def principal(team: str) -> Principal:
    spec = TeamSpec(
        name=team,
        allow=re.compile(".*"),
        budget=BudgetSpec(10**12, 10**9, "monthly", (), action="deny", downgrade_to=""),
        rpm=None,
        tpm=None,
        on_store_error="fail_closed",
        cache=CachePolicy(mode="off", ttl_s=0, namespace=team),
        tags={},
    )
    return Principal(key_id="k1", team=spec, name="key", budget=None)


def ask(team: str, lease_id: str) -> Ask:
    return Ask(
        lease_id=lease_id,
        prompt_tokens_bound=100,
        out_tokens_max=100,
        flexible=False,
        rates=RATES,
        intent={"request_id": lease_id, "team": team, "ts_ms": 0},
        lease_ttl_ms=600_000,
    )


async def test_a_refused_settlement_is_set_aside_and_the_batch_goes_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    team = f"t-{uuid.uuid4().hex[:10]}"
    store = RedisStore(redis_server.url)
    await store.start()
    raw = aioredis.from_url(redis_server.url)
    metrics = Metrics(CollectorRegistry())
    mgr = BudgetManager(store, metrics)
    mgr.spill_dir = tmp_path / "spill"
    try:
        who = principal(team)
        now = datetime.now(UTC)
        reservations = []
        for lease_id in ("good-1", "bad", "good-2"):
            _entry, res = await mgr.admit(who, ask(team, lease_id), None, now)
            assert res is not None and res.mode == "store"
            reservations.append(res)
        await raw.hset(f"gw:{{{team}}}:leases", "bad", "not a lease")  # its settle script now fails

        for res, cost in zip(reservations, (1_000, 2_000, 3_000), strict=True):
            record = {"request_id": res.lease_id, "team": team, "ts_ms": int(now.timestamp() * 1000)}
            mgr.submit(res, cost, 10, record)
        for _ in range(500):  # the flusher the first submit started writes them
            if not mgr.pending_settles:
                break
            await asyncio.sleep(0.01)

        assert not mgr.pending_settles, "nothing is left to block the queue"
        scope = ScopeLimit(f"team:{team}", now.strftime("%Y-%m"))
        usage = (await store.scope_usage(team, [scope]))[scope.counter]
        assert usage.spent_nano == 4_000, "both good settlements landed"

        (kept,) = (tmp_path / "spill").glob("rejected-*.jsonl")
        (line,) = kept.read_bytes().splitlines()
        item = jsonutil.loads(line)
        assert (item["kind"], item["lease_id"], item["cost_nano"]) == ("settle", "bad", 2_000)
        assert not list((tmp_path / "spill").glob("spill-*.jsonl")), "never replayed on its own"
        refused = metrics.registry.get_sample_value(
            "llm_gateway_store_errors_total", {"operation": "rejected"}
        )
        assert refused == 1.0

        # The store answers the refused item with its own error, the others with their outcome.
        record = {"request_id": "x", "team": team, "ts_ms": 0}
        again = await store.settle_many(
            [Settlement(team, lease, 1, 1, record, 0) for lease in ("bad", "gone")]
        )
        assert isinstance(again[0], StoreError) and again[1] is False
    finally:
        await raw.aclose()
        await store.close()
