"""The production store: Redis, shared by any number of gateway replicas.

Every budget operation is one Lua script (one round trip) over keys that share the team's hash
tag ``{team}``, so it is atomic and works unchanged on Redis Cluster. Connection failures and
timeouts surface as ``StoreError``; the budget layer applies the team's ``on_store_error``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Awaitable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

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
from gateway.store.resp import ReplyError, RespClient, join_command, pack, pack_run
from gateway.store.rollup import hour_bucket, ledger_day

_ROLLUP_TTL_S = 400 * 86400
_HEAD_ARGS = 8  # EVALSHA, sha, key count, four team keys, one more key: see RedisStore._head
_RESERVE_ARGS = 9
_PACKED_CACHE_MAX = 4096
_LEDGER_SLACK_MS = 86_400_000  # expired leases land in the stream up to a lease TTL after ts_ms
# Waiting for a pooled connection: even a hung Redis frees one every socket timeout per pool slot.
_POOL_WAIT_FACTOR = 10


_T = TypeVar("_T")


async def _awaited(reply: Awaitable[_T] | _T) -> _T:
    """redis-py 7's stubs type many asyncio commands as "an awaitable or the value" (shared with the sync
    client); on ``redis.asyncio`` it is always an awaitable. Off the hot path only (admin, gauges, keys)."""
    assert isinstance(reply, Awaitable)
    return await reply


def _lua(name: str) -> str:
    return (resources.files("gateway.store") / "lua" / name).read_text(encoding="utf-8")


class _Script:
    """A Lua script run by EVALSHA, loaded on its first NOSCRIPT (a new node, a SCRIPT FLUSH)."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    def command(self, keys: list[str], args: list[Any]) -> bytes:
        return pack(("EVALSHA", self.sha, len(keys), *keys, *args))


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError | NoScriptError) and str(reply).startswith("NOSCRIPT")


# Delete a fill lock only if it still holds the given owner's id.
_UNLOCK_OWNED = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _script_fault(reply: Any) -> bool:
    """A Lua runtime error in this call's own script run (Redis 7: ``ERR user_script:<line>: ...``):
    the item's data is at fault and a retry fails the same way. Every other error (LOADING, BUSY, OOM,
    READONLY after a failover, CLUSTERDOWN) is the server's state and passes: the batch is retried."""
    return isinstance(reply, ReplyError) and str(reply).startswith("ERR user_script:")


def _truth(answer: Any) -> bool | StoreError:
    return answer if isinstance(answer, StoreError) else bool(answer)


def _k(team: str, suffix: str) -> str:
    return f"gw:{{{team}}}:{suffix}"


@functools.lru_cache(maxsize=4096)  # teams come from the config: a bounded set, built twice per request
def _team_keys(team: str) -> tuple[str, ...]:
    return (_k(team, "budget"), _k(team, "lease_exp"), _k(team, "leases"), _k(team, "ledger"))


class RedisStore:
    name = "redis"

    def __init__(self, url: str, pool_size: int = 64, socket_timeout_s: float = 1.0) -> None:
        self.url = url
        # A blocking pool: a burst wider than the pool queues for a free connection, where the plain
        # pool raises "Too many connections", i.e. a spurious store outage (503 or fail-open). The
        # queue is local, so its wait is not a health signal: the socket timeouts are.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=_POOL_WAIT_FACTOR * socket_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=30,
            decode_responses=False,
        )
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        # The scripts go through the pipelined fast client (one socket, no pool, hiredis parsing).
        self.fast = RespClient(url, socket_timeout_s)
        # Cache writes take a second one: a multi-megabyte entry must never queue the budget
        # reservations of other requests behind it on the same socket.
        self.bulk = RespClient(url, socket_timeout_s)
        common = _lua("common.lua")
        reserve_fn = _lua("reserve_fn.lua")
        self._reserve = _Script(common + reserve_fn + _lua("reserve.lua"))
        self._admit = _Script(common + reserve_fn + _lua("admit.lua"))
        self._settle = _Script(common + _lua("settle.lua"))
        self._record = _Script(common + _lua("record.lua"))
        self._expire = _Script(common + _lua("expire.lua"))
        self._renew = _Script(_lua("renew.lua"))
        self._known_teams: set[str] = set()
        # The parts of the hot path's script calls that are the same on every request of a team (its
        # keys, its limits), packed once: see ``join_command``. Both caches are bounded by the config's
        # teams and keys times the open windows, and cleared wholesale if they ever grow past that.
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._limit_runs: dict[tuple[int, int, bool], tuple[object, object, bytes, int]] = {}

    async def start(self) -> None:
        """Never fails: the gateway must start while Redis is down (the budget layer decides per team)."""

    async def close(self) -> None:
        await self.fast.close()
        await self.bulk.close()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await _awaited(self.client.ping()))
        except (RedisError, OSError):
            return False

    async def _call(self, script: _Script, command: bytes) -> Any:
        return (await self._call_many(script, [command]))[0]

    def _head(self, script: _Script, nkeys: int, team: str, last_key: str) -> bytes:
        """EVALSHA, the script, the key count, the team's four keys and one more (its rate window,
        its rollup hour), packed once per team and window: ``_HEAD_ARGS`` arguments."""
        cache_key = (script.sha, team, last_key)
        head = self._heads.get(cache_key)
        if head is None:
            if len(self._heads) >= _PACKED_CACHE_MAX:  # old windows: dropped wholesale, rebuilt on use
                self._heads.clear()
            head = pack_run(("EVALSHA", script.sha, nkeys, *_team_keys(team), _k(team, last_key)))
            self._heads[cache_key] = head
        return head

    def _limits_run(self, req: ReserveRequest) -> tuple[bytes, int]:
        """The reservation's scopes, rate limits and denial flag in RESP, and their count. The budget
        layer hands every request of a principal the same two lists for a minute: packed once for them
        (held here, so their ids cannot be reused while cached)."""
        scopes, limits = req.scopes, req.rate_limits
        cache_key = (id(scopes), id(limits), req.count_denial)
        hit = self._limit_runs.get(cache_key)
        if hit is not None and hit[0] is scopes and hit[1] is limits:
            return hit[2], hit[3]
        args: list[Any] = [len(scopes)]
        for scope in scopes:
            args += [scope.counter, scope.usd_limit_nano, scope.token_limit]
        args.append(len(limits))
        for rl in limits:
            args += [f"{rl.kind}|{rl.scope}", rl.limit]
        args.append(1 if req.count_denial else 0)
        run = pack_run(tuple(args))
        if len(self._limit_runs) >= _PACKED_CACHE_MAX:
            self._limit_runs.clear()
        self._limit_runs[cache_key] = (scopes, limits, run, len(args))
        return run, len(args)

    # ------------------------------------------------------------------ keys

    async def get_key(self, sha256: str) -> KeyRecord | None:
        try:
            raw = await self.client.get(f"gw:key:{sha256}")
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        return None if raw is None else KeyRecord(**jsonutil.loads(raw))

    async def create_key(self, record: KeyRecord) -> None:
        data = jsonutil.dumps(
            {
                "key_id": record.key_id,
                "team": record.team,
                "sha256": record.sha256,
                "name": record.name,
                "created_ms": record.created_ms,
                "source": record.source,
            }
        )
        try:
            await self.client.set(f"gw:key:{record.sha256}", data)
            await _awaited(self.client.hset("gw:keyids", record.key_id, record.sha256))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def revoke_key(self, key_id: str) -> bool:
        try:
            sha = await _awaited(self.client.hget("gw:keyids", key_id))
            await _awaited(self.client.sadd("gw:revoked", key_id))
            await self.client.incr("gw:revoked:v")
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        return sha is not None

    async def list_keys(self) -> list[KeyRecord]:
        try:
            shas = await _awaited(self.client.hgetall("gw:keyids"))
            revoked = await _awaited(self.client.smembers("gw:revoked"))
            raws = await self.client.mget([f"gw:key:{_s(s)}" for s in shas.values()]) if shas else []
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        keys = [KeyRecord(**jsonutil.loads(r)) for r in raws if r is not None]
        return [k for k in keys if k.key_id.encode() not in revoked]

    async def revocations(self) -> tuple[int, frozenset[str]]:
        try:
            version = int(await self.client.get("gw:revoked:v") or 0)
            ids = await _awaited(self.client.smembers("gw:revoked")) if version else set()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        return version, frozenset(_s(i) for i in ids)

    # ------------------------------------------------------------------ budgets

    async def reserve(self, req: ReserveRequest) -> ReserveResult:
        raw = await self._call(self._reserve, self._reserve_command(req))
        await self._remember_team(req.team)
        return _reserve_result(raw)

    async def admit(self, team: str, req: ReserveRequest | None, probe: CacheProbe | None) -> Admission:
        """One script when the cache entry lives in the team's slot; a shared group's entries live in
        the group's slot (Redis Cluster forbids one script across slots), so those take separate calls."""
        if probe is None or probe.slot != team:
            return await admit_in_steps(self, req, probe)
        lock_key = _k(team, f"cl:{probe.key}")
        # KEYS: the team's four, its rate window, the entry, its lock; ARGV: 4 flags, then reserve.lua's
        cache_run = (_k(team, f"c:{probe.key}"), lock_key, 1 if probe.read else 0, probe.lock_ms)
        owner = probe.owner or "1"
        if req is None:
            head = self._head(self._admit, 7, team, "rate:0")
            command = join_command(_HEAD_ARGS + 6, head, pack_run((*cache_run, 0, owner)))
        else:
            head = self._head(self._admit, 7, team, _rate_key(req))
            limits, count = self._limits_run(req)
            variable = pack_run((*cache_run, 1, owner, *_reserve_args(req)))
            command = join_command(_HEAD_ARGS + 6 + _RESERVE_ARGS + count, head, variable, limits)
        try:
            raw = await self._call(self._admit, command)
        except asyncio.CancelledError:
            # The caller went away with the script in flight: it may have taken the fill lock, and then
            # identical requests would wait lock_wait_ms for an entry nobody is filling. Release it if it
            # is ours, on the same connection, so Redis runs the release after the script.
            if probe.lock_ms > 0 and probe.owner:
                self.fast.send_nowait(("EVAL", _UNLOCK_OWNED, 1, lock_key, probe.owner))
            raise
        if _s(raw[0]) == "hit":
            value = raw[1]
            return Admission(entry=value if isinstance(value, bytes) else str(value).encode())
        probe.locked = int(raw[1]) == 1
        if req is None:
            return Admission()
        await self._remember_team(team)
        return Admission(result=_reserve_result(raw[2:]))

    def _reserve_command(self, req: ReserveRequest) -> bytes:
        """reserve.lua: KEYS the team's four and its rate window; ARGV ``_reserve_args``, then the limits."""
        head = self._head(self._reserve, 5, req.team, _rate_key(req))
        limits, count = self._limits_run(req)
        return join_command(_HEAD_ARGS + _RESERVE_ARGS + count, head, pack_run(_reserve_args(req)), limits)

    async def _remember_team(self, team: str) -> None:
        if team in self._known_teams:
            return
        try:
            await _awaited(self.client.sadd("gw:teams", team))
            self._known_teams.add(team)
        except (RedisError, OSError):
            pass  # only the report's team list; retried on the next reserve

    def _settle_command(self, settlement: Settlement) -> bytes:
        """settle.lua: KEYS the team's four and the record's rollup hour."""
        rec = settlement.record
        head = self._head(self._settle, 5, settlement.team, f"roll:{hour_bucket(rec['ts_ms'])}")
        args = (
            settlement.lease_id,
            settlement.cost_nano,
            settlement.tokens,
            jsonutil.dumps(rec),
            _ROLLUP_TTL_S,
            *_rollup_args(rec),
        )
        return join_command(_HEAD_ARGS + len(args), head, pack_run(args))

    async def settle(self, settlement: Settlement) -> bool:
        return bool(await self._call(self._settle, self._settle_command(settlement)))

    async def settle_many(self, settlements: list[Settlement]) -> list[bool | StoreError]:
        """Many settlements in one round trip (a pipeline of settle scripts). A Lua runtime error on
        one item is that item's error (retrying cannot help); the others are applied."""
        commands = [self._settle_command(s) for s in settlements]
        return [_truth(r) for r in await self._call_many(self._settle, commands, per_item=True)]

    async def record_many(self, charges: list[Charge]) -> list[bool | StoreError]:
        commands = [self._record.command(*self._record_call(*charge)) for charge in charges]
        results = await self._call_many(self._record, commands, per_item=True)
        for team, *_ in charges:
            await self._remember_team(team)
        return [_truth(r) for r in results]

    async def _call_many(
        self, script: _Script, commands: list[bytes], *, per_item: bool = False
    ) -> list[Any]:
        """``script``'s calls (EVALSHA, packed), loading it on a NOSCRIPT. ``per_item``: a Lua runtime
        error answers that item with a StoreError instead of failing all."""
        if not commands:
            return []
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for _attempt in range(2):
            answers = await self.fast.execute_many([commands[i] for i in todo])
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if _noscript(answer):
                    missing.append(i)  # only these re-run: the others are applied already
                elif per_item and _script_fault(answer):
                    results[i] = StoreError(f"redis: {answer}")
                elif isinstance(answer, ReplyError | Exception):
                    raise StoreError(f"redis: {answer}")
                else:
                    results[i] = answer
            if not missing:
                return results
            todo = missing
            loaded = await self.fast.execute("SCRIPT", "LOAD", script.body)
            if isinstance(loaded, ReplyError):
                raise StoreError(f"redis: {loaded}")
        raise StoreError("redis: the script could not be loaded")

    async def record(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> bool:
        await self._remember_team(team)
        call = self._record_call(team, record, cost_nano, tokens, scopes)
        return bool(await self._call(self._record, self._record.command(*call)))

    def _record_call(
        self, team: str, record: dict[str, Any], cost_nano: int, tokens: int, scopes: list[ScopeLimit]
    ) -> tuple[list[str], list[Any]]:
        ts = int(record["ts_ms"])
        keys = [
            _k(team, "budget"),
            _k(team, f"seen:{ledger_day(ts)}"),
            _k(team, "ledger"),
            _k(team, f"roll:{hour_bucket(ts)}"),
            _k(team, "lease_exp"),
            _k(team, "leases"),
        ]
        args: list[Any] = [
            record["request_id"],
            cost_nano,
            tokens,
            jsonutil.dumps(record),
            _ROLLUP_TTL_S,
            len(scopes),
            *[s.counter for s in scopes],
            *_rollup_args(record),
        ]
        return keys, args

    async def expire_leases(self, team: str, now_ms: int, limit: int = 100) -> int:
        command = self._expire.command(list(_team_keys(team)), [now_ms, limit])
        return int(await self._call(self._expire, command))

    async def renew_lease(self, team: str, lease_id: str, expires_ms: int) -> bool:
        _budget, zset, leases, _ledger = _team_keys(team)
        command = self._renew.command([zset, leases], [lease_id, expires_ms])
        return bool(await self._call(self._renew, command))

    async def scope_usage(self, team: str, scopes: list[ScopeLimit]) -> dict[str, ScopeUsage]:
        fields = [f"{s.counter}|{f}" for s in scopes for f in ("sn", "st", "rn", "rt", "dn", "rq")]
        try:
            values = await _awaited(self.client.hmget(_k(team, "budget"), fields)) if fields else []
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        nums = [int(v) if v is not None else 0 for v in values]
        return {s.counter: ScopeUsage(*nums[i * 6 : (i + 1) * 6]) for i, s in enumerate(scopes)}

    async def teams(self) -> list[str]:
        try:
            return sorted(_s(t) for t in await _awaited(self.client.smembers("gw:teams")))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    # ------------------------------------------------------------------ ledger

    async def ledger(self, team: str, since_ms: int, until_ms: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = f"{max(0, since_ms)}-0"
        end = f"{until_ms + _LEDGER_SLACK_MS}-0"
        try:
            while True:
                batch = await self.client.xrange(_k(team, "ledger"), start, end, count=5000)
                if not batch:
                    break
                for _entry_id, fields in batch:
                    rec = _ledger_entry(fields or {})
                    if since_ms <= int(rec.get("ts_ms", 0)) < until_ms:
                        out.append(rec)
                last = _s(batch[-1][0])
                start = "(" + last
                if len(batch) < 5000:
                    break
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        return out

    async def trim_ledger(self, team: str, older_than_ms: int) -> int:
        """Retention: drop stream entries older than the cutoff (rollups keep their own TTL)."""
        try:
            return int(
                await self.client.xtrim(_k(team, "ledger"), minid=f"{older_than_ms}-0", approximate=True)
            )
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    # ------------------------------------------------------------------ cache

    async def cache_get(self, team: str, key: str) -> bytes | None:
        try:
            value = await self.client.get(_k(team, f"c:{key}"))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        return value if isinstance(value, bytes) or value is None else value.encode()

    async def cache_set(self, team: str, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self.client.set(_k(team, f"c:{key}"), value, ex=ttl_s)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def cache_set_many(self, writes: list[CacheWrite]) -> None:
        """Many cache writes (and lock releases) in one round trip."""
        if not writes:
            return
        commands: list[tuple[Any, ...]] = []
        for slot, key, value, ttl_s, unlock in writes:
            if value:  # empty: only release the lock
                commands.append(("SET", _k(slot, f"c:{key}"), value, "EX", ttl_s))
            if unlock:
                commands.append(("DEL", _k(slot, f"cl:{key}")))
        for reply in await self.bulk.execute_many(commands):
            if isinstance(reply, ReplyError):
                raise StoreError(f"redis: {reply}")

    async def cache_lock(self, team: str, key: str, ttl_ms: int) -> bool:
        try:
            return bool(await self.client.set(_k(team, f"cl:{key}"), b"1", nx=True, px=ttl_ms))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def cache_unlock(self, team: str, key: str) -> None:
        try:
            await self.client.delete(_k(team, f"cl:{key}"))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reserve_result(raw: list[Any]) -> ReserveResult:
    def s(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    rate = {s(raw[i]).replace("|", ":", 1): int(raw[i + 1]) for i in range(8, len(raw), 2)}
    return ReserveResult(
        ok=int(raw[0]) == 1,
        reason=s(raw[1]),
        scope=s(raw[2]).split("|")[0],
        out_tokens=int(raw[3]),
        reserved_nano=int(raw[4]),
        reserved_tokens=int(raw[5]),
        remaining_nano=int(raw[6]),
        remaining_tokens=int(raw[7]),
        rate_remaining=rate,
    )


def _ledger_entry(fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = jsonutil.loads(fields.get(b"r", b"{}"))
    if fields.get(b"status") == b"expired":  # written by the Lua expiry: the lease's full reservation
        rec["cost_nano"] = int(fields[b"cost_nano"])
        rec["status"] = "expired"
        rec["estimated"] = True
        rec["settled_ms"] = int(fields[b"settled_ms"])
        rec.setdefault("usage", {})
    return rec


def _rollup_args(rec: dict[str, Any]) -> list[Any]:
    """Hourly rollups per model and per tag (``add_rollups`` in common.lua): the dimensions, then the
    cost, input and output tokens that each of them adds (and one request). The script spells the
    field names, so a request sends 4 + dimensions arguments rather than 8 per dimension."""
    usage = rec.get("usage") or {}
    model = rec.get("served_model") or rec.get("requested_model") or "-"
    dims = [f"model={model}"] + [f"tag={k}:{v}" for k, v in (rec.get("tags") or {}).items()]
    return [
        len(dims),
        *dims,
        int(rec.get("cost_nano", 0)),
        int(usage.get("input_tokens", 0)),
        int(usage.get("output_tokens", 0)),
    ]


def _rate_key(req: ReserveRequest) -> str:
    return f"rate:{req.rate_limits[0].window if req.rate_limits else 0}"


def _reserve_args(req: ReserveRequest) -> tuple[Any, ...]:
    """reserve.lua's ARGV 1-9 (``_RESERVE_ARGS``): what changes with every request."""
    return (
        req.lease_id,
        req.now_ms,
        req.lease_ttl_ms,
        req.fixed_nano,
        req.fixed_tokens,
        req.out_price_pico,
        req.out_tokens_max,
        req.out_tokens_min,
        jsonutil.dumps(req.intent),
    )
