"""The Redis store's hot-path commands as Redis receives them (a real redis-server).

The script calls are put together from parts packed once (a team's keys, a principal's limits) and
parts packed per request, and the hourly rollups are spelled out by the scripts from a short list of
dimensions. These tests read back what the scripts wrote: the rollup hash of each settle and charge,
and reservations whose limits, denial flag and rate window change between calls that reuse the
cached parts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.store.base import UNLIMITED, RateLimit, ReserveResult, ScopeLimit, Settlement
from gateway.store.redis import RedisStore
from gateway.store.resp import join_command, pack, pack_run
from gateway.store.rollup import hour_bucket
from tests.integration.test_store_parity import now_ms
from tests.integration.test_store_parity import reserve as reserve_at


@pytest.fixture
async def store(redis_server: Any) -> AsyncIterator[RedisStore]:
    built = RedisStore(redis_server.url)
    await built.start()
    yield built
    await built.close()


@pytest.fixture
async def raw(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def reserve(
    store: RedisStore, team: str, lease_id: str, scopes: list[ScopeLimit], limits: list[RateLimit], **kw: Any
) -> ReserveResult:
    return await reserve_at(store, team, lease_id, scopes, at=now_ms(), fixed_nano=100, rates=limits, **kw)


def test_a_command_from_packed_runs_is_the_command_packed_whole() -> None:
    args = ("EVALSHA", "ab" * 20, 2, "gw:{t}:a", "gw:{t}:b", 0, -5, 12345678901234, b'{"x":1}', "é")
    assert join_command(len(args), pack_run(args[:5]), pack_run(args[5:8]), pack_run(args[8:])) == pack(args)


async def test_settle_and_record_rollups_per_model_and_tag(store: RedisStore, raw: aioredis.Redis) -> None:
    team = f"t-{uuid.uuid4().hex[:12]}"
    ts = int(time.time() * 1000)
    scope = [ScopeLimit(f"team:{team}", "2026-12", UNLIMITED)]
    assert (await reserve(store, team, "l1", scope, [])).ok
    settled: dict[str, Any] = {
        "request_id": "l1",
        "ts_ms": ts,
        "served_model": "gpt-4o-mini",
        "tags": {"env": "prod", "app": "chat"},
        "cost_nano": 1_500,
        "usage": {"input_tokens": 300, "output_tokens": 40},
    }
    assert await store.settle_many([Settlement(team, "l1", 1_500, 340, settled, now_ms=ts)]) == [True]
    charged: dict[str, Any] = {
        "request_id": "r1",
        "ts_ms": ts,
        "requested_model": "gpt-4o",  # no served model (a cache hit of an old entry): the requested one
        "tags": {"env": "prod"},
        "cost_nano": 0,
        "usage": {"input_tokens": 7},
    }
    assert await store.record_many([(team, charged, 0, 0, scope)]) == [True]

    name = f"gw:{{{team}}}:roll:{hour_bucket(ts)}"
    rollup = {k.decode(): int(v) for k, v in (await raw.hgetall(name)).items()}
    assert rollup == {
        "model=gpt-4o-mini|cost_nano": 1_500,
        "model=gpt-4o-mini|requests": 1,
        "model=gpt-4o-mini|input_tokens": 300,
        "model=gpt-4o-mini|output_tokens": 40,
        "model=gpt-4o|cost_nano": 0,
        "model=gpt-4o|requests": 1,
        "model=gpt-4o|input_tokens": 7,
        "model=gpt-4o|output_tokens": 0,
        "tag=env:prod|cost_nano": 1_500,
        "tag=env:prod|requests": 2,
        "tag=env:prod|input_tokens": 307,
        "tag=env:prod|output_tokens": 40,
        "tag=app:chat|cost_nano": 1_500,
        "tag=app:chat|requests": 1,
        "tag=app:chat|input_tokens": 300,
        "tag=app:chat|output_tokens": 40,
    }
    assert 0 < await raw.ttl(name) <= 400 * 86_400


async def test_cached_parts_follow_new_limits_flags_and_windows(store: RedisStore) -> None:
    team = f"t-{uuid.uuid4().hex[:12]}"
    roomy = [ScopeLimit(f"team:{team}", "2026-12", 1_000)]
    minute = int(time.time()) // 60
    rpm = [RateLimit("rpm", "team", 2, window=minute)]
    assert (await reserve(store, team, "a", roomy, rpm)).ok
    assert (await reserve(store, team, "b", roomy, rpm)).ok
    third = await reserve(store, team, "c", roomy, rpm)
    assert (third.ok, third.reason) == (False, "rpm")
    # The next minute's window (another rate key in the packed head): room again.
    next_minute = [RateLimit("rpm", "team", 2, window=minute + 1)]
    assert (await reserve(store, team, "d", roomy, next_minute)).ok
    # New lists with a lower limit (a config reload): the new limit applies at once.
    tight = [ScopeLimit(f"team:{team}", "2026-12", 150)]
    retried = await reserve(store, team, "e", tight, [], count_denial=False)
    assert (retried.ok, retried.reason) == (False, "usd")
    assert (await store.scope_usage(team, tight))[tight[0].counter].denials == 0
    # The same lists with the other denial flag: packed apart, so this denial counts.
    final = await reserve(store, team, "f", tight, [])
    assert (final.ok, final.reason) == (False, "usd")
    assert (await store.scope_usage(team, tight))[tight[0].counter].denials == 1
