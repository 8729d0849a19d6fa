"""Derived numbers, target checks and the Markdown report for a run.py results file.

python loadtests/report.py loadtests/results/<date>-<commit>.json   # re-render the .md
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

Result = dict[str, Any]

# The targets: (id, scenario, what, limit, "le"/"ge").
TARGETS = (
    ("gateway_c1_added_p50_ms", "miss_full", "added latency at concurrency 1, p50 (ms)", 0.8, "le"),
    ("gateway_c1_added_p99_ms", "miss_full", "added latency at concurrency 1, p99 (ms)", 1.5, "le"),
    ("throughput_vs_minimal", "miss_full", "max throughput, fraction of the minimal proxy", 0.60, "ge"),
    (
        "throughput_vs_minimal_median",
        "miss_full",
        "same, median of the interleaved rounds (each round: both, seconds apart)",
        0.60,
        "ge",
    ),
    ("stream_c1_added_ttfb_p99_ms", "stream_paced", "streaming added TTFB p99, one stream (ms)", 2.0, "le"),
    ("stream_c1_added_gap_p99_ms", "stream_paced", "streaming added gap p99, one stream (ms)", 0.2, "le"),
    ("stream_added_ttfb_p99_ms", "stream_paced", "streaming added TTFB p99, 256 streams (ms)", 2.0, "le"),
    ("stream_added_gap_p99_ms", "stream_paced", "streaming added gap p99, 256 streams (ms)", 0.2, "le"),
    ("stream_failed_streams", "stream_paced", "paced streams (one, then 256): stalled or failed", 0, "le"),
    ("idle_rss_mb_per_worker", "idle_rss", "idle RSS per worker (MB)", 100.0, "le"),
    ("soak_rss_growth_pct", "soak", "RSS growth over the soak (%)", 10.0, "le"),
    ("workers2_scaling", "workers2", "throughput --workers 2 / --workers 1", 1.7, "ge"),
)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def _count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def cpu_per_request_ms(r: Result | None) -> float | None:
    cpu, ok = _get(r, "cpu_s", "target"), _get(r, "ok")
    return round(cpu / ok * 1000, 4) if cpu is not None and ok else None


def cpu_util(r: Result | None, who: str = "target") -> float | None:
    cpu, elapsed = _get(r, "cpu_s", who), _get(r, "elapsed_s")
    return round(cpu / elapsed, 3) if cpu is not None and elapsed else None


def aux_core_util(r: Result | None) -> float | None:
    """CPU used by everything sharing the load generator's core, as a fraction of one core."""
    elapsed = _get(r, "elapsed_s")
    cpu = _get(r, "cpu_s") or {}
    parts = [cpu.get(k) for k in ("loadgen", "upstream", "redis")]
    if not elapsed or all(p is None for p in parts):
        return None
    return round(sum(float(p or 0.0) for p in parts) / float(elapsed), 3)


def others_on_core(r: Result | None, core: str | None) -> float | None:
    """Share of the target's core used by processes other than the target (e.g. other tenants)."""
    busy, util = _get(r, "cores", core or "", "busy"), cpu_util(r)
    if busy is None or util is None:
        return None
    return round(max(0.0, float(busy) - util), 3)


def derive_scenario(s: Result, target_core: str | None = None) -> Result:
    m = s.get("measurements", {})
    out: Result = {}
    c1, tp, st = m.get("c1", {}), m.get("throughput", {}), m.get("streams", {})
    for target in ("minimal", "peer", "gateway"):
        if target in c1 and "direct" in c1:
            for p in ("p50", "p90", "p99", "p99.9"):
                out[f"{target}_c1_added_{p}_ms"] = _sub(
                    _get(c1, target, "latency_ms", p), _get(c1, "direct", "latency_ms", p)
                )
    rounds = s.get("rounds") or []
    if rounds:
        ratios = sorted(float(r["ratio"]) for r in rounds)
        out["throughput_vs_minimal_rounds"] = [float(r["ratio"]) for r in rounds]
        out["throughput_vs_minimal_median"] = round(statistics.median(ratios), 3)
    if "gateway" in tp:
        gw_rps = _get(tp, "gateway", "rps")
        out["throughput_vs_minimal"] = _ratio(gw_rps, _get(tp, "minimal", "rps"))
        out["direct_over_gateway"] = _ratio(_get(tp, "direct", "rps"), gw_rps)
        out["gateway_cpu_util"] = cpu_util(tp.get("gateway"))
        out["upstream_cpu_util_during_gateway"] = cpu_util(tp.get("gateway"), "upstream")
        out["aux_core_util_during_gateway"] = aux_core_util(tp.get("gateway"))
        out["direct_aux_core_util"] = aux_core_util(tp.get("direct"))
        out["others_on_gateway_core"] = others_on_core(tp.get("gateway"), target_core)
        out["gateway_core_steal"] = _get(tp, "gateway", "cores", target_core or "", "steal")
    c1_ttfb = m.get("ttfb_c1", {})
    for prefix, runs in (("stream", st), ("stream_c1", m.get("streams_c1", {})), ("ttfb_c1", c1_ttfb)):
        if "gateway" in runs and "direct" in runs:
            for metric in ("ttfb_ms", "gap_ms"):
                for p in ("p50", "p99", "p99.9"):
                    out[f"{prefix}_added_{metric[:-3]}_{p}_ms"] = _sub(
                        _get(runs, "gateway", metric, p), _get(runs, "direct", metric, p)
                    )
    if "gateway" in c1_ttfb and "direct" in c1_ttfb:
        # One stream's TTFB comes from the short streams (hundreds of samples) when they were measured.
        for p in ("p50", "p99", "p99.9"):
            out[f"stream_c1_added_ttfb_{p}_ms"] = out[f"ttfb_c1_added_ttfb_{p}_ms"]
    if "gateway" in st and "direct" in st:
        runs = [st["gateway"], _get(m, "streams_c1", "gateway") or {}, _get(m, "ttfb_c1", "gateway") or {}]
        out["stream_failed_streams"] = sum(
            int(g.get("stalls", 0)) + int(g.get("error_count", 0)) for g in runs
        )
    if "gateway_w1" in tp and "gateway_w2" in tp:
        out["workers2_scaling"] = _ratio(_get(tp, "gateway_w2", "rps"), _get(tp, "gateway_w1", "rps"))
    if s.get("kind") == "idle":
        out["idle_rss_mb_per_worker"] = _get(s, "processes", "gateway", "after_traffic", "rss_max_mb")
    if s.get("kind") == "soak":
        out["soak_rss_growth_pct"] = s.get("rss_growth_pct")
    ins = m.get("instructions", {})
    if "gateway" in ins and "minimal" in ins:
        gw, mini = (
            _get(ins, "gateway", "instructions_per_request"),
            _get(ins, "minimal", "instructions_per_request"),
        )
        out["instructions_per_request"] = gw
        out["minimal_instructions_per_request"] = mini
        # The throughput ratio the instruction counts predict if the kernel's share were zero.
        out["instructions_minimal_over_gateway"] = _ratio(mini, gw)
    return out


def derive(results: Result) -> Result:
    pin = _get(results, "meta", "pinning") or {}
    core = str(pin.get("target_cpus")) if pin.get("enabled") else None
    per = {name: derive_scenario(s, core) for name, s in results.get("scenarios", {}).items()}
    checks = []
    for key, scenario, what, limit, op in TARGETS:
        value = _get(per, scenario, key)
        passed = None if value is None else (value <= limit if op == "le" else value >= limit)
        checks.append(
            {
                "id": key,
                "scenario": scenario,
                "what": what,
                "value": value,
                "limit": limit,
                "op": op,
                "pass": passed,
            }
        )
    return {"scenarios": per, "targets": checks}


# --------------------------------------------------------------------------- Markdown


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def _rss(proc: Result | None) -> str:
    if not proc:
        return "—"
    if proc.get("pids", 1) > 1:
        total = _f(proc["peak_rss_total_mb"], 1)
        return f"{_f(proc['peak_rss_max_mb'], 1)} max/proc ({total} in {proc['pids']})"
    return _f(proc.get("peak_rss_max_mb"), 1)


def _errors(r: Result) -> str:
    parts = [f"{k}: {v}" for k, v in sorted(r.get("errors", {}).items())]
    if r.get("dropped"):
        parts.append(f"dropped: {r['dropped']}")
    return ", ".join(parts) or "0"


def _latency_table(s: Result, measurements: dict[str, dict[str, Result]]) -> list[str]:
    lines = [
        "| measurement | target | driver | RPS | p50 | p90 | p99 | p99.9 | max | added p50 / p99 vs direct "
        "| CPU/req (ms) | CPU util | peak RSS (MB) | errors |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    labels = {"c1": "concurrency 1", "throughput": "max throughput (c=16)"}
    for kind, by_target in measurements.items():
        direct = by_target.get("direct")
        for target, r in by_target.items():
            lat = r["latency_ms"]
            added = "—"
            if direct is not None and target != "direct":
                added = (
                    f"{_signed(_sub(lat['p50'], direct['latency_ms']['p50']))} / "
                    f"{_signed(_sub(lat['p99'], direct['latency_ms']['p99']))}"
                )
            util = cpu_util(r)
            lines.append(
                f"| {labels.get(kind, kind)} | {target} | {r['driver']} | {_f(r['rps'], 0)} "
                f"| {_f(lat['p50'])} "
                f"| {_f(lat['p90'])} | {_f(lat['p99'])} | {_f(lat['p99.9'])} | {_f(lat['max'])} | {added} "
                f"| {_f(cpu_per_request_ms(r))} | {'—' if util is None else f'{util:.0%}'} "
                f"| {_rss(_get(s, 'processes', target))} | {_errors(r)} |"
            )
    return lines


def _stream_table(s: Result, by_target: dict[str, Result]) -> list[str]:
    lines = [
        "| target | streams/s | total p50 | TTFB p50 | TTFB p99 | TTFB p99.9 | gap p50 | gap p99 | gap p99.9 "
        "| gap max | added TTFB p99 | added gap p99 | stalls | CPU/stream (ms) | CPU util | peak RSS (MB) "
        "| errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    direct = by_target.get("direct")
    for target, r in by_target.items():
        t, g = r["ttfb_ms"], r["gap_ms"]
        add_t = add_g = "—"
        if direct is not None and target != "direct":
            add_t = _signed(_sub(t["p99"], direct["ttfb_ms"]["p99"]))
            add_g = _signed(_sub(g["p99"], direct["gap_ms"]["p99"]))
        util = cpu_util(r)
        lines.append(
            f"| {target} | {_f(r['rps'], 1)} | {_f(r['latency_ms']['p50'])} | {_f(t['p50'])} "
            f"| {_f(t['p99'])} "
            f"| {_f(t['p99.9'])} | {_f(g['p50'])} | {_f(g['p99'])} | {_f(g['p99.9'])} | {_f(g['max'])} "
            f"| {add_t} | {add_g} | {r.get('stalls', 0)} | {_f(cpu_per_request_ms(r))} "
            f"| {'—' if util is None else f'{util:.0%}'} | {_rss(_get(s, 'processes', target))} "
            f"| {_errors(r)} |"
        )
    return lines


def _repo_relative(path: str) -> str:
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return path.removeprefix(root)


def _header(meta: Result) -> list[str]:
    mach = meta.get("machine", {})
    pin = meta.get("pinning", {})
    pin_text = (
        f"target (gateway / proxy) on CPU {pin.get('target_cpus')}; upstream, Redis and load generator "
        f"on CPU {pin.get('aux_cpus')}"
        if pin.get("enabled")
        else f"NOT pinned: {pin.get('warning')}"
    )
    dur = meta.get("durations", {})
    mode = "quick" if meta.get("quick") else "full"
    return [
        f"# Gateway load test — {meta.get('date', '?')}",
        "",
        "| | |",
        "|---|---|",
        f"| date | {meta.get('date')} |",
        f"| commit | `{meta.get('commit')}`{' (uncommitted changes)' if meta.get('dirty') else ''} |",
        f"| CPU | {mach.get('cpu_model')} — nproc {mach.get('nproc')} |",
        f"| kernel | {mach.get('kernel')} |",
        f"| memory | {mach.get('memory_gib')} GiB |",
        f"| 1-min load average | start {_get(meta, 'load_average_1m', 'start')}, "
        f"end {_get(meta, 'load_average_1m', 'end')} (the run itself adds ~1-2) |",
        f"| python / wrk / nginx / redis | {mach.get('python')} / {mach.get('wrk') or 'absent'} / "
        f"{mach.get('nginx') or 'absent'} / {mach.get('redis') or 'absent'} |",
        f"| pinning | {pin_text} |",
        f"| upstreams | {', '.join(f'{k}: {v}' for k, v in meta.get('upstreams', {}).items()) or '—'} |",
        f"| closed-loop driver | {meta.get('driver')} (per row below); streams and open loop: python |",
        f"| mode | {mode}: c=1 {dur.get('c1')} s, c=16 {dur.get('throughput')} s, "
        f"streams {dur.get('stream')} s, "
        f"warmup {dur.get('warmup')} s (c=16 after c=1: {dur.get('throughput_warmup')} s) |",
        f"| gateway command | `{meta.get('gateway_cmd')}` |",
        "",
    ]


def _targets(derived: Result) -> list[str]:
    lines = ["## Targets", "", "| target | scenario | measured | limit | result |", "|---|---|--:|--:|---|"]
    for t in derived["targets"]:
        verdict = "not measured" if t["pass"] is None else ("PASS" if t["pass"] else "**FAIL**")
        op = "≤" if t["op"] == "le" else "≥"
        lines.append(f"| {t['what']} | {t['scenario']} | {_f(t['value'])} | {op} {t['limit']} | {verdict} |")
    return [*lines, ""]


def _bottleneck(results: Result) -> list[str]:
    lines = [
        "## Is the upstream the bottleneck?",
        "",
        "Max throughput at c=16; CPU columns are over the gateway's window. If direct RPS is well above "
        "the gateway's, the load generator's core is not saturated and the gateway uses its whole core, "
        'the gateway is what is being measured. "Others on its core" is CPU used on the gateway\'s core '
        "by anything else (another tenant's tests, say): it makes the run unrepresentative.",
        "",
        "| scenario | direct RPS | gateway RPS | direct / gateway | gateway CPU util | others on its core "
        "| upstream CPU util | load-gen core busy | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, d in results["derived"]["scenarios"].items():
        if d.get("direct_over_gateway") is None:
            continue
        tp = results["scenarios"][name]["measurements"]["throughput"]
        ratio, aux = d["direct_over_gateway"], d.get("aux_core_util_during_gateway")
        lines.append(
            f"| {name} | {_f(tp['direct']['rps'], 0)} | {_f(tp['gateway']['rps'], 0)} | {ratio:.1f}x "
            f"| {_pct(d.get('gateway_cpu_util'))} | {_pct(d.get('others_on_gateway_core'))} "
            f"| {_pct(d.get('upstream_cpu_util_during_gateway'))} | {_pct(aux)} | {_verdict(d)} |"
        )
    return [*lines, ""]


def _verdict(d: Result) -> str:
    ratio, aux = d["direct_over_gateway"], d.get("aux_core_util_during_gateway")
    util, others = d.get("gateway_cpu_util") or 0.0, d.get("others_on_gateway_core") or 0.0
    if ratio < 2 or (aux is not None and aux >= 0.9):
        return "**upstream or load generator may be limiting**"
    if util < 0.8 and others > 0.15:
        return f"**other processes took {others:.0%} of the gateway's core: rerun on an idle machine**"
    if util < 0.8:
        return "upstream is not the bottleneck; the gateway is not CPU-bound either (it waits on something)"
    return "upstream is not the bottleneck; the gateway is CPU-bound"


def _scenario(name: str, s: Result) -> list[str]:
    lines = [f"## {name}", "", f"{s.get('description', '')}.", ""]
    lines.append(
        f"Config `{_repo_relative(s.get('config', ''))}`, body `loadtests/scenarios/{s.get('body')}`, "
        f"upstream {s.get('upstream')}, {s.get('wall_s')} s wall."
    )
    lines.append("")
    m = s.get("measurements", {})
    if "instructions" in m:
        lines += [
            "| target | instructions per request | requests measured |",
            "|---|--:|--:|",
            *(
                f"| {t} | {_count(r.get('instructions_per_request'))} | {_count(r.get('ok'))} |"
                for t, r in m["instructions"].items()
            ),
            "",
        ]
        return [*lines, ""]
    if "streams_c1" in m:
        lines += ["One stream at a time:", "", *_stream_table(s, m["streams_c1"]), ""]
    if "ttfb_c1" in m:
        lines += [
            "One short stream at a time (2 output tokens; the one-stream TTFB target is read here):",
            "",
            *_stream_table(s, m["ttfb_c1"]),
            "",
        ]
    if "streams" in m:
        if "streams_c1" in m:
            lines += ["256 concurrent streams:", ""]
        lines += _stream_table(s, m["streams"])
    elif m:
        lines += _latency_table(s, m)
    if s.get("rounds"):
        lines += [
            "",
            "Interleaved throughput rounds at c=16 (minimal proxy and gateway seconds apart, order "
            "alternating):",
            "",
            "| round | minimal proxy req/s | gateway req/s | gateway / minimal |",
            "|--:|--:|--:|--:|",
        ]
        for i, r in enumerate(s["rounds"], 1):
            lines.append(f"| {i} | {_f(r['minimal'], 0)} | {_f(r['gateway'], 0)} | {_f(r['ratio'])} |")
    if s.get("kind") == "workers":
        w1, w2 = _get(m, "throughput", "gateway_w1", "rps"), _get(m, "throughput", "gateway_w2", "rps")
        lines += [
            "",
            f"Scaling --workers 2 / --workers 1: **{_f(_ratio(w2, w1))}x** "
            "(2 workers get both cores, which they share with the upstream and the load generator, "
            "so this is a lower bound on a 2-core machine).",
        ]
    if s.get("kind") == "idle":
        lines += [
            "| process | RSS after start (max/proc, MB) | RSS after traffic (max/proc, MB) "
            "| total after traffic (MB) | processes |",
            "|---|--:|--:|--:|--:|",
        ]
        for proc, snap in s.get("processes", {}).items():
            a, b = snap["after_start"], snap["after_traffic"]
            lines.append(
                f"| {proc} | {_f(a['rss_max_mb'], 1)} | {_f(b['rss_max_mb'], 1)} "
                f"| {_f(b['rss_total_mb'], 1)} | {b['pids']} |"
            )
    if s.get("kind") == "soak":
        load = s.get("load", {})
        lat = load.get("latency_ms", {})
        samples = s.get("rss_samples", [])
        lines += [
            f"{s.get('minutes')} min open loop at {_f(s.get('rate'), 0)} req/s "
            f"(50% of {_f(s.get('max_rps'), 0)}): served {_f(load.get('ok'))}, "
            f"errors {_errors(load) if load else '—'}; latency from intended send "
            f"time p50 {_f(lat.get('p50'))} / p99 {_f(lat.get('p99'))} / p99.9 {_f(lat.get('p99.9'))} ms.",
            "",
            f"RSS growth first → last sample: **{_f(s.get('rss_growth_pct'), 2)}%** "
            f"(first → peak {_f(s.get('rss_peak_growth_pct'), 2)}%); samples (s: MB): "
            + ", ".join(f"{x['t_s']:.0f}: {x['rss_total_mb']}" for x in samples),
        ]
    return [*lines, ""]


NOTES = """## How to read this

* Latencies are milliseconds, from raw samples. Closed loop: from the actual send. Open loop (soak):
  from the *intended* send time, so queueing is never hidden (no coordinated omission).
* "added vs direct" subtracts the same percentile measured directly against the upstream in this run,
  on the same cores; compare the gateway's column with the minimal proxy's (the floor for any
  aiohttp proxy on this machine).
* CPU/req is the target's utime+stime over the measured window divided by completed requests
  (all processes of the target); CPU util is that CPU time over the window (100% = one core).
  Peak RSS is VmHWM of each process (largest process, and the total for multi-process targets).
* TTFB is the time to the first body chunk of a stream; gaps are between chunk arrivals at the client.
  A stall is a gap > 5x the 20 ms pacing; "errors" include streams that did not end in `data: [DONE]`.
"""


def render(results: Result) -> str:
    meta = results.get("meta", {})
    lines = _header(meta)
    for w in meta.get("warnings", []):
        lines.append(f"> warning: {w}")
    if meta.get("logs"):
        lines.append(f"> process logs and raw load-generator output were kept in `{meta['logs']}`")
    for name, err in meta.get("failed", {}).items():
        lines.append(f"> **scenario {name} failed**: {err.splitlines()[0] if err else ''}")
    lines += ["", *_targets(results["derived"]), *_bottleneck(results)]
    for name, s in results.get("scenarios", {}).items():
        lines += _scenario(name, s)
    lines.append(NOTES)
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1])
    results = orjson.loads(path.read_bytes())
    results["derived"] = derive(results)
    path.with_suffix(".md").write_text(render(results))
    print(f"wrote {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
