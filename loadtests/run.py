"""One command for the whole load test: upstream, Redis, minimal proxy, gateway, every scenario, report.

    python loadtests/run.py [--quick] [--scenarios miss_full,cache_hit] [--duration S]
                            [--out loadtests/results/] [--soak-minutes 10]

Each scenario measures, in the same run and under the same pinning: the upstream
directly, the minimal aiohttp proxy (loadtests/minimal_proxy.py) and the gateway.
Writes <out>/<date>-<commit>.json and .md. See loadtests/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import procstat  # noqa: E402
import report  # noqa: E402
from static_upstream.nginx_upstream import find_nginx, nginx_argv  # noqa: E402
from supervisor import (  # noqa: E402
    Child,
    Pinning,
    StartupError,
    Supervisor,
    http_ok,
    python_cmd,
    redis_command,
    redis_ready,
    tcp_open,
    terminating_signals,
)

HOST = "127.0.0.1"
SCEN = HERE / "scenarios"
CONFIGS = HERE / "configs"
STREAM_PACING_MS = 20
STREAM_CONCURRENCY = 256
STREAM_TTFB_BODY = "chat_300_stream_ttfb.json"  # 2 output tokens: many short streams, one at a time
THROUGHPUT_CONNECTIONS = 16

DEFAULT_GATEWAY_CMD = (
    "{python} -m gateway serve --config {config} --host {host} --port {port} --workers {workers}"
)
DEFAULT_MOCK_CMD = (
    "{python} -m gateway mock-upstream --host {host} --port {port} --latency-ms {latency_ms} "
    "--chunk-delay-ms {chunk_delay_ms} --completion-tokens {completion_tokens}"
)
# Used only while the `gateway` CLI has no __main__ yet: the same mock, by module.
FALLBACK_MOCK_CMD = DEFAULT_MOCK_CMD.replace("-m gateway mock-upstream", "-m gateway.mock_upstream")
MINIMAL_CMD = (
    "{python} " + str(HERE / "minimal_proxy.py") + " --host {host} --port {port} --upstream {upstream}"
)
LITELLM_CMD = "litellm --config {workdir}/litellm.yaml --host {host} --port {port} --num_workers 1"
# The proxy refuses to start without a master key; the load generator's key (sk-demo) is it, so LiteLLM
# authenticates every request as the gateway does, with no database behind it.
LITELLM_YAML = """model_list:
  - model_name: gpt-4o-mini
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{upstream}/v1", api_key: sk-loadtest-upstream}}
general_settings:
  master_key: sk-demo
"""


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    what: str
    body: str
    config: str = "full.yaml"
    keys: tuple[str, ...] = ("--key", "sk-demo")
    upstream: str = "static"  # "static" (nginx or mock, no delay) or "paced" (mock, 20 ms chunks)
    kind: str = "compare"  # compare | stream | workers | idle | soak | instructions


MANY_KEYS = ("--key-prefix", "sk-load-", "--key-count", "1000")
SCENARIOS: dict[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec(
            "miss_full",
            "non-streamed ~300-token chat, unique prompt per request (cache miss), every feature on",
            "chat_300.json",
        ),
        ScenarioSpec(
            "stream_paced",
            f"{STREAM_CONCURRENCY} concurrent streams, upstream paces chunks {STREAM_PACING_MS} ms apart",
            "chat_300_stream.json",
            upstream="paced",
            kind="stream",
        ),
        ScenarioSpec(
            "cache_hit",
            "fixed body, temperature 0: every request after the first is a cache hit",
            "chat_300_fixed.json",
        ),
        ScenarioSpec(
            "many_keys",
            "100 teams / 1,000 keys, key rotated per request, cache miss",
            "chat_300.json",
            config="many_keys.yaml",
            keys=MANY_KEYS,
        ),
        ScenarioSpec("large_prompt", "~30k-token prompt, cache miss", "large_prompt_30k.json"),
        ScenarioSpec(
            "workers2",
            "max throughput with --workers 2 (all cores) vs --workers 1 (one core)",
            "chat_300.json",
            kind="workers",
        ),
        ScenarioSpec(
            "idle_rss",
            "RSS per worker at idle, after start and after some traffic",
            "chat_300.json",
            kind="idle",
        ),
        ScenarioSpec(
            "soak", "open loop at 50% of max throughput, RSS sampled every 10 s", "chat_300.json", kind="soak"
        ),
        ScenarioSpec(
            "instructions",
            "CPU instructions per request (callgrind), cache miss, every feature on, c=16: gateway vs the "
            "minimal proxy, a count that does not move with the machine's noise",
            "chat_300.json",
            kind="instructions",
        ),
    )
}
DEFAULT_ORDER = [
    "miss_full",
    "stream_paced",
    "cache_hit",
    "many_keys",
    "large_prompt",
    "workers2",
    "idle_rss",
    "instructions",
]


@dataclass
class Durations:
    c1: float
    throughput: float
    stream: float
    warmup: float
    throughput_warmup: float  # c=16 runs right after c=1 on the same warm target
    idle_wait: float
    stream_tokens: int
    soak_sample_s: float = 10.0
    instructions: float = 10.0  # the measured window under callgrind (~30x slower than native)
    rounds: int = 6  # interleaved throughput rounds, minimal proxy and gateway back to back
    round_s: float = 5.0

    @classmethod
    def pick(cls, quick: bool, override: float | None) -> Durations:
        d = (
            cls(2, 2, 3, 1, 0, 1, 25, instructions=4, rounds=2, round_s=2)
            if quick
            else cls(10, 15, 20, 2, 2, 10, 50)
        )
        if override:
            d.c1 = d.throughput = d.stream = override
        return d


def _callgrind_total(base: Path, pid: int, wait_s: float = 60) -> int:
    """The instruction total of the newest dump callgrind wrote for ``pid`` (``base.N`` files)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        dumps = sorted(base.parent.glob(base.name + ".*"), key=lambda p: p.stat().st_mtime)
        for dump in reversed(dumps):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.5)
    raise RuntimeError(f"callgrind wrote no dump for pid {pid} under {base}")


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    sup: Supervisor
    pin: Pinning
    dur: Durations
    workdir: Path
    redis_port: int = 0
    upstreams: dict[str, tuple[Child, str, str]] = field(default_factory=dict)  # kind -> child, url, impl
    warnings: list[str] = field(default_factory=list)
    target_args: dict[str, list[str]] = field(default_factory=dict)  # url -> extra loadgen arguments

    # ---- processes

    def fmt(self, template: str, **values: Any) -> list[str]:
        base = {"python": python_cmd(), "host": HOST, "workdir": str(self.workdir)}
        return shlex.split(template.format(**base, **values))

    def start_redis(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("redis-server not found (apt-get install -y redis-server)")
        self.redis_port = self.sup.free_port()
        argv = [
            redis,
            "--port",
            str(self.redis_port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.workdir),
        ]
        child = self.sup.start("redis", argv, self.pin.aux, port=self.redis_port)
        self.sup.wait_ready(child, redis_ready(self.redis_port), 15)

    def mock_cmd(self) -> str:
        if self.args.mock_cmd:
            return str(self.args.mock_cmd)
        if importlib.util.find_spec("gateway.__main__") is None:
            self.note("`python -m gateway` not available yet: using `python -m gateway.mock_upstream`")
            return FALLBACK_MOCK_CMD
        return DEFAULT_MOCK_CMD

    def upstream(self, kind: str) -> tuple[Child, str, str]:
        """The upstream for a scenario, started on first use and shared by later scenarios."""
        if kind in self.upstreams:
            return self.upstreams[kind]
        port = self.sup.free_port()
        use_nginx = kind == "static" and self.args.upstream in ("auto", "nginx") and find_nginx() is not None
        if kind == "static" and self.args.upstream == "nginx" and not use_nginx:
            raise SystemExit("--upstream nginx: nginx is not installed (apt-get install -y nginx)")
        if use_nginx:
            argv, impl = nginx_argv(port, self.workdir / f"nginx-{port}"), "nginx"
        else:
            paced = kind == "paced"
            argv = self.fmt(
                self.mock_cmd(),
                port=port,
                latency_ms=0,
                chunk_delay_ms=STREAM_PACING_MS if paced else 0,
                completion_tokens=self.dur.stream_tokens if paced else 16,
            )
            impl = "mock" + (f" ({STREAM_PACING_MS} ms chunks)" if paced else "")
        child = self.sup.start(f"upstream-{kind}", argv, self.pin.aux, port=port)
        self.sup.wait_ready(child, tcp_open(port), 30)
        self.upstreams[kind] = (child, f"http://{HOST}:{port}", impl)
        return self.upstreams[kind]

    def gateway_env(self, upstream: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LOADTEST_UPSTREAM_URL=upstream,  # origin, no /v1: configs append the provider's path
            LOADTEST_UPSTREAM_OPENAI_URL=upstream + "/v1",
            GATEWAY_REDIS_URL=f"redis://{HOST}:{self.redis_port}/0",
            PYTHONUNBUFFERED="1",
        )
        env.setdefault("OPENAI_API_KEY", "sk-loadtest-upstream")
        env.setdefault("ANTHROPIC_API_KEY", "sk-ant-loadtest-upstream")
        return env

    def start_gateway(
        self,
        spec: ScenarioSpec,
        upstream: str,
        workers: int = 1,
        cpus: str | None = None,
        wrap: Sequence[str] = (),
        ready_s: float = 90,
    ) -> Child:
        """``wrap``: a command prefix (valgrind), with ``ready_s`` to match its slower start."""
        template = self.args.gateway_cmd or DEFAULT_GATEWAY_CMD
        config = self.args.configs_dir / spec.config
        if "{config}" in template and not config.exists():
            raise StartupError(f"gateway config {config} does not exist")
        port = self.sup.free_port()
        argv = self.fmt(
            template,
            port=port,
            config=config,
            workers=workers,
            upstream=upstream,
            redis_url=f"redis://{HOST}:{self.redis_port}/0",
        )
        child = self.sup.start(
            f"gateway-{spec.name}-w{workers}",
            [*wrap, *argv],
            cpus or self.pin.target,
            env=self.gateway_env(upstream),
            port=port,
        )
        self.sup.wait_ready(child, http_ok(port), ready_s)
        return child

    def start_minimal(self, name: str, upstream: str, wrap: Sequence[str] = (), ready_s: float = 30) -> Child:
        port = self.sup.free_port()
        argv = [*wrap, *self.fmt(MINIMAL_CMD, port=port, upstream=upstream)]
        child = self.sup.start(f"minimal-{name}", argv, self.pin.target, port=port)
        self.sup.wait_ready(child, http_ok(port), ready_s)
        return child

    def start_peer(self, name: str, upstream: str) -> Child | None:
        if self.args.peer == "portkey" and not self.args.peer_cmd:
            return self.start_portkey(name, upstream)
        template = self.args.peer_cmd or (LITELLM_CMD if self.args.peer == "litellm" else None)
        if template is None:
            return None
        if self.args.peer == "litellm" and not self.args.peer_cmd:
            if shutil.which("litellm") is None:
                self.note("--peer litellm: `litellm` is not on PATH (pip install 'litellm[proxy]'); skipped")
                return None
            (self.workdir / "litellm.yaml").write_text(LITELLM_YAML.format(upstream=upstream))
        port = self.sup.free_port()
        # Offline machines: LiteLLM reads its bundled price map instead of fetching it at start.
        env = {**self.gateway_env(upstream), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        child = self.sup.start(
            f"peer-{name}",
            self.fmt(template, port=port, upstream=upstream),
            self.pin.target,
            env=env,
            port=port,
        )
        self.sup.wait_ready(child, tcp_open(port), 120)
        return child

    def start_portkey(self, name: str, upstream: str) -> Child | None:
        """Portkey's open-source gateway (npm ``@portkey-ai/gateway``) under Node. It has no config file:
        each request names its provider and upstream in headers, which the load generator adds for it."""
        server = self.args.peer_home / "node_modules/@portkey-ai/gateway/build/start-server.js"
        node = shutil.which("node")
        if node is None or not server.exists():
            self.note(
                f"--peer portkey: needs node and `npm install --prefix {self.args.peer_home} "
                "@portkey-ai/gateway`; skipped"
            )
            return None
        port = self.sup.free_port()
        argv = [node, str(server), f"--port={port}", "--headless"]
        # NODE_ENV=production: no log UI and no per-request log streaming to it.
        env = {**os.environ, "NODE_ENV": "production"}
        child = self.sup.start(f"peer-{name}", argv, self.pin.target, env=env, port=port)
        self.sup.wait_ready(child, http_ok(port, "/"), 120)
        self.target_args[f"http://{HOST}:{port}"] = [
            "--header",
            "x-portkey-provider: openai",
            "--header",
            f"x-portkey-custom-host: {upstream}/v1",
        ]
        return child

    def note(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            print(f"  note: {message}", flush=True)

    def flush_redis(self) -> None:
        redis_command(self.redis_port, "FLUSHALL")

    # ---- measurements

    def loadgen(
        self,
        label: str,
        url: str,
        spec: ScenarioSpec,
        extra: list[str],
        watch: dict[str, int],
        timeout: float,
        body: str | None = None,
    ) -> dict[str, Any]:
        out = self.workdir / f"loadgen-{label}.json"
        argv = [
            python_cmd(),
            str(HERE / "loadgen.py"),
            "--url",
            url + "/v1/chat/completions",
            "--scenario",
            str(SCEN / (body or spec.body)),
            "--out",
            str(out),
            *spec.keys,
            *self.target_args.get(url, []),
            *extra,
        ]
        for name, pid in watch.items():
            argv += ["--watch-pid", f"{name}={pid}"]
        child = self.sup.start(f"loadgen-{label}", argv, self.pin.aux)
        try:
            rc = child.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"load generator {label} timed out:\n{child.log_tail()}") from exc
        finally:
            self.sup.stop(child)
        if rc != 0:
            raise RuntimeError(f"load generator {label} failed ({rc}):\n{child.log_tail()}")
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result

    def closed(
        self,
        label: str,
        url: str,
        spec: ScenarioSpec,
        connections: int,
        duration: float,
        watch: dict[str, int],
        driver: str | None = None,
        warmup: float | None = None,
    ) -> dict[str, Any]:
        warmup = self.dur.warmup if warmup is None else warmup
        extra = [
            "--mode",
            "closed",
            "-c",
            str(connections),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--driver",
            driver or self.args.driver,
        ]
        return self.loadgen(label, url, spec, extra, watch, duration + warmup + 120)

    def stream(
        self,
        label: str,
        url: str,
        spec: ScenarioSpec,
        watch: dict[str, int],
        concurrency: int,
        body: str | None = None,
    ) -> dict[str, Any]:
        stream_s = self.dur.stream_tokens * STREAM_PACING_MS / 1000
        extra = [
            "--mode",
            "closed",
            "-c",
            str(concurrency),
            "--duration",
            str(self.dur.stream),
            "--warmup",
            str(self.dur.warmup),
            "--ramp",
            f"{stream_s if concurrency > 1 else 0:.3f}",
            "--stall-ms",
            str(5 * STREAM_PACING_MS),
            "--driver",
            "python",
        ]
        return self.loadgen(
            label, url, spec, extra, watch, self.dur.stream + self.dur.warmup + stream_s + 120, body
        )

    # ---- scenarios

    def targets(
        self, spec: ScenarioSpec, upstream: Child, upstream_url: str, started: list[Child]
    ) -> list[tuple[str, Child]]:
        """(name, process) for each target, in measurement order; direct's process is the upstream.

        The gateway starts first so a broken gateway fails the scenario before any time is spent."""
        gateway = self.start_gateway(spec, upstream_url)
        started.append(gateway)
        minimal = self.start_minimal(spec.name, upstream_url)
        started.append(minimal)
        out = [("direct", upstream), ("minimal", minimal)]
        peer = self.start_peer(spec.name, upstream_url)
        if peer is not None:
            started.append(peer)
            out.append(("peer", peer))
        return [*out, ("gateway", gateway)]

    def run_compare(self, spec: ScenarioSpec) -> dict[str, Any]:
        up, up_url, impl = self.upstream(spec.upstream)
        result: dict[str, Any] = {"upstream": impl, "measurements": {}, "processes": {}}
        started: list[Child] = []
        try:
            targets = self.targets(spec, up, up_url, started)
            for name, child in targets:
                watch = {"target": child.pid, "upstream": up.pid, "redis": self.redis_child().pid}
                url = f"http://{HOST}:{child.port}"
                m = result["measurements"]
                if spec.kind == "stream":
                    # One stream at a time: what the proxy adds to a stream by itself. Then 256 at once:
                    # capacity and stalls, where the rig's own core (load generator + upstream pacing
                    # 12,800 chunks/s) dominates the tail of every target, direct included.
                    m.setdefault("streams_c1", {})[name] = self.stream(
                        f"{spec.name}-{name}-c1", url, spec, watch, 1
                    )
                    # Time to first byte needs more samples than a window of 1 s streams gives (20 s:
                    # 20 streams, so "p99" is the maximum): short streams, one at a time, ~300 of them.
                    m.setdefault("ttfb_c1", {})[name] = self.stream(
                        f"{spec.name}-{name}-ttfb", url, spec, watch, 1, body=STREAM_TTFB_BODY
                    )
                    m.setdefault("streams", {})[name] = self.stream(
                        f"{spec.name}-{name}", url, spec, watch, STREAM_CONCURRENCY
                    )
                else:
                    m.setdefault("c1", {})[name] = self.closed(
                        f"{spec.name}-{name}-c1", url, spec, 1, self.dur.c1, watch
                    )
                    m.setdefault("throughput", {})[name] = self.closed(
                        f"{spec.name}-{name}-c{THROUGHPUT_CONNECTIONS}",
                        url,
                        spec,
                        THROUGHPUT_CONNECTIONS,
                        self.dur.throughput,
                        watch,
                        warmup=self.dur.throughput_warmup,
                    )
                self.progress(spec.name, name, m)
            if spec.kind == "compare":
                result["rounds"] = self.rounds(spec, dict(targets))
            for name, child in targets:
                if name != "direct":
                    result["processes"][name] = procstat.memory(child.pid).as_dict()
        finally:
            for child in started:
                self.sup.stop(child)
        return result

    def rounds(self, spec: ScenarioSpec, targets: dict[str, Child]) -> list[dict[str, float]]:
        """The minimal proxy and the gateway at c=16 in short windows back to back, in ABBA order.
        On a shared VM the machine's speed drifts by 10-30 % over minutes, so two 15-s windows taken
        a minute apart can move the ratio by more than the code does; rounds taken seconds apart, with
        the order alternating, cancel that drift, and their spread shows how far one round can move."""
        pair = [name for name in ("minimal", "gateway") if name in targets]
        if len(pair) < 2 or self.dur.rounds <= 0:
            return []
        out = []
        for i in range(self.dur.rounds):
            row: dict[str, float] = {}
            for name in pair if i % 2 == 0 else reversed(pair):
                child = targets[name]
                watch = {"target": child.pid}
                url = f"http://{HOST}:{child.port}"
                label = f"{spec.name}-{name}-round{i}"
                r = self.closed(label, url, spec, THROUGHPUT_CONNECTIONS, self.dur.round_s, watch, warmup=1)
                row[name] = float(r["rps"])
            row["ratio"] = round(row["gateway"] / row["minimal"], 3) if row["minimal"] else 0.0
            out.append(row)
        ratios = ", ".join(f"{r['ratio']:.3f}" for r in out)
        print(f"  {spec.name:<13} rounds      gateway / minimal, interleaved: {ratios}", flush=True)
        return out

    def run_workers(self, spec: ScenarioSpec) -> dict[str, Any]:
        up, up_url, impl = self.upstream(spec.upstream)
        result: dict[str, Any] = {"upstream": impl, "measurements": {"throughput": {}}, "processes": {}}
        for workers, cpus in ((1, self.pin.target), (2, self.pin.both)):
            gw = self.start_gateway(spec, up_url, workers=workers, cpus=cpus)
            try:
                name = f"gateway_w{workers}"
                watch = {"target": gw.pid, "upstream": up.pid, "redis": self.redis_child().pid}
                result["measurements"]["throughput"][name] = self.closed(
                    f"{spec.name}-w{workers}",
                    f"http://{HOST}:{gw.port}",
                    spec,
                    THROUGHPUT_CONNECTIONS,
                    self.dur.throughput,
                    watch,
                )
                result["processes"][name] = procstat.memory(gw.pid).as_dict()
                self.progress(spec.name, name, result["measurements"])
            finally:
                self.sup.stop(gw)
        if not self.pin.enabled:
            self.note("workers2 without pinning compares 1 vs 2 workers on the same unpinned cores")
        return result

    def run_idle(self, spec: ScenarioSpec) -> dict[str, Any]:
        _, up_url, impl = self.upstream(spec.upstream)
        result: dict[str, Any] = {"upstream": impl, "processes": {}}
        for name in ("gateway", "minimal"):
            if name == "gateway":
                child = self.start_gateway(spec, up_url)
            else:
                child = self.start_minimal(spec.name, up_url)
            try:
                time.sleep(self.dur.idle_wait)
                after_start = procstat.memory(child.pid).as_dict()
                self.closed(
                    f"{spec.name}-{name}-traffic",
                    f"http://{HOST}:{child.port}",
                    spec,
                    4,
                    1.0,
                    {},
                    driver="python",
                )
                time.sleep(self.dur.idle_wait)
                result["processes"][name] = {
                    "after_start": after_start,
                    "after_traffic": procstat.memory(child.pid).as_dict(),
                }
            finally:
                self.sup.stop(child)
        print(f"  idle RSS: {result['processes']}", flush=True)
        return result

    def run_soak(self, spec: ScenarioSpec) -> dict[str, Any]:
        up, up_url, impl = self.upstream(spec.upstream)
        minutes = self.args.soak_minutes or (0.5 if self.args.quick else 10)
        gw = self.start_gateway(spec, up_url)
        try:
            watch = {"target": gw.pid, "upstream": up.pid}
            url = f"http://{HOST}:{gw.port}"
            peak = self.closed(
                f"{spec.name}-max", url, spec, THROUGHPUT_CONNECTIONS, self.dur.throughput, watch
            )
            rate = max(1.0, 0.5 * float(peak["rps"]))
            print(f"  soak: {minutes} min open loop at {rate:.0f} req/s (50% of {peak['rps']})", flush=True)
            duration = minutes * 60
            out = self.workdir / "loadgen-soak.json"
            argv = [
                python_cmd(),
                str(HERE / "loadgen.py"),
                "--url",
                url + "/v1/chat/completions",
                "--scenario",
                str(SCEN / spec.body),
                "--out",
                str(out),
                *spec.keys,
                "--mode",
                "open",
                "--rate",
                f"{rate:.1f}",
                "--duration",
                str(duration),
                "--warmup",
                str(self.dur.warmup),
                "--max-inflight",
                "512",
                "--watch-pid",
                f"target={gw.pid}",
            ]
            lg = self.sup.start("loadgen-soak", argv, self.pin.aux)
            samples = self.sample_rss(gw, lg, duration + self.dur.warmup + 120)
            if lg.proc.returncode != 0:
                raise RuntimeError(f"soak load generator failed:\n{lg.log_tail()}")
            self.sup.stop(lg)
            load = orjson.loads(out.read_bytes())
        finally:
            self.sup.stop(gw)
        return {
            "upstream": impl,
            "minutes": minutes,
            "rate": rate,
            "max_rps": peak["rps"],
            "load": load,
            "rss_samples": samples,
            **rss_growth(samples),
        }

    def sample_rss(self, gw: Child, lg: Child, timeout: float) -> list[dict[str, float]]:
        period = 2.0 if self.args.quick else self.dur.soak_sample_s
        samples: list[dict[str, float]] = []
        t0 = time.monotonic()
        while lg.proc.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(min(period, max(0.0, t0 + (len(samples) + 1) * period - time.monotonic())))
            mem = procstat.memory(gw.pid)
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_total_mb": round(mem.rss_total_mb, 1),
                    "rss_max_mb": round(mem.rss_max_mb, 1),
                }
            )
        lg.proc.wait(10)
        return samples

    def redis_child(self) -> Child:
        return next(c for c in self.sup.children if c.name == "redis")

    def progress(self, scenario: str, target: str, m: dict[str, dict[str, dict[str, Any]]]) -> None:
        parts = []
        for kind, by_target in m.items():
            r = by_target.get(target)
            if r:
                lat = r["latency_ms"]
                text = f"{kind}: {r['rps']:.0f} req/s p50 {lat['p50']} ms p99 {lat['p99']} ms"
                if "ttfb_ms" in r:
                    text += f" ttfb p99 {r['ttfb_ms']['p99']} ms gap p99 {r['gap_ms']['p99']} ms"
                parts.append(text + (f" errors {r['errors']}" if r["error_count"] else ""))
        print(f"  {scenario:<13} {target:<11} " + " | ".join(parts), flush=True)

    def run_instructions(self, spec: ScenarioSpec) -> dict[str, Any]:
        """CPU instructions per request, counted by callgrind: the same count for the same code and
        inputs however busy the machine is, so it compares code where req/s on a shared 2-core VM
        moves by 10-20 % between runs. User-space only (the kernel's socket work is not counted)."""
        _, up_url, impl = self.upstream(spec.upstream)
        result: dict[str, Any] = {"upstream": impl, "measurements": {"instructions": {}}}
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            self.note("instructions: valgrind is not installed (apt-get install -y valgrind); skipped")
            result["skipped"] = "valgrind not installed"
            return result
        for name in ("minimal", "gateway"):
            dump = self.workdir / f"callgrind-{name}.out"
            wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dump}"]
            if name == "gateway":
                child = self.start_gateway(spec, up_url, wrap=wrap, ready_s=600)
            else:
                child = self.start_minimal(spec.name, up_url, wrap=wrap, ready_s=600)
            try:
                url = f"http://{HOST}:{child.port}"
                # Unmeasured traffic first: valgrind translates code on first use, and the caches and
                # pools fill; then the counters are zeroed and switched on for the measured window only.
                self.closed(f"{spec.name}-{name}-warm", url, spec, THROUGHPUT_CONNECTIONS, 5, {}, warmup=0)
                control = ["callgrind_control"]
                for command in (["-z"], ["-i", "on"]):
                    subprocess.run([*control, *command, str(child.pid)], check=True, capture_output=True)
                m = self.closed(
                    f"{spec.name}-{name}",
                    url,
                    spec,
                    THROUGHPUT_CONNECTIONS,
                    self.dur.instructions,
                    {},
                    warmup=0,
                )
                for command in (["-i", "off"], ["-d"]):
                    subprocess.run([*control, *command, str(child.pid)], check=True, capture_output=True)
                total = _callgrind_total(dump, child.pid)
                ok = int(m.get("ok") or 0)
                m["instructions"] = total
                m["instructions_per_request"] = round(total / ok) if ok else None
                result["measurements"]["instructions"][name] = m
                print(
                    f"  {spec.name:<13} {name:<11} {m['instructions_per_request']} instructions per request "
                    f"({ok} requests)",
                    flush=True,
                )
            finally:
                self.sup.stop(child)
        return result

    def run_scenario(self, name: str) -> dict[str, Any]:
        spec = SCENARIOS[name]
        self.flush_redis()
        runner: Callable[[ScenarioSpec], dict[str, Any]] = {
            "compare": self.run_compare,
            "stream": self.run_compare,
            "workers": self.run_workers,
            "idle": self.run_idle,
            "soak": self.run_soak,
            "instructions": self.run_instructions,
        }[spec.kind]
        t0 = time.monotonic()
        print(f"[{name}] {spec.what}", flush=True)
        result = runner(spec)
        result.update(
            description=spec.what,
            config=str(self.args.configs_dir / spec.config),
            body=spec.body,
            kind=spec.kind,
            wall_s=round(time.monotonic() - t0, 1),
        )
        return result


def rss_growth(samples: list[dict[str, float]]) -> dict[str, float | None]:
    """Growth from the first sample (taken after warmup) to the last and to the peak."""
    if len(samples) < 2:
        return {"rss_growth_pct": None, "rss_peak_growth_pct": None}
    first = samples[0]["rss_total_mb"] or 1.0
    return {
        "rss_growth_pct": round((samples[-1]["rss_total_mb"] - first) / first * 100, 2),
        "rss_peak_growth_pct": round((max(s["rss_total_mb"] for s in samples) - first) / first * 100, 2),
    }


# --------------------------------------------------------------------------- metadata


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def tool_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
        return None
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    if not text:
        return None
    # "wrk debian/4.1.0 [epoll] Copyright ...", "nginx version: nginx/1.22.1", "Redis server v=7.0.15 sha=..."
    first = text[0].split(" Copyright")[0].removeprefix("nginx version: ")
    return " ".join(w for w in first.split() if not w.startswith(("sha=", "malloc=", "bits=", "build=")))


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "wrk": tool_version(["wrk", "--version"]),
        "nginx": tool_version([find_nginx() or "nginx", "-v"]),
        "redis": tool_version(["redis-server", "--version"]),
    }


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the gateway load tests and write a JSON + Markdown report.")
    p.add_argument("--quick", action="store_true", help="a few seconds per measurement (~1-2 min in all)")
    p.add_argument("--scenarios", help=f"comma list from {', '.join(SCENARIOS)} (default: all but soak)")
    p.add_argument("--duration", type=float, help="seconds per measurement (overrides the defaults)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    p.add_argument(
        "--configs-dir", type=Path, default=CONFIGS, help="gateway configs (full.yaml, many_keys.yaml)"
    )
    p.add_argument(
        "--upstream",
        choices=("auto", "nginx", "mock"),
        default="auto",
        help="static upstream: nginx when installed (auto), or the mock with 0 latency",
    )
    p.add_argument(
        "--driver",
        choices=("auto", "python", "wrk"),
        default="auto",
        help="closed-loop driver: wrk when installed (auto) or the Python generator",
    )
    p.add_argument("--soak-minutes", type=float, default=0.0, help="add the soak scenario for M minutes")
    p.add_argument(
        "--gateway-cmd",
        help=f"command template for the gateway (default: {DEFAULT_GATEWAY_CMD!r}); "
        "placeholders {python} {host} {port} {config} {workers} {upstream} {redis_url}",
    )
    p.add_argument(
        "--mock-cmd", help=f"command template for the mock upstream (default: {DEFAULT_MOCK_CMD!r})"
    )
    p.add_argument(
        "--peer", choices=("litellm", "portkey"), help="also measure another gateway (needs it installed)"
    )
    p.add_argument(
        "--peer-home",
        type=Path,
        default=HERE / ".peers" / "portkey",
        help="--peer portkey: where `npm install --prefix DIR @portkey-ai/gateway` put it",
    )
    p.add_argument("--peer-cmd", help="command template for a peer target: {python} {host} {port} {upstream}")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument("--keep-work", action="store_true", help="keep the temp dir with logs and raw results")
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> list[str]:
    names = (
        [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else list(DEFAULT_ORDER)
    )
    if args.soak_minutes and "soak" not in names:
        names.append("soak")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    return names


def had_errors(results: dict[str, Any]) -> bool:
    """Any failed request in any measurement (the target logs then explain it)."""
    for s in results["scenarios"].values():
        for by_target in s.get("measurements", {}).values():
            if any(r.get("error_count") for r in by_target.values()):
                return True
        if s.get("load", {}).get("error_count"):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args)
    pin = Pinning(enabled=not args.no_pin)
    if pin.warning:
        print(f"WARNING: {pin.warning}", file=sys.stderr, flush=True)
    if pin.enabled:  # keep this orchestrator off the measured core too
        os.sched_setaffinity(0, {int(pin.aux)})
    now = dt.datetime.now().astimezone()
    load_before = load_average()
    commit = git("rev-parse", "--short=10", "HEAD") or "nocommit"
    # The tree as the measured processes load it: notes edited during a long run do not make it dirty.
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    workdir = Path(tempfile.mkdtemp(prefix="loadtest-"))
    sup = Supervisor(workdir, pin)
    run = Run(args, sup, pin, Durations.pick(args.quick, args.duration), workdir)
    if pin.warning:
        run.warnings.append(pin.warning)
    if load_before > 0.5:
        run.note(
            f"the machine was not idle at start (1-min load average {load_before}): expect noisy numbers"
        )
    results: dict[str, Any] = {"scenarios": {}}
    failed: dict[str, str] = {}
    print(f"logs and raw results: {workdir}", flush=True)
    try:
        with terminating_signals():
            run.start_redis()
            for name in names:
                try:
                    results["scenarios"][name] = run.run_scenario(name)
                except (StartupError, RuntimeError) as exc:
                    failed[name] = str(exc)
                    print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping children", file=sys.stderr, flush=True)
        return 130
    finally:
        sup.stop_all()
    results["meta"] = {
        "date": now.isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "machine": machine_info(),
        "load_average_1m": {"start": load_before, "end": load_average()},
        "pinning": pin.describe(),
        "quick": args.quick,
        "durations": vars(run.dur),
        "driver": args.driver,
        "argv": sys.argv[1:],
        "gateway_cmd": args.gateway_cmd or DEFAULT_GATEWAY_CMD,
        "warnings": run.warnings,
        "failed": failed,
        "upstreams": {k: v[2] for k, v in run.upstreams.items()},
    }
    keep = args.keep_work or bool(failed) or had_errors(results)
    results["meta"]["logs"] = str(workdir) if keep else None
    results["derived"] = report.derive(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{now:%Y-%m-%d-%H%M%S}-{commit}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    stem.with_suffix(".md").write_text(report.render(results))
    print(f"wrote {stem}.json and {stem}.md", flush=True)
    if keep:
        print(f"kept logs (failures or errors to look into): {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
