"""The embedded store's journal survives ``kill -9``.

A child process opens a MemoryStore, reserves leases, settles some, records a lease-less charge and
kills itself with SIGKILL (no close, no fsync). Reopening the state directory must show the settled
spend exactly, every unsettled lease expired into spend (charged in full, one estimated ledger record
each), nothing left reserved, and a second restart must change nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from gateway import jsonutil
from gateway.store.base import ScopeLimit, ScopeUsage, Settlement
from gateway.store.memory import MemoryStore
from tests.harness import ROOT

N_LEASES = 6
N_SETTLED = 2
OUT_PRICE = 2_000_000  # pico-USD per output token
OUT_TOKENS = 100

# argv: state_dir team n_leases n_settled out_price out_tokens. Prints its timestamp, dies by SIGKILL.
CRASHING_CHILD = r"""
import asyncio, os, signal, sys, time

from gateway.store.base import ReserveRequest, ScopeLimit, Settlement
from gateway.store.memory import MemoryStore


async def main(state_dir: str, team: str, n: int, settled: int, price: int, out: int) -> None:
    store = MemoryStore(state_dir)
    await store.start()
    t = int(time.time() * 1000)
    scopes = [ScopeLimit(f"team:{team}", "2026-11", 10**12), ScopeLimit(f"key:{team}-k", "2026-11")]
    for i in range(n):
        intent = {"request_id": f"l{i}", "team": team, "ts_ms": t, "status": "in_flight"}
        res = await store.reserve(ReserveRequest(
            team, f"l{i}", t, 600_000, scopes, fixed_nano=1_000 * (i + 1), fixed_tokens=10,
            out_price_pico=price, out_tokens_max=out, out_tokens_min=out, intent=intent))
        assert res.ok, res
    for i in range(settled):
        record = {"request_id": f"l{i}", "team": team, "ts_ms": t, "status": "ok", "cost_nano": 500 + i}
        assert await store.settle(Settlement(team, f"l{i}", 500 + i, 7, record))
    charge = {"request_id": "r0", "team": team, "ts_ms": t, "status": "cache_hit", "cost_nano": 42}
    assert await store.record(team, charge, 42, 1, scopes)
    print(t, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


asyncio.run(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])))
"""


def crash_child(state_dir: Path, team: str) -> int:
    """Run the child to its SIGKILL; returns the timestamp its records carry."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(state_dir), team]
        + [str(n) for n in (N_LEASES, N_SETTLED, OUT_PRICE, OUT_TOKENS)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")
    return int(proc.stdout.decode().strip())


def journal_ops(state_dir: Path) -> list[dict[str, Any]]:
    ops = [jsonutil.loads(line) for line in (state_dir / "journal.jsonl").read_bytes().splitlines()]
    return [op for op in ops if op["op"] != "epoch"]


def scopes(team: str) -> list[ScopeLimit]:
    return [ScopeLimit(f"team:{team}", "2026-11", 10**12), ScopeLimit(f"key:{team}-k", "2026-11")]


def reserved_nano(i: int) -> int:
    return 1_000 * (i + 1) + OUT_TOKENS * OUT_PRICE // 1000


async def reopen(state_dir: Path, team: str, t: int) -> tuple[list[ScopeUsage], list[dict[str, Any]]]:
    store = MemoryStore(state_dir)
    await store.start()
    try:
        got = await store.scope_usage(team, scopes(team))
        rows = await store.ledger(team, t, t + 1)
    finally:
        await store.close()
    return [got[s.counter] for s in scopes(team)], rows


def expected_usage(settled: range, unsettled: range) -> ScopeUsage:
    spent = sum(500 + i for i in settled) + sum(reserved_nano(i) for i in unsettled) + 42
    tokens = 7 * len(settled) + (10 + OUT_TOKENS) * len(unsettled) + 1
    return ScopeUsage(spent, tokens, 0, 0, 0, N_LEASES)


def check_ledger(rows: list[dict[str, Any]], settled: range, unsettled: range) -> None:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    assert sorted(by_id) == sorted([f"l{i}" for i in range(N_LEASES)] + ["r0"])
    assert all(len(found) == 1 for found in by_id.values()), "one ledger record per request"
    for i in settled:
        assert by_id[f"l{i}"][0]["status"] == "ok"
        assert by_id[f"l{i}"][0]["cost_nano"] == 500 + i
    for i in unsettled:
        row = by_id[f"l{i}"][0]
        assert (row["status"], row["estimated"], row["cost_nano"]) == ("expired", True, reserved_nano(i))
    assert by_id["r0"][0]["cost_nano"] == 42


async def test_kill9_loses_no_spend_and_restarts_idempotently(tmp_path: Path) -> None:
    team = f"t-{uuid.uuid4().hex[:8]}"
    t = crash_child(tmp_path, team)
    assert len(journal_ops(tmp_path)) == N_LEASES + N_SETTLED + 1, (
        "every operation journaled before it returned"
    )

    settled, unsettled = range(N_SETTLED), range(N_SETTLED, N_LEASES)
    usage, rows = await reopen(tmp_path, team, t)
    assert usage == [expected_usage(settled, unsettled)] * 2
    check_ledger(rows, settled, unsettled)
    assert journal_ops(tmp_path) == [], "compacted into the snapshot"

    usage2, rows2 = await reopen(tmp_path, team, t)
    assert usage2 == usage, "a second restart counts nothing twice"
    assert sorted(rows2, key=lambda r: r["request_id"]) == sorted(rows, key=lambda r: r["request_id"])


async def test_torn_last_journal_line_is_tolerated(tmp_path: Path) -> None:
    team = f"t-{uuid.uuid4().hex[:8]}"
    t = crash_child(tmp_path, team)
    # The crash cut the settle of lease l2 mid-write: that request was in flight, so it is expired.
    torn = jsonutil.dumps({"op": "settle", "lease_id": f"l{N_SETTLED}", "cost_nano": 1, "tokens": 1})
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(journal.read_bytes() + torn[: len(torn) // 2])

    settled, unsettled = range(N_SETTLED), range(N_SETTLED, N_LEASES)
    usage, rows = await reopen(tmp_path, team, t)
    assert usage == [expected_usage(settled, unsettled)] * 2
    check_ledger(rows, settled, unsettled)
    assert (await reopen(tmp_path, team, t))[0] == usage


async def test_settle_after_restart_is_a_no_op(tmp_path: Path) -> None:
    """A lease that belonged to the dead process cannot be settled by the new one: no double charge."""
    team = f"t-{uuid.uuid4().hex[:8]}"
    t = crash_child(tmp_path, team)
    store = MemoryStore(tmp_path)
    await store.start()
    try:
        rec = {"request_id": f"l{N_LEASES - 1}", "team": team, "ts_ms": t}
        assert not await store.settle(Settlement(team, f"l{N_LEASES - 1}", 1, 1, rec))
        got = await store.scope_usage(team, scopes(team))
    finally:
        await store.close()
    assert got[scopes(team)[0].counter] == expected_usage(range(N_SETTLED), range(N_SETTLED, N_LEASES))


async def test_crash_between_snapshot_and_journal_unlink_counts_nothing_twice(tmp_path: Path) -> None:
    """Start-up compacts the journal into the snapshot, then deletes the journal. A crash between
    the two leaves a journal the snapshot already contains: it must not be replayed again."""
    team = f"t-{uuid.uuid4().hex[:8]}"
    t = crash_child(tmp_path, team)
    absorbed = (tmp_path / "journal.jsonl").read_bytes()
    usage, rows = await reopen(tmp_path, team, t)
    (tmp_path / "journal.jsonl").write_bytes(absorbed)  # as if the unlink never happened

    usage2, rows2 = await reopen(tmp_path, team, t)
    assert usage2 == usage
    assert len(rows2) == len(rows) == N_LEASES + 1
