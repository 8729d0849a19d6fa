"""Virtual keys: ``sha256(key)`` -> principal (key id + team). Plaintext keys are never stored.

Keys declared in YAML are a dict lookup. Keys created through the admin API live in the store
and are cached in-process (positive and negative answers, short TTL). Revocation is a
versioned set in the store, polled once a second by every process, so a revoked key stops
working everywhere within about a second without a store round trip per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.config.runtime import Config, Principal
from gateway.errors import AuthenticationFailed, StoreUnavailable
from gateway.store.base import KeyRecord, Store, StoreError

log = logging.getLogger("gateway.auth")

_CACHE_TTL_S = 30.0
_NEGATIVE_TTL_S = 2.0
_CACHE_SIZE = 10_000
REVOCATION_POLL_S = 1.0


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "sk-gw-" + secrets.token_urlsafe(32)


class Authenticator:
    def __init__(self, store: Store, config: Callable[[], Config]) -> None:
        self.store = store
        self.config = config
        self._cache: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._revoked: frozenset[str] = frozenset()
        self._digests: dict[str, str] = {}  # raw key -> sha256 (process memory only, never persisted)
        self._principals: dict[str, Principal] = {}
        self._revoked_version = -1
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh_revocations()
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="auth-revocations")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(REVOCATION_POLL_S)
            await self.refresh_revocations()

    async def refresh_revocations(self) -> None:
        try:
            version, ids = await self.store.revocations()
        except StoreError as exc:
            log.warning("revocation poll failed: %s", exc)
            return
        if version != self._revoked_version:
            self._revoked, self._revoked_version = ids, version

    def revoke_locally(self, key_id: str) -> None:
        """The process that served DELETE /admin/keys applies it at once."""
        self._revoked = self._revoked | {key_id}

    async def authenticate(self, raw_key: str | None) -> Principal:
        if not raw_key:
            raise AuthenticationFailed("missing API key: send `Authorization: Bearer <virtual key>`")
        digest = self._digests.get(raw_key)
        if digest is None:  # sha256 once per distinct key, not once per request
            digest = key_digest(raw_key)
            if len(self._digests) >= _CACHE_SIZE:
                self._digests.clear()
            self._digests[raw_key] = digest
        cfg = self.config()
        principal = cfg.keys.get(digest)
        if principal is None:
            principal = await self._dynamic_principal(digest, cfg)
        if principal.key_id in self._revoked:
            raise AuthenticationFailed("this API key has been revoked", code="key_revoked")
        return principal

    async def _dynamic_principal(self, digest: str, cfg: Config) -> Principal:
        """A key created through the admin API; the principal object is reused while the config is."""
        record = await self._lookup(digest)
        team = cfg.teams.get(record.team) if record else None
        if record is None or team is None:
            raise AuthenticationFailed("invalid API key")
        known = self._principals.get(digest)
        if known is not None and known.team is team and known.key_id == record.key_id:
            return known
        principal = Principal(key_id=record.key_id, team=team, name=record.name)
        if len(self._principals) >= _CACHE_SIZE:
            self._principals.clear()
        self._principals[digest] = principal
        return principal

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            record = await self.store.get_key(digest)
        except StoreError as exc:
            if hit is not None:  # serve the stale answer rather than fail every dynamic key
                return hit[1]
            raise StoreUnavailable("key store unavailable") from exc
        self._cache[digest] = (now + (_CACHE_TTL_S if record else _NEGATIVE_TTL_S), record)
        self._cache.move_to_end(digest)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return record
