"""The store interface: everything the gateway keeps outside one request.

Two backends implement it with identical semantics: ``memory`` (embedded, one process,
durable journal on disk) and ``redis`` (shared by replicas; one Lua script per operation).
All of a team's keys share the Redis Cluster hash tag ``{team}``, so every per-team
operation is one script on one node.

Budget semantics (both backends; see README "Budgets"):
- ``reserve`` atomically checks every scope (team, key) and the rate limits, then reserves the
  request's upper-bound cost and tokens as a *lease*. If the client gave no ``max_tokens`` the
  reservation is *flexible*: the output part shrinks to what the tightest scope can still pay for.
- ``settle`` replaces a lease by the actual cost and tokens and appends the ledger record, once.
- A lease that is not settled before it expires (its process died) is charged in full and
  written to the ledger as an ``estimated`` record: an unsettled reservation counts as spent,
  never as free.
- Budget counters are keyed by period id (``2026-11``, ``2026-W48``, ``2026-11-28``, ``total``),
  so a rollover is just a new key: atomic, and the closed period stays queryable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

UNLIMITED = -1


@dataclass(slots=True, frozen=True)
class ScopeLimit:
    """One budget scope for one period, e.g. ``team:demo`` in period ``2026-11``."""

    scope: str  # "team:<name>" or "key:<id>"
    period: str
    usd_limit_nano: int = UNLIMITED
    token_limit: int = UNLIMITED

    @property
    def counter(self) -> str:
        return f"{self.scope}|{self.period}"


@dataclass(slots=True, frozen=True)
class RateLimit:
    """A fixed one-minute window counter (rpm counts requests, tpm counts reserved tokens)."""

    kind: str  # "rpm" | "tpm"
    scope: str
    limit: int
    window: int  # epoch minute


@dataclass(slots=True)
class ReserveRequest:
    team: str
    lease_id: str
    now_ms: int
    lease_ttl_ms: int
    scopes: list[ScopeLimit]
    fixed_nano: int  # upper bound of the prompt's cost
    fixed_tokens: int  # upper bound of the prompt's tokens
    out_price_pico: int  # upper-bound price of one output token
    out_tokens_max: int  # requested max_tokens, or the model's max output
    out_tokens_min: int  # == out_tokens_max unless the reservation is flexible
    rate_limits: list[RateLimit] = field(default_factory=list)
    intent: dict[str, Any] = field(default_factory=dict)  # ledger record skeleton (write-ahead)
    # False for an attempt the caller may follow with another (a tighter prompt count, a downgrade):
    # only a request's final attempt counts as a denial.
    count_denial: bool = True


@dataclass(slots=True)
class ReserveResult:
    ok: bool
    reason: str = ""  # "" | "usd" | "tokens" | "rpm" | "tpm"
    scope: str = ""  # the scope that denied
    out_tokens: int = 0  # granted output tokens
    reserved_nano: int = 0
    reserved_tokens: int = 0
    remaining_nano: int = UNLIMITED  # tightest scope after this reservation
    remaining_tokens: int = UNLIMITED
    rate_remaining: dict[str, int] = field(default_factory=dict)  # "rpm:team:x" -> remaining


@dataclass(slots=True)
class CacheProbe:
    """The response-cache half of an admission: read the entry, and take its fill lock on a miss."""

    slot: str  # the cache namespace's slot: the team's own name, or "group:<name>" for a shared group
    key: str
    read: bool
    lock_ms: int  # 0: take no lock
    locked: bool = False  # set by ``admit``: this request took the fill lock (and must release it)
    namespace: str = ""  # the cache namespace the slot belongs to (for releasing the lock)
    owner: str = ""  # the lock's value (the request id): who may release it when unsure it holds it


@dataclass(slots=True)
class Admission:
    entry: bytes | None = None  # a cache hit: nothing was reserved
    result: ReserveResult | None = None  # the reservation's outcome (None: nothing asked)


# One queued cache write: (slot, key, value, ttl_s, release the fill lock too); an empty value only unlocks.
CacheWrite = tuple[str, str, bytes, int, bool]


@dataclass(slots=True)
class Settlement:
    team: str
    lease_id: str
    cost_nano: int
    tokens: int
    record: dict[str, Any]  # the complete ledger record
    now_ms: int = 0
    # The release of a reservation whose answer never came back: finding no lease is expected (the
    # script never ran, or it denied), not a lease that already expired into spend.
    unanswered: bool = False


@dataclass(slots=True)
class ScopeUsage:
    spent_nano: int = 0
    spent_tokens: int = 0
    reserved_nano: int = 0
    reserved_tokens: int = 0
    denials: int = 0
    requests: int = 0


@dataclass(slots=True)
class KeyRecord:
    key_id: str
    team: str
    sha256: str
    name: str = ""
    created_ms: int = 0
    source: str = "admin"  # "admin" | "config"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "team": self.team,
            "name": self.name,
            "created_ms": self.created_ms,
            "source": self.source,
        }


# A lease-less charge: (team, ledger record, cost_nano, tokens, scopes charged).
Charge = tuple[str, dict[str, Any], int, int, list[ScopeLimit]]


async def admit_in_steps(store: Store, req: ReserveRequest | None, probe: CacheProbe | None) -> Admission:
    """``admit`` as separate calls: the embedded store's way, and Redis's for a shared cache group
    (its entries live in another cluster slot than the team's budget)."""
    if probe is not None:
        if probe.read:
            entry = await store.cache_get(probe.slot, probe.key)
            if entry is not None:
                return Admission(entry=entry)
        probe.locked = probe.lock_ms > 0 and await store.cache_lock(probe.slot, probe.key, probe.lock_ms)
    return Admission(result=await store.reserve(req) if req is not None else None)


class StoreError(Exception):
    """The backing store could not answer (connection, timeout). Never raised for a denial."""


class StoreUncertain(StoreError):
    """The command was sent but no answer came: it may have run (a reservation may exist)."""


class Store(Protocol):
    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    # virtual keys (config keys live in memory; these are the ones created through the admin API)
    async def get_key(self, sha256: str) -> KeyRecord | None: ...
    async def create_key(self, record: KeyRecord) -> None: ...
    async def revoke_key(self, key_id: str) -> bool: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def revocations(self) -> tuple[int, frozenset[str]]: ...

    # budgets
    async def reserve(self, req: ReserveRequest) -> ReserveResult: ...
    async def admit(self, team: str, req: ReserveRequest | None, probe: CacheProbe | None) -> Admission:
        """Cache lookup (+ fill lock on a miss) and reservation together: one round trip on Redis."""
        ...

    async def settle(self, settlement: Settlement) -> bool: ...
    async def record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> bool: ...
    async def settle_many(self, settlements: list[Settlement]) -> list[bool | StoreError]:
        """One answer per item: applied (True), a no-op (False), or that item's own error, which a retry
        cannot fix (a connection failure raises StoreError for the whole batch instead)."""
        ...

    async def record_many(self, charges: list[Charge]) -> list[bool | StoreError]: ...
    async def expire_leases(self, team: str, now_ms: int, limit: int = 100) -> int: ...
    async def renew_lease(self, team: str, lease_id: str, expires_ms: int) -> bool:
        """Keep a live lease (a long stream) from expiring into spend; False if it is gone."""
        ...

    async def scope_usage(self, team: str, scopes: list[ScopeLimit]) -> dict[str, ScopeUsage]: ...
    async def teams(self) -> list[str]: ...

    # ledger
    async def ledger(self, team: str, since_ms: int, until_ms: int) -> list[dict[str, Any]]: ...

    # response cache (values are opaque bytes)
    async def cache_get(self, team: str, key: str) -> bytes | None: ...
    async def cache_set(self, team: str, key: str, value: bytes, ttl_s: int) -> None: ...
    async def cache_lock(self, team: str, key: str, ttl_ms: int) -> bool: ...
    async def cache_unlock(self, team: str, key: str) -> None: ...
    async def cache_set_many(self, writes: list[CacheWrite]) -> None: ...
