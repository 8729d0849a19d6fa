"""Settlements queued while the store is down survive a shutdown: spilled to disk, replayed at start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.budget import BudgetManager, Reservation
from gateway.observability.metrics import Metrics
from gateway.store.base import ScopeLimit, Settlement, StoreError
from gateway.store.memory import MemoryStore


class DownStore(MemoryStore):
    """A store whose writes fail, as Redis does while it is unreachable."""

    async def settle_many(self, settlements: list[Settlement]) -> list[bool]:
        raise StoreError("down")

    async def record_many(self, charges: list[Any]) -> list[bool]:
        raise StoreError("down")


_UNTIL = int(time.time() * 1000) + 86_400_000


def _record(request_id: str, cost: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts_ms": int(time.time() * 1000),
        "team": "t",
        "cost_nano": cost,
        "usage": {},
        "tags": {},
    }


async def test_queue_spills_at_shutdown_and_replays_exactly_once(tmp_path: Path) -> None:
    scope = ScopeLimit(scope="team:t", period="total", usd_limit_nano=10**9)
    down = DownStore(tmp_path / "down")
    await down.start()
    manager = BudgetManager(down, Metrics())
    # A fail-open request (local mode) and a lease-less record, both queued while the store is down.
    local = Reservation("req-1", "t", [scope], 10, 5_000, 20, -1, "local")
    manager.submit(local, 4_000, 15, _record("req-1", 4_000))
    manager.submit_record("t", _record("req-2", 0), 0, 0, [])
    spill_dir = tmp_path / "state"
    await manager.drain(0.2, spill_dir)
    await down.close()
    spilled = list(spill_dir.glob("spill-*.jsonl"))
    assert len(spilled) == 1 and not manager.pending
    content = spilled[0].read_bytes()

    store = MemoryStore(tmp_path / "up")
    await store.start()
    replayed = BudgetManager(store, Metrics())
    assert replayed.load_spills(spill_dir) == 2
    await replayed.drain(5.0)
    usage = await store.scope_usage("t", [scope])
    assert usage[scope.counter].spent_nano == 4_000
    ids = sorted(r["request_id"] for r in await store.ledger("t", 0, _UNTIL))
    assert ids == ["req-1", "req-2"]
    assert not list(spill_dir.glob("spill-*.jsonl")), "a replayed spill is deleted once it is written"
    # Replaying the same file again (a crash before it was deleted) changes nothing.
    spilled[0].write_bytes(content)
    again = BudgetManager(store, Metrics())
    again.load_spills(spill_dir)
    await again.drain(5.0)
    assert (await store.scope_usage("t", [scope]))[scope.counter].spent_nano == 4_000
    assert len(await store.ledger("t", 0, _UNTIL)) == 2
    await store.close()
