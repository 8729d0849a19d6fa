"""Exact-match response cache, isolated per team, with streaming replay and stampede protection.

Key: sha256 over the canonical (sorted-key orjson) form of every request field that can change
the output, plus the namespace (the team, or an explicit shared group), the client's wire
format, the operation and the *logical model that will serve*. Left out because they cannot
change the output: ``model`` (replaced by the serving model), ``stream``, ``stream_options``,
``user``, ``metadata``, ``store``, ``service_tier``, ``parallel_tool_calls`` is kept (it changes
output), request ids travel in headers and are never part of the body.

Cacheability under ``auto``: the output must be reproducible enough to reuse: ``temperature``
is 0 or a ``seed`` is set, ``n`` is absent or 1, and embeddings (deterministic) always qualify.
``always`` caches every request except ``n`` > 1. ``off`` never caches. A client steers it with
``Cache-Control: no-store`` (bypass entirely), ``no-cache`` (skip the read, refresh the entry) and
``x-gateway-cache-ttl: SECONDS``.

Stampede protection: identical concurrent misses in one process wait for the first one
(an ``asyncio.Future`` per key). Across replicas a short store lock (SET NX PX) makes the others
poll the entry. Either way a waiter gives up after ``lock_wait_ms`` and goes upstream itself: a
bounded wait traded for a possible duplicate upstream call when the leader is slow or dies (a
leader that vanishes without finishing must never hold its followers forever). ``0`` disables
the waiting altogether. Only the process that took a lock deletes it.

Failures: any store error is counted and treated as a miss; the cache never fails a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import jsonutil
from gateway.cache_codec import CacheEntry, decode_entry, encode_entry
from gateway.config.model import CacheConfig, CacheSettings
from gateway.config.runtime import CachePolicy
from gateway.observability.metrics import Metrics
from gateway.store.base import CacheProbe, CacheWrite, Store, StoreError

log = logging.getLogger("gateway.cache")

NON_OUTPUT_FIELDS = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
# Sampling parameters where JSON's 0 and 0.0 (or 1 and 1.0) mean the same thing to every provider: the
# key takes the integral float as an int, so `temperature: 0.0` and `temperature: 0` share one entry.
_NUMERIC_FIELDS = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty")
_EXACT = float(2**53)
_LOCK_POLL_S = 0.02


@dataclass(slots=True)
class CacheDecision:
    read: bool
    write: bool
    ttl_s: int
    namespace: str
    reason: str  # why it bypasses, for logs


def decide(
    policy: CachePolicy,
    override: CacheSettings | None,
    body: dict[str, Any],
    operation: str,
    headers: Mapping[str, str],
    max_ttl_s: int = 30 * 86400,
) -> CacheDecision:
    mode = (override.mode if override and override.mode else None) or policy.mode
    ttl = (override.ttl_s if override and override.ttl_s else None) or policy.ttl_s
    namespace = f"group:{override.group}" if override and override.group else policy.namespace
    control = headers.get("cache-control", "").lower()
    if mode == "off":
        return CacheDecision(False, False, ttl, namespace, "off")
    if "no-store" in control:
        return CacheDecision(False, False, ttl, namespace, "no-store")
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return CacheDecision(False, False, ttl, namespace, "n>1")
    if (
        mode == "auto"
        and operation != "embeddings"
        and body.get("temperature") != 0
        and body.get("seed") is None
    ):
        return CacheDecision(False, False, ttl, namespace, "nondeterministic")
    raw_ttl = headers.get("x-gateway-cache-ttl")
    if raw_ttl and raw_ttl.strip().isdigit():
        ttl = max(1, min(int(raw_ttl), max_ttl_s))
    return CacheDecision("no-cache" not in control, True, ttl, namespace, "")


def cache_key(
    namespace: str,
    inbound: str,
    operation: str,
    model: str,
    body: dict[str, Any],
    vary: dict[str, str] | None = None,
) -> str:
    """``vary``: the client headers forwarded upstream (they can change the answer, e.g. anthropic-beta)."""
    relevant = {k: v for k, v in body.items() if k not in NON_OUTPUT_FIELDS}
    for name in _NUMERIC_FIELDS:
        value = relevant.get(name)
        if type(value) is float and value.is_integer() and -_EXACT <= value <= _EXACT:
            relevant[name] = int(value)  # bounded: orjson refuses ints beyond 64 bits
    material = jsonutil.dumps_sorted([namespace, inbound, operation, model, relevant, vary or {}])
    return hashlib.sha256(material).hexdigest()


class ResponseCache:
    def __init__(self, store: Store, cfg: CacheConfig, metrics: Metrics) -> None:
        self.store = store
        self.cfg = cfg
        self.metrics = metrics
        self._inflight: dict[str, asyncio.Future[CacheEntry | None]] = {}
        self._locked: set[str] = set()  # keys whose store lock this process took (and so may delete)
        self._writes: list[CacheWrite] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def slot(namespace: str) -> str:
        """A team's entries live in the team's own Redis Cluster slot, so one script can probe the cache
        and reserve the budget together; a shared group's entries live in the group's slot."""
        return namespace.removeprefix("team:")

    def probe(self, namespace: str, key: str, read: bool, owner: str = "") -> CacheProbe:
        lock_ms = self.cfg.lock_wait_ms * 2 if read and self.cfg.lock_wait_ms > 0 else 0
        return CacheProbe(
            slot=self.slot(namespace), key=key, read=read, lock_ms=lock_ms, namespace=namespace, owner=owner
        )

    def owns(self, key: str) -> None:
        """This process took the key's fill lock (through an admission): it may release it."""
        self._locked.add(key)

    def decode(self, raw: bytes) -> CacheEntry | None:
        try:
            return decode_entry(raw)
        except ValueError:
            self.metrics.cache_errors.labels("decode").inc()
            return None

    def queue_put(self, namespace: str, key: str, entry: CacheEntry, ttl_s: int) -> None:
        """Off the response path: queued, then written with other entries in one round trip. The fill
        lock (if this process holds it) goes in the same batch, after the entry."""
        data = encode_entry(entry, self.cfg.compress_min_bytes)
        unlock = key in self._locked
        self._locked.discard(key)
        if len(data) > self.cfg.max_entry_bytes:
            if unlock:
                self._writes.append((self.slot(namespace), key, b"", 0, True))
        else:
            self._writes.append((self.slot(namespace), key, data, ttl_s, unlock))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._flush(), name="cache-writer")

    async def _flush(self) -> None:
        while self._writes:
            batch, self._writes = self._writes, []
            try:
                await self.store.cache_set_many(batch)
            except StoreError as exc:  # the cache fails open: a lost write is a later miss
                self.metrics.cache_errors.labels("set").inc()
                log.warning("cache write failed: %s", exc)

    async def drain(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def get(self, namespace: str, key: str) -> CacheEntry | None:
        try:
            raw = await self.store.cache_get(self.slot(namespace), key)
        except StoreError as exc:
            self.metrics.cache_errors.labels("get").inc()
            log.warning("cache read failed (serving from upstream): %s", exc)
            return None
        return None if raw is None else self.decode(raw)

    # ------------------------------------------------------------------ stampede protection

    def follower_of(self, key: str) -> asyncio.Future[CacheEntry | None] | None:
        """If an identical miss is already in flight in this process, the future to wait on."""
        return self._inflight.get(key)

    async def follow(self, leader: asyncio.Future[CacheEntry | None]) -> CacheEntry | None:
        """The in-process leader's entry, or None if it failed or took longer than ``lock_wait_ms``."""
        try:  # shield: a waiter giving up must not cancel the future its peers are waiting on
            return await asyncio.wait_for(asyncio.shield(leader), self.cfg.lock_wait_ms / 1000)
        except TimeoutError:
            return None

    def lead(self, key: str) -> None:
        loop = self._loop
        if loop is None:  # kept: get_running_loop() is a getpid() syscall each call on CPython 3.11
            loop = self._loop = asyncio.get_running_loop()
        self._inflight[key] = loop.create_future()

    def finish(self, key: str, entry: CacheEntry | None) -> None:
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(entry)

    async def wait_for_entry(self, namespace: str, key: str) -> CacheEntry | None:
        """Cross-replica: another replica holds the fill lock; poll for its entry up to ``lock_wait_ms``."""
        deadline = time.monotonic() + self.cfg.lock_wait_ms / 1000
        while time.monotonic() < deadline:
            await asyncio.sleep(_LOCK_POLL_S)
            entry = await self.get(namespace, key)
            if entry is not None:
                return entry
        return None

    async def release(self, namespace: str, key: str) -> None:
        if key not in self._locked:
            return  # another replica's lock (we only polled it): it is not ours to delete
        self._locked.discard(key)
        try:
            await self.store.cache_unlock(self.slot(namespace), key)
        except StoreError:
            self.metrics.cache_errors.labels("unlock").inc()
