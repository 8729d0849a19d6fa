"""HTTP load generator for the gateway load tests (asyncio + uvloop + aiohttp, or wrk).

Modes:
  open    fixed arrival rate R for D seconds. Request i is due at t0 + i/R and its
          latency is measured from that *intended* time, so a slow server cannot
          hide its queueing delay by slowing the generator down (no coordinated
          omission). At most --max-inflight requests are outstanding; a request
          that is due while the limit is reached is counted as dropped, never
          delayed.
  closed  C connections, each sending its next request as soon as the previous
          one finishes, for D seconds: maximum throughput. With --driver wrk (or
          auto, when wrk is installed and the body is not streamed) wrk drives it.

Streamed bodies ("stream": true) also record time to first byte (first body
chunk), the gaps between chunk arrivals, stalls (gaps > --stall-ms) and whether
the stream ended with ``data: [DONE]``.

The first --warmup seconds of a run are not recorded (the connections and the
target's caches stay warm into the measured window). Prints one JSON object.

    python loadtests/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions \\
        --scenario loadtests/scenarios/chat_300.json --mode closed --connections 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat
from scenario import body_template, load_scenario

HERE = Path(__file__).resolve().parent
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DONE_MARKER = b"data: [DONE]"


# --------------------------------------------------------------------------- stats


def percentile_summary(samples_s: array[float] | list[float]) -> dict[str, float | int | None]:
    """Nearest-rank percentiles in milliseconds from raw samples in seconds."""
    n = len(samples_s)
    if n == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p99.9": None, "max": None}
    ordered = sorted(samples_s)
    out: dict[str, float | int | None] = {"count": n, "mean": round(sum(ordered) / n * 1000, 4)}
    for p in PERCENTILES:
        rank = max(1, math.ceil(round(p * n / 100, 6)))  # round: 99.9/100*1000 is 999.0000000000001
        out[f"p{p:g}"] = round(ordered[rank - 1] * 1000, 4)
    out["max"] = round(ordered[-1] * 1000, 4)
    return out


@dataclass
class Recorder:
    """Raw samples (seconds) and counters for the measured window."""

    latency: array[float] = field(default_factory=lambda: array("d"))
    ttfb: array[float] = field(default_factory=lambda: array("d"))
    gaps: array[float] = field(default_factory=lambda: array("d"))
    send_lag: array[float] = field(default_factory=lambda: array("d"))  # open loop: send - intended
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    ok: int = 0
    dropped: int = 0
    stalls: int = 0
    chunks: int = 0
    first_start: float = math.inf
    last_end: float = 0.0


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RequestFactory:
    """Builds the i-th request: body (unique nonce or fixed) and rotated key."""

    prefix: bytes
    suffix: bytes | None
    headers: list[dict[str, str]]
    nonce: bytes

    def body(self, i: int) -> bytes:
        if self.suffix is None:
            return self.prefix
        return self.prefix + self.nonce + str(i).encode() + self.suffix

    def headers_for(self, i: int) -> dict[str, str]:
        return self.headers[i % len(self.headers)]


def load_keys(args: argparse.Namespace) -> list[str]:
    keys: list[str] = list(args.key or [])
    if args.keys_file:
        keys += [k.strip() for k in Path(args.keys_file).read_text().splitlines() if k.strip()]
    if args.key_prefix:
        keys += [f"{args.key_prefix}{i}" for i in range(args.key_count)]
    return keys or ["sk-demo"]


async def read_stream(
    resp: aiohttp.ClientResponse, started: float, rec: Recorder | None, stall_s: float
) -> bool:
    """Consume an SSE body, recording TTFB and per-chunk arrival gaps. True if it ended with [DONE]."""
    last = 0.0
    tail = b""
    chunks = 0
    async for chunk in resp.content.iter_any():
        now = time.perf_counter()
        if rec is not None:
            if chunks == 0:
                rec.ttfb.append(now - started)
            else:
                gap = now - last
                rec.gaps.append(gap)
                if gap > stall_s:
                    rec.stalls += 1
        chunks += 1
        last = now
        tail = (tail + chunk)[-64:]
    if rec is not None:
        rec.chunks += chunks
    return DONE_MARKER in tail


async def send_one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    started: float,
    rec: Recorder | None,
    stream: bool,
    stall_s: float,
) -> None:
    """One request; ``started`` is the intended (open loop) or actual (closed loop) send time.

    ``rec`` is None during warmup: the request runs but nothing is recorded."""
    if rec is not None:
        rec.sent += 1
        rec.first_start = min(rec.first_start, started)
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            status = resp.status
            complete = True
            if stream and status == 200:
                complete = await read_stream(resp, started, rec, stall_s)
            else:
                await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if rec is not None:
            rec.errors[type(exc).__name__] += 1
        return
    end = time.perf_counter()
    if rec is None:
        return
    rec.last_end = max(rec.last_end, end)
    if status != 200:
        rec.errors[str(status)] += 1
    elif not complete:
        rec.errors["stream_without_done"] += 1
    else:
        rec.ok += 1
        rec.latency.append(end - started)


# --------------------------------------------------------------------------- drivers


@dataclass
class Plan:
    url: str
    mode: str
    duration: float
    warmup: float
    connections: int
    rate: float
    max_inflight: int
    max_requests: int
    stream: bool
    stall_s: float
    timeout: float
    ramp: float


class Phase:
    """Switches from warmup to the measured window exactly once and snapshots
    CPU counters (ours and the watched processes') at both window edges."""

    def __init__(self, watch: dict[str, list[int]]) -> None:
        self.rec: Recorder | None = None
        self.watch = watch
        self.t_start = 0.0
        self.t_end = 0.0
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.cores_start: dict[str, tuple[int, int, int]] = {}
        self.cores_end: dict[str, tuple[int, int, int]] = {}

    def _cpu(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        snap = {"loadgen": usage.ru_utime + usage.ru_stime}
        snap.update({name: procstat.tree_cpu_seconds(pids) for name, pids in self.watch.items()})
        return snap

    def begin(self) -> Recorder:
        self.cores_start = procstat.cpu_jiffies()
        self.cpu_start = self._cpu()
        self.t_start = time.perf_counter()
        self.rec = Recorder()
        return self.rec

    def end(self) -> None:
        self.t_end = time.perf_counter()
        self.cpu_end = self._cpu()
        self.cores_end = procstat.cpu_jiffies()

    def cpu_seconds(self) -> dict[str, float]:
        return {k: round(self.cpu_end[k] - self.cpu_start[k], 4) for k in self.cpu_start}

    def cores(self) -> dict[str, dict[str, float]]:
        """How busy each CPU was over the window, whoever used it (other tenants included)."""
        return procstat.cpu_busy_between(self.cores_start, self.cores_end)


def _connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=300, ttl_dns_cache=None)


async def run_closed(plan: Plan, factory: RequestFactory, phase: Phase) -> None:
    t0 = time.perf_counter()
    measure_at = t0 + plan.ramp + plan.warmup
    deadline = measure_at + plan.duration
    counter = itertools.count()
    timeout = aiohttp.ClientTimeout(total=plan.timeout)

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        # Spread connection starts over the ramp so e.g. 256 streams don't start in lockstep.
        await asyncio.sleep(plan.ramp * w / plan.connections)
        while (now := time.perf_counter()) < deadline:
            if phase.rec is None and now >= measure_at:
                phase.begin()
            rec = phase.rec
            if rec is not None and plan.max_requests and rec.sent >= plan.max_requests:
                break
            i = next(counter)
            await send_one(
                session,
                plan.url,
                factory.body(i),
                factory.headers_for(i),
                now,
                rec,
                plan.stream,
                plan.stall_s,
            )

    async with aiohttp.ClientSession(connector=_connector(plan.connections), timeout=timeout) as session:
        await asyncio.gather(*(worker(w, session) for w in range(plan.connections)))
    if phase.rec is None:
        phase.begin()
    phase.end()


async def run_open(plan: Plan, factory: RequestFactory, phase: Phase) -> None:
    total = int((plan.warmup + plan.duration) * plan.rate)
    warm = int(plan.warmup * plan.rate)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    inflight: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=_connector(plan.max_inflight), timeout=timeout) as session:
        t0 = time.perf_counter() + 0.01
        i = 0
        while i < total:
            now = time.perf_counter()
            due = t0 + i / plan.rate
            if due > now:
                # The loop's timers have ~1 ms resolution: a shorter sleep returns at once and
                # would busy-spin the core we share with the upstream. Lateness is measured.
                await asyncio.sleep(max(due - now, 0.001))
                continue
            # Fire everything that is due; a late wake-up shows up as latency, as it should.
            while i < total and t0 + i / plan.rate <= now:
                if i == warm:
                    phase.begin()
                rec = phase.rec
                intended = t0 + i / plan.rate
                if rec is not None:
                    rec.send_lag.append(now - intended)
                if len(inflight) >= plan.max_inflight:
                    if rec is not None:
                        rec.sent += 1
                        rec.dropped += 1
                else:
                    coro = send_one(
                        session,
                        plan.url,
                        factory.body(i),
                        factory.headers_for(i),
                        intended,
                        rec,
                        plan.stream,
                        plan.stall_s,
                    )
                    task = asyncio.get_running_loop().create_task(coro)
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                i += 1
        if inflight:
            await asyncio.wait(set(inflight))
    if phase.rec is None:
        phase.begin()
    phase.end()


def python_result(plan: Plan, phase: Phase) -> dict[str, Any]:
    rec = phase.rec or Recorder()
    # Closed loop: the window ends when the last request in it completes.
    # Open loop: throughput is arrivals served over the scheduled window.
    end = max(phase.t_end if plan.mode == "open" else rec.last_end, phase.t_start + 1e-9)
    elapsed = end - phase.t_start
    out: dict[str, Any] = {
        "driver": "python",
        "elapsed_s": round(elapsed, 4),
        "sent": rec.sent,
        "ok": rec.ok,
        "dropped": rec.dropped,
        "errors": dict(rec.errors),
        "error_count": sum(rec.errors.values()),
        "rps": round(rec.ok / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": percentile_summary(rec.latency),
    }
    if plan.mode == "open":
        # Large values mean the generator itself could not keep up with the rate.
        out["send_lag_ms"] = percentile_summary(rec.send_lag)
    if plan.stream:
        out["ttfb_ms"] = percentile_summary(rec.ttfb)
        out["gap_ms"] = percentile_summary(rec.gaps)
        out["stalls"] = rec.stalls
        out["chunks"] = rec.chunks
    out["cpu_s"] = phase.cpu_seconds()
    out["cores"] = phase.cores()
    return out


# --------------------------------------------------------------------------- wrk


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    plan: Plan, factory: RequestFactory, keys: list[str], watch: dict[str, list[int]]
) -> dict[str, Any]:
    """Closed loop with wrk (one thread: the load generator gets one core)."""
    with tempfile.TemporaryDirectory(prefix="loadgen-wrk-") as tmp:
        files = {"prefix": Path(tmp, "prefix"), "suffix": Path(tmp, "suffix"), "keys": Path(tmp, "keys")}
        files["prefix"].write_bytes(factory.prefix)
        files["keys"].write_text("\n".join(keys) + "\n")
        env = dict(os.environ)
        env.update(
            LOADGEN_BODY_PREFIX=str(files["prefix"]),
            LOADGEN_KEYS=str(files["keys"]),
            LOADGEN_NONCE=factory.nonce.decode(),
            LOADGEN_STATUS="1",
            LOADGEN_HEADERS="\n".join(
                f"{name}: {value}"
                for name, value in factory.headers[0].items()
                if name not in ("Content-Type", "Authorization")
            ),
        )
        env.pop("LOADGEN_BODY_SUFFIX", None)
        if factory.suffix is not None:
            files["suffix"].write_bytes(factory.suffix)
            env["LOADGEN_BODY_SUFFIX"] = str(files["suffix"])

        def wrk(seconds: float) -> list[str]:
            return [
                wrk_path() or "wrk",
                "-t1",
                f"-c{plan.connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                f"{max(1, round(plan.timeout))}s",
                "-s",
                str(HERE / "wrk_post.lua"),
                plan.url,
            ]

        if plan.warmup > 0:
            # wrk numbers requests from 1 in every run: the warmup needs its own nonce, or the measured
            # run would repeat its bodies and a cache-miss scenario would be served partly from cache.
            warm_env = {**env, "LOADGEN_NONCE": f"{factory.nonce.decode()}warmup-"}
            subprocess.run(wrk(plan.warmup), env=warm_env, check=True, capture_output=True)
        phase = Phase(watch)
        before = _children_cpu()
        phase.begin()
        proc = subprocess.run(wrk(plan.duration), env=env, check=True, capture_output=True, text=True)
        phase.end()
    return wrk_result(proc.stdout, phase, _children_cpu() - before)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_result(stdout: str, phase: Phase, wrk_cpu: float) -> dict[str, Any]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("LOADGEN_WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{stdout}")
    raw = orjson.loads(line.split(" ", 1)[1])
    elapsed = raw["duration_us"] / 1e6
    statuses: dict[str, int] = raw["statuses"]
    ok = statuses.get("200", raw["requests"] - raw["errors"]["status"])
    errors = {code: n for code, n in statuses.items() if code != "200"}
    errors.update({f"socket_{k}": v for k, v in raw["errors"].items() if k != "status" and v})
    lat = raw["latency_us"]
    cpu = phase.cpu_seconds()
    cpu["loadgen"] = round(cpu["loadgen"] + wrk_cpu, 4)  # this process is idle; wrk does the work
    return {
        "driver": "wrk",
        "elapsed_s": round(elapsed, 4),
        "sent": raw["requests"],
        "ok": ok,
        "dropped": 0,
        "errors": errors,
        "error_count": sum(errors.values()),
        "rps": round(ok / elapsed, 2) if elapsed > 0 else 0.0,
        # wrk's histogram has microsecond resolution; "count" is all completed responses.
        "latency_ms": {
            "count": raw["requests"],
            "mean": round(lat["mean"] / 1000, 4),
            **{f"p{p:g}": round(lat[f"p{p:g}"] / 1000, 4) for p in PERCENTILES},
            "max": round(lat["max"] / 1000, 4),
        },
        "cpu_s": cpu,
        "cores": phase.cores(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Load generator for the gateway load tests.")
    p.add_argument("--url", required=True, help="full URL, e.g. http://127.0.0.1:8080/v1/chat/completions")
    p.add_argument("--scenario", required=True, help="scenario JSON (loadtests/scenarios/*.json)")
    p.add_argument("--mode", choices=("open", "closed"), default="closed")
    p.add_argument(
        "--driver",
        choices=("auto", "python", "wrk"),
        default="python",
        help="closed loop only; auto = wrk if installed and the body is not streamed",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before the window")
    p.add_argument("--connections", "-c", type=int, default=16, help="closed loop concurrency")
    p.add_argument("--ramp", type=float, default=0.0, help="closed loop: spread connection starts (s)")
    p.add_argument("--rate", type=float, default=100.0, help="open loop requests per second")
    p.add_argument("--max-inflight", type=int, default=1024, help="open loop: above this, count drops")
    p.add_argument("--max-requests", type=int, default=0, help="closed loop: stop after N measured requests")
    p.add_argument(
        "--unique",
        dest="unique",
        action="store_true",
        default=None,
        help="unique prompt suffix per request (defeats caches); default from scenario",
    )
    p.add_argument("--fixed", dest="unique", action="store_false", help="identical body every request")
    p.add_argument("--stream", dest="stream", action="store_true", default=None, help="force stream: true")
    p.add_argument("--key", action="append", help="API key (repeatable); rotated per request")
    p.add_argument("--header", action="append", help="extra request header 'Name: value' (repeatable)")
    p.add_argument("--keys-file", help="file with one API key per line")
    p.add_argument("--key-prefix", help="generate keys PREFIX0..PREFIX{count-1}")
    p.add_argument("--key-count", type=int, default=1000)
    p.add_argument("--stall-ms", type=float, default=250.0, help="stream chunk gap counted as a stall")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    p.add_argument(
        "--watch-pid",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="report CPU seconds of this process tree over the measured window",
    )
    p.add_argument("--out", help="write the JSON here instead of stdout")
    return p.parse_args(argv)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def build(args: argparse.Namespace) -> tuple[Plan, RequestFactory, list[str]]:
    scenario = load_scenario(args.scenario)
    if args.stream:
        scenario.body["stream"] = True
    unique = scenario.unique if args.unique is None else args.unique
    prefix, suffix = body_template(scenario, unique)
    keys = load_keys(args)
    extra = dict(parse_header(h) for h in args.header or ())
    headers = [{"Content-Type": "application/json", "Authorization": f"Bearer {k}", **extra} for k in keys]
    nonce = f"{os.getpid()}-{time.time_ns()}-".encode()
    plan = Plan(
        url=args.url,
        mode=args.mode,
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rate=args.rate,
        max_inflight=args.max_inflight,
        max_requests=args.max_requests,
        stream=scenario.stream,
        stall_s=args.stall_ms / 1000,
        timeout=args.timeout,
        ramp=args.ramp,
    )
    return plan, RequestFactory(prefix, suffix, headers, nonce), keys


def choose_driver(args: argparse.Namespace, plan: Plan) -> str:
    if args.driver == "python" or plan.mode == "open" or plan.stream:
        if args.driver == "wrk":
            raise SystemExit("the wrk driver supports only closed-loop, non-streamed runs")
        return "python"
    if wrk_path() is None:
        if args.driver == "wrk":
            raise SystemExit("wrk is not installed (apt-get install -y wrk)")
        return "python"
    return "wrk"


def parse_watch(specs: list[str]) -> dict[str, list[int]]:
    """Resolve each watched process tree once, so window edges only read known pids."""
    watch = {}
    for spec in specs:
        name, _, pid = spec.partition("=")
        watch[name] = procstat.process_tree(int(pid))
    return watch


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan, factory, keys = build(args)
    watch = parse_watch(args.watch_pid)
    driver = choose_driver(args, plan)
    if driver == "wrk":
        result = run_wrk(plan, factory, keys, watch)
    else:
        phase = Phase(watch)
        runner: Callable[[Plan, RequestFactory, Phase], Coroutine[Any, Any, None]] = (
            run_open if plan.mode == "open" else run_closed
        )
        uvloop.run(runner(plan, factory, phase))
        result = python_result(plan, phase)
    result["config"] = {
        "url": plan.url,
        "mode": plan.mode,
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "connections": plan.connections if plan.mode == "closed" else None,
        "rate": plan.rate if plan.mode == "open" else None,
        "max_inflight": plan.max_inflight if plan.mode == "open" else None,
        "stream": plan.stream,
        "unique": factory.suffix is not None,
        "keys": len(keys),
        "body_bytes": len(factory.body(0)),
        "scenario": args.scenario,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = orjson.dumps(run(args), option=orjson.OPT_INDENT_2) + b"\n"
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


if __name__ == "__main__":
    main()
