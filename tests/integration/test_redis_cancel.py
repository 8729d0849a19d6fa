"""A cancelled task must stop, even inside a redis-py call: the gateway's shutdown cancels its periodic
jobs (budget gauges, revocation polls, reports) and waits for them.

redis-py 8.2.0 swallowed the cancellation of most commands it was running (the task went on as if
nothing had happened), which hung the gateway's shutdown in ~40 % of SIGTERMs under load; 7.4.1, 6.4.0
and 5.2.1 do not. pyproject.toml pins ``redis<8``; this test fails if an upgrade brings it back.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.harness import RedisServer


async def test_cancelling_a_task_inside_a_redis_command_stops_it(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.ping()
    finished = 0
    try:
        for i in range(200):

            async def busy() -> None:
                for _ in range(300):
                    await client.hmget("gw:{t}:budget", ["a", "b", "c"])

            task = asyncio.get_running_loop().create_task(busy())
            await asyncio.sleep((i % 20) / 4000)  # 0-5 ms: the cancel lands at many points of a command
            task.cancel()
            try:
                await task
                finished += 1
            except asyncio.CancelledError:
                pass
    finally:
        await client.aclose()
    assert finished == 0, f"{finished} of 200 cancelled tasks went on running"
