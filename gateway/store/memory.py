"""The embedded store: one process, state in memory, spend durable in a journal on local disk.

Durability: every state change (reserve, settle, record, expire, key create/revoke) is one
JSON line appended with a single ``os.write`` to an ``O_APPEND`` file before the operation
returns. That lands in the page cache in microseconds, so it survives ``kill -9`` (the kernel
still owns the data); an fsync every second bounds what a power loss can take. On start the
journal is replayed; leases still open then belong to a dead process and are expired into
spend (estimated), exactly as Redis does with an expired lease. The journal is then compacted
into a snapshot. The ledger lives in daily files ``ledger-YYYY-MM-DD.jsonl`` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gateway import jsonutil
from gateway.store.base import (
    Admission,
    CacheProbe,
    CacheWrite,
    Charge,
    KeyRecord,
    ReserveRequest,
    ReserveResult,
    ScopeLimit,
    ScopeUsage,
    Settlement,
    StoreError,
    admit_in_steps,
)
from gateway.store.book import BudgetBook, Lease, expired_record
from gateway.store.rollup import ledger_day

_SEEN_TTL_MS = 7 * 86_400_000
_NEVER = 1 << 62


class MemoryStore:
    name = "memory"

    def __init__(self, state_dir: str | Path, cache_max_bytes: int = 256 * 1024 * 1024) -> None:
        self.dir = Path(state_dir)
        self.book = BudgetBook()
        self.keys: dict[str, KeyRecord] = {}  # sha256 -> record
        self.revoked: set[str] = set()
        self.revoked_version = 0
        self.teams_seen: set[str] = set()
        self.seen_ms: dict[str, int] = {}
        self._cache: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_max = cache_max_bytes
        self._locks: dict[str, float] = {}
        self._journal_fd = -1
        self._ledger_fd = -1
        self._ledger_day = ""
        self._ledger_day_num = -1
        self._next_expiry_ms = 0
        self._epoch = ""  # the journal generation the snapshot expects next (see _load)
        self._fsync_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load()
        self._compact()
        self._journal_fd = os.open(self.dir / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log({"op": "epoch", "id": self._epoch})
        loop = asyncio.get_running_loop()
        self._fsync_task = loop.create_task(self._fsync_loop(), name="memory-store-fsync")

    async def close(self) -> None:
        if self._fsync_task is not None:
            self._fsync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_task
        for fd in (self._journal_fd, self._ledger_fd):
            if fd >= 0:
                os.fsync(fd)
                os.close(fd)
        self._journal_fd = self._ledger_fd = -1
        self._ledger_day, self._ledger_day_num = "", -1

    async def ping(self) -> bool:
        return self._journal_fd >= 0

    async def _fsync_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for fd in (self._journal_fd, self._ledger_fd):
                if fd >= 0:
                    await asyncio.to_thread(os.fsync, fd)

    # ------------------------------------------------------------------ journal

    def _log(self, op: dict[str, Any]) -> None:
        os.write(self._journal_fd, jsonutil.dumps(op) + b"\n")

    def _append_ledger(self, record: dict[str, Any]) -> None:
        ts_ms = int(record.get("ts_ms", 0))
        if ts_ms // 86_400_000 == self._ledger_day_num:
            os.write(self._ledger_fd, jsonutil.dumps(record) + b"\n")
            return
        day = ledger_day(ts_ms)
        self._ledger_day_num = ts_ms // 86_400_000
        if day != self._ledger_day:
            if self._ledger_fd >= 0:
                os.close(self._ledger_fd)
            self._ledger_fd = os.open(
                self.dir / f"ledger-{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
            self._ledger_day = day
        os.write(self._ledger_fd, jsonutil.dumps(record) + b"\n")

    def _load(self) -> None:
        snapshot = self.dir / "snapshot.json"
        if snapshot.exists():
            self._restore(jsonutil.loads(snapshot.read_bytes()))
        journal = self.dir / "journal.jsonl"
        if journal.exists():
            for n, line in enumerate(journal.read_bytes().splitlines()):
                try:
                    op = jsonutil.loads(line)
                except jsonutil.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write: that request was in flight
                if n == 0 and op["op"] == "epoch" and op["id"] != self._epoch:
                    break  # a crash between snapshot and unlink: the snapshot holds this journal already
                self._replay(op)
        now = int(time.time() * 1000)
        for lease in list(self.book.leases.values()):
            self._expire_now(lease.lease_id, now)  # its process is gone

    def _replay(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "reserve":
            self.book.leases[op["lease_id"]] = Lease(**op["lease"])
            for counter in op["lease"]["counters"]:
                u = self.book._usage(counter)
                u.reserved_nano += op["lease"]["cost_nano"]
                u.reserved_tokens += op["lease"]["tokens"]
                u.requests += 1
        elif kind == "settle":
            self.book.settle(
                Settlement(
                    team="",
                    lease_id=op["lease_id"],
                    cost_nano=op["cost_nano"],
                    tokens=op["tokens"],
                    record={},
                )
            )
        elif kind == "expire":
            self.book.expire(op["lease_id"])
        elif kind == "record":
            scopes = [ScopeLimit(scope=c.split("|")[0], period=c.split("|")[1]) for c in op["counters"]]
            self.book.record(op["request_id"], op["cost_nano"], op["tokens"], scopes)
            self.seen_ms[op["request_id"]] = op.get("ts_ms", 0)
        elif kind == "deny":
            self.book._usage(op["counter"]).denials += 1
        elif kind == "key":
            rec = KeyRecord(**op["key"])
            self.keys[rec.sha256] = rec
        elif kind == "revoke":
            self.revoked.add(op["key_id"])
            self.revoked_version += 1
        if op.get("team"):
            self.teams_seen.add(op["team"])

    def _restore(self, snap: dict[str, Any]) -> None:
        for counter, fields in snap.get("usage", {}).items():
            self.book.usage[counter] = ScopeUsage(**fields)
        for rec in snap.get("keys", []):
            key = KeyRecord(**rec)
            self.keys[key.sha256] = key
        self.revoked = set(snap.get("revoked", []))
        self.revoked_version = int(snap.get("revoked_version", 0))
        self.teams_seen = set(snap.get("teams", []))
        self.seen_ms = dict(snap.get("seen", {}))
        self.book.seen = set(self.seen_ms)
        self._epoch = str(snap.get("epoch", ""))

    def _compact(self) -> None:
        """Write the replayed state as a snapshot and start an empty journal (atomic rename)."""
        now = int(time.time() * 1000)
        self.seen_ms = {rid: ts for rid, ts in self.seen_ms.items() if now - ts < _SEEN_TTL_MS}
        self.book.seen = set(self.seen_ms)
        self._epoch = secrets.token_hex(8)  # the next journal starts with it; an older one is absorbed
        snap = {
            "usage": {
                c: {
                    "spent_nano": u.spent_nano,
                    "spent_tokens": u.spent_tokens,
                    "reserved_nano": 0,
                    "reserved_tokens": 0,
                    "denials": u.denials,
                    "requests": u.requests,
                }
                for c, u in self.book.usage.items()
            },
            "keys": [_key_dict(k) for k in self.keys.values()],
            "revoked": sorted(self.revoked),
            "revoked_version": self.revoked_version,
            "teams": sorted(self.teams_seen),
            "seen": self.seen_ms,
            "epoch": self._epoch,
        }
        tmp = self.dir / "snapshot.json.tmp"
        with open(tmp, "wb") as fh:
            fh.write(jsonutil.dumps(snap))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "snapshot.json")
        (self.dir / "journal.jsonl").unlink(missing_ok=True)

    # ------------------------------------------------------------------ keys

    async def get_key(self, sha256: str) -> KeyRecord | None:
        return self.keys.get(sha256)

    async def create_key(self, record: KeyRecord) -> None:
        self.keys[record.sha256] = record
        self._log({"op": "key", "key": _key_dict(record)})

    async def revoke_key(self, key_id: str) -> bool:
        known = any(k.key_id == key_id for k in self.keys.values())
        self.revoked.add(key_id)
        self.revoked_version += 1
        self._log({"op": "revoke", "key_id": key_id})
        return known

    async def list_keys(self) -> list[KeyRecord]:
        return [k for k in self.keys.values() if k.key_id not in self.revoked]

    async def revocations(self) -> tuple[int, frozenset[str]]:
        return self.revoked_version, frozenset(self.revoked)

    # ------------------------------------------------------------------ budgets

    async def reserve(self, req: ReserveRequest) -> ReserveResult:
        if req.now_ms >= self._next_expiry_ms:  # only scan the leases when one can be due
            await self.expire_leases(req.team, req.now_ms, limit=10)
            self._next_expiry_ms = min((x.expires_ms for x in self.book.leases.values()), default=_NEVER)
        result = self.book.reserve(req)
        if result.ok:
            self._next_expiry_ms = min(self._next_expiry_ms, req.now_ms + req.lease_ttl_ms)
        self.teams_seen.add(req.team)
        if result.ok:
            lease = self.book.leases[req.lease_id]
            self._log(
                {"op": "reserve", "lease_id": req.lease_id, "team": req.team, "lease": _lease_dict(lease)}
            )
        elif result.reason in ("usd", "tokens") and req.count_denial:
            for scope in req.scopes:
                if scope.scope == result.scope:
                    self._log({"op": "deny", "counter": scope.counter})
        return result

    async def admit(self, team: str, req: ReserveRequest | None, probe: CacheProbe | None) -> Admission:
        return await admit_in_steps(self, req, probe)  # in one process every step is atomic anyway

    async def settle(self, settlement: Settlement) -> bool:
        if not self.book.settle(settlement):
            return False
        # Ledger line first: a crash between the two writes then leaves a duplicate (the replay also
        # expires the lease into an estimated record), which reports deduplicate, never a lost record.
        self._append_ledger(settlement.record)
        self._log(
            {
                "op": "settle",
                "lease_id": settlement.lease_id,
                "cost_nano": settlement.cost_nano,
                "tokens": settlement.tokens,
            }
        )
        return True

    async def settle_many(self, settlements: list[Settlement]) -> list[bool | StoreError]:
        return [await self.settle(s) for s in settlements]

    async def record_many(self, charges: list[Charge]) -> list[bool | StoreError]:
        return [await self.record(*charge) for charge in charges]

    async def record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> bool:
        request_id = str(record["request_id"])
        if not self.book.record(request_id, cost_nano, tokens, scopes):
            return False
        ts = int(record.get("ts_ms", 0))
        self.seen_ms[request_id] = ts
        self.teams_seen.add(team)
        self._append_ledger(record)  # before the journal line, as in settle
        self._log(
            {
                "op": "record",
                "request_id": request_id,
                "team": team,
                "cost_nano": cost_nano,
                "tokens": tokens,
                "counters": [s.counter for s in scopes],
                "ts_ms": ts,
            }
        )
        return True

    async def expire_leases(self, team: str, now_ms: int, limit: int = 100) -> int:
        due = self.book.due_leases(team, now_ms, limit)
        for lease in due:
            self._expire_now(lease.lease_id, now_ms)
        return len(due)

    async def renew_lease(self, team: str, lease_id: str, expires_ms: int) -> bool:
        # Not journaled: a restart expires every open lease anyway (its process is gone).
        return self.book.renew(lease_id, expires_ms)

    def _expire_now(self, lease_id: str, now_ms: int) -> None:
        lease = self.book.expire(lease_id)
        if lease is None:
            return
        if self._journal_fd >= 0:
            self._log({"op": "expire", "lease_id": lease_id})
            self._append_ledger(expired_record(lease, now_ms))
        else:  # replaying at start: the journal is compacted next, the ledger line must land now
            self._pending_ledger(expired_record(lease, now_ms))

    def _pending_ledger(self, record: dict[str, Any]) -> None:
        day = ledger_day(int(record.get("ts_ms", 0)))
        with open(self.dir / f"ledger-{day}.jsonl", "ab") as fh:
            fh.write(jsonutil.dumps(record) + b"\n")

    async def scope_usage(self, team: str, scopes: list[ScopeLimit]) -> dict[str, ScopeUsage]:
        out = {}
        for s in scopes:
            u = self.book.usage.get(s.counter) or ScopeUsage()
            out[s.counter] = ScopeUsage(
                u.spent_nano, u.spent_tokens, u.reserved_nano, u.reserved_tokens, u.denials, u.requests
            )
        return out

    async def teams(self) -> list[str]:
        return sorted(self.teams_seen)

    # ------------------------------------------------------------------ ledger

    async def ledger(self, team: str, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._read_ledger, team, since_ms, until_ms)

    def read_ledger_files(self, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        """Every team's records, read from the files alone: safe beside a running gateway (no start(),
        so no journal replay, no lease expiry, no compaction). ``gateway report`` uses it."""
        return self._read_ledger(None, since_ms, until_ms)

    def _read_ledger(self, team: str | None, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        out = []
        first, last = ledger_day(since_ms), ledger_day(max(since_ms, until_ms - 1))
        for path in sorted(self.dir.glob("ledger-*.jsonl")):
            day = path.stem.removeprefix("ledger-")
            if day < first or day > last:
                continue
            for line in path.read_bytes().splitlines():
                try:
                    rec = jsonutil.loads(line)
                except jsonutil.JSONDecodeError:
                    continue
                if (team is None or rec.get("team") == team) and since_ms <= rec.get("ts_ms", 0) < until_ms:
                    out.append(rec)
        return out

    # ------------------------------------------------------------------ cache

    async def cache_get(self, team: str, key: str) -> bytes | None:
        full = f"{team}\x00{key}"
        entry = self._cache.get(full)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            self._evict(full)
            return None
        self._cache.move_to_end(full)
        return value

    async def cache_set(self, team: str, key: str, value: bytes, ttl_s: int) -> None:
        full = f"{team}\x00{key}"
        if full in self._cache:
            self._evict(full)
        if len(value) > self._cache_max:
            return
        self._cache[full] = (time.monotonic() + ttl_s, value)
        self._cache_bytes += len(value)
        while self._cache_bytes > self._cache_max:
            self._evict(next(iter(self._cache)))

    def _evict(self, full: str) -> None:
        _, value = self._cache.pop(full)
        self._cache_bytes -= len(value)

    async def cache_set_many(self, writes: list[CacheWrite]) -> None:
        for slot, key, value, ttl_s, unlock in writes:
            if value:  # empty: only release the lock
                await self.cache_set(slot, key, value, ttl_s)
            if unlock:
                await self.cache_unlock(slot, key)

    async def cache_lock(self, team: str, key: str, ttl_ms: int) -> bool:
        full, now = f"{team}\x00{key}", time.monotonic()
        if self._locks.get(full, 0.0) > now:
            return False
        self._locks[full] = now + ttl_ms / 1000
        return True

    async def cache_unlock(self, team: str, key: str) -> None:
        self._locks.pop(f"{team}\x00{key}", None)


def _key_dict(key: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "team": key.team,
        "sha256": key.sha256,
        "name": key.name,
        "created_ms": key.created_ms,
        "source": key.source,
    }


def _lease_dict(lease: Lease) -> dict[str, Any]:
    return {
        "lease_id": lease.lease_id,
        "team": lease.team,
        "counters": lease.counters,
        "cost_nano": lease.cost_nano,
        "tokens": lease.tokens,
        "expires_ms": lease.expires_ms,
        "intent": lease.intent,
        "tpm": lease.tpm,
    }
