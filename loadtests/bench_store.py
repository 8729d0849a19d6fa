"""Budget store cost per request: reserve and settle round trips and their latency, on Redis and embedded.

    python loadtests/bench_store.py [--requests 5000]

Starts its own redis-server on a free port (never touches another Redis). For each backend it runs the
gateway's real BudgetManager against the real store, one request at a time (concurrency 1, so the numbers
are round-trip latencies, not queueing): reserve (one Lua script), then settle through the batching
flusher. It counts the Redis commands actually executed (INFO commandstats) to show the round trips
per request, and prints a Markdown table with p50/p99 of each step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.budget import Ask, BudgetManager
from gateway.config.runtime import BudgetSpec, CachePolicy, Principal, TeamSpec
from gateway.metering.pricing import Rates
from gateway.observability.metrics import Metrics
from gateway.policy.engine import _globs
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

RATES = Rates(
    input=1_000_000,
    cached_input=500_000,
    cache_write=1_000_000,
    output=2_000_000,
    reasoning=2_000_000,
    provider="openai",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def principal() -> Principal:
    team = TeamSpec(
        name="bench",
        allow=_globs(["*"]),
        budget=BudgetSpec(
            usd_nano=10**15, tokens=-1, period="monthly", thresholds=(), action="deny", downgrade_to=""
        ),
        rpm=10**9,
        tpm=10**12,
        on_store_error="fail_closed",
        cache=CachePolicy(mode="off", ttl_s=60, namespace="team:bench"),
        tags={},
    )
    return Principal(
        key_id="bench-key",
        team=team,
        budget=BudgetSpec(
            usd_nano=10**14, tokens=-1, period="daily", thresholds=(), action="deny", downgrade_to=""
        ),
    )


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(store: Store, n: int) -> dict[str, list[float]]:
    await store.start()
    manager = BudgetManager(store, Metrics())
    who = principal()
    reserve_s: list[float] = []
    settle_s: list[float] = []
    for i in range(n):
        ask = Ask(
            lease_id=f"bench-{time.time_ns()}-{i}",
            prompt_tokens_bound=1400,
            out_tokens_max=256,
            flexible=False,
            rates=RATES,
            intent={"request_id": f"r{i}", "ts_ms": int(time.time() * 1000), "team": "bench"},
            lease_ttl_ms=120_000,
        )
        t0 = time.perf_counter()
        res = await manager.reserve(who, ask)
        t1 = time.perf_counter()
        record = {
            "request_id": ask.lease_id,
            "ts_ms": int(time.time() * 1000),
            "team": "bench",
            "served_model": "gpt-4o",
            "usage": {"input_tokens": 300, "output_tokens": 200},
            "tags": {},
        }
        manager.submit(res, 700_000, 500, record)
        await manager.drain(5.0)  # one flusher batch: here a batch of one (concurrency 1)
        t2 = time.perf_counter()
        reserve_s.append(t1 - t0)
        settle_s.append(t2 - t1)
    await store.close()
    return {"reserve": reserve_s, "settle": settle_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is required")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.config_resetstat()
        redis_times = asyncio.run(run(RedisStore(f"redis://127.0.0.1:{port}/0"), args.requests))
        stats = client.info("commandstats")
        memory_times = asyncio.run(run(MemoryStore(Path(tmp) / "state"), args.requests))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    scripts = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    print(
        f"{args.requests} requests, concurrency 1, {time.strftime('%Y-%m-%d')}, {os.uname().machine}, "
        f"Python {sys.version.split()[0]}\n"
    )
    print(
        f"Redis scripts executed: {scripts} for {args.requests} requests "
        f"= {scripts / args.requests:.2f} per request (one reserve + one settle)\n"
    )
    print("| backend | step | p50 ms | p99 ms |")
    print("|---|---|---:|---:|")
    for name, times in (("redis", redis_times), ("embedded", memory_times)):
        for step in ("reserve", "settle"):
            print(f"| {name} | {step} | {pct(times[step], 0.5):.3f} | {pct(times[step], 0.99):.3f} |")


if __name__ == "__main__":
    main()
