"""The server process: health and readiness, Prometheus metrics, JSON logs, graceful shutdown,
multi-worker serving, start-up failures and the event loop. Real processes on loopback only.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.store.memory import MemoryStore
from tests.harness import (
    ADMIN_TOKEN,
    PROVIDER_SECRET,
    ROOT,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    free_port,
    http_json,
    wait_for,
    write_config,
)

DEMO = {"authorization": "Bearer sk-demo"}
# A prompt no label, log line or metric may ever contain.
PROMPT = "purple-elephant-prompt-7f3a"
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
SECRETS = ("sk-demo", "sk-other", PROVIDER_SECRET, ADMIN_TOKEN, PROMPT)
# A model name a client made up: the log may quote it, a metric label must not (unbounded values).
MADE_UP_MODEL = "made-up-model-91b2"


def metrics(gw: GatewayProc) -> tuple[str, list[Sample]]:
    status, text, headers = http_json("GET", gw.url + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")  # Prometheus text exposition format
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return text, samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def log_lines(gw: GatewayProc) -> list[dict[str, Any]]:
    """Every line the gateway wrote; each one must be a JSON object."""
    lines = []
    for line in gw.proc.log().splitlines():
        parsed = orjson.loads(line)
        assert isinstance(parsed, dict), line
        lines.append(parsed)
    return lines


def listening_lines(gw: GatewayProc) -> list[dict[str, Any]]:
    return [line for line in log_lines(gw) if line.get("msg") == "gateway listening"]


def run_gateway_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------- one gateway, embedded store


@pytest.fixture(scope="module")
def gw(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("server")
    proc = GatewayProc(write_config(tmp, base_config(mock.url)))
    yield proc
    proc.stop()


def test_healthz_and_readyz(gw: GatewayProc) -> None:
    status, body, _ = http_json("GET", gw.url + "/healthz")
    assert (status, body) == (200, "ok")
    status, body, headers = http_json("GET", gw.url + "/readyz")
    assert status == 200
    assert body == {"ready": True, "store": "memory", "store_ok": True}
    assert headers["content-type"].startswith("application/json")


def test_uvloop_runs_the_server(gw: GatewayProc) -> None:
    pytest.importorskip("uvloop")
    assert [line["event_loop"] for line in listening_lines(gw)] == ["uvloop"]


@pytest.fixture(scope="module")
def traffic(gw: GatewayProc) -> dict[str, str]:
    """One request of every kind, each with its own request id: name -> request id."""
    sent: dict[str, str] = {}

    def send(name: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        rid = f"traffic-{name}"
        status, _, resp_headers = http_json("POST", gw.url + path, body, {**headers, "x-request-id": rid})
        assert resp_headers["x-request-id"] == rid
        sent[name] = rid
        expected = {"unknown_model": 404, "bad_key": 401, "bad_body": 400}.get(name, 200)
        assert status == expected, (name, status)

    send("chat", "/v1/chat/completions", CHAT, DEMO)
    send(
        "stream",
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        {**DEMO, "x-mock-chunk-delay-ms": "5"},
    )
    send(
        "messages",
        "/v1/messages",
        {"model": "claude-sonnet", "max_tokens": 32, "messages": CHAT["messages"]},
        {"x-api-key": "sk-demo", "anthropic-version": "2023-06-01"},
    )
    send("embeddings", "/v1/embeddings", {"model": "text-embedding-3-small", "input": PROMPT}, DEMO)
    send("completion", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": PROMPT}, DEMO)
    send("unknown_model", "/v1/chat/completions", {**CHAT, "model": MADE_UP_MODEL}, DEMO)
    send("bad_key", "/v1/chat/completions", CHAT, {"authorization": f"Bearer sk-{PROMPT}"})
    send("bad_body", "/v1/chat/completions", {**CHAT, "temperature": PROMPT}, DEMO)
    time.sleep(0.2)  # the access line of a stream is written when it ends
    return sent


def test_metrics_names_and_labels(gw: GatewayProc, traffic: dict[str, str]) -> None:
    _, samples = metrics(gw)
    requests = [s for s in samples if s.name == "llm_gateway_requests_total"]
    assert requests
    for s in requests:
        assert set(s.labels) == {"team", "route", "model", "provider", "operation", "status_class"}
    assert total(samples, "llm_gateway_requests_total", team="demo", model="gpt-4o", provider="openai",
                 operation="chat", status_class="2xx", route="default") == 2  # fmt: skip
    assert total(samples, "llm_gateway_requests_total", model="claude-sonnet", provider="anthropic",
                 operation="chat", status_class="2xx") == 1  # fmt: skip
    assert total(samples, "llm_gateway_requests_total", operation="embeddings", provider="openai") == 1
    assert total(samples, "llm_gateway_requests_total", operation="text_completion", provider="openai") == 1
    # Failures are traffic too, with bounded labels: the client's model name or key never appears.
    assert total(samples, "llm_gateway_requests_total", status_class="4xx") == 3
    assert total(samples, "llm_gateway_requests_total", status_class="4xx", team="-", model="-") == 2
    assert total(samples, "llm_gateway_requests_total", status_class="4xx", team="demo", model="-") == 1

    for histogram, labels in [
        ("llm_gateway_request_duration_seconds", {"operation", "provider"}),
        ("llm_gateway_time_to_first_token_seconds", {"operation", "provider"}),
        ("llm_gateway_upstream_duration_seconds", {"provider", "model"}),
        ("llm_gateway_overhead_seconds", {"operation"}),
    ]:
        counts = [s for s in samples if s.name == f"{histogram}_count"]
        assert counts, histogram
        assert all(set(s.labels) == labels for s in counts), histogram
        assert any(s.name == f"{histogram}_bucket" and s.labels["le"] == "+Inf" for s in samples)
    assert total(samples, "llm_gateway_time_to_first_token_seconds_count", operation="chat") == 1
    assert total(samples, "llm_gateway_request_duration_seconds_count", provider="anthropic") == 1


def test_metric_labels_use_the_otel_vocabulary(gw: GatewayProc, traffic: dict[str, str]) -> None:
    _, samples = metrics(gw)
    providers = {s.labels["provider"] for s in samples if "provider" in s.labels}
    operations = {s.labels["operation"] for s in samples if "operation" in s.labels}
    assert {"openai", "anthropic"} <= providers <= {"openai", "anthropic", "azure.ai.openai", "-"}
    assert operations == {"chat", "embeddings", "text_completion"}
    token_types = {s.labels["token_type"] for s in samples if "token_type" in s.labels}
    assert token_types <= {"input", "output", "cached_input", "cache_creation_input", "reasoning"}


def test_no_key_or_prompt_in_any_metric(gw: GatewayProc, traffic: dict[str, str]) -> None:
    text, samples = metrics(gw)
    for secret in (*SECRETS, MADE_UP_MODEL):
        assert secret not in text
    for s in samples:
        for value in s.labels.values():
            assert not value.startswith("sk-"), s
            assert PROMPT not in value, s


def test_one_json_access_line_per_request(gw: GatewayProc, traffic: dict[str, str]) -> None:
    lines = log_lines(gw)
    access = [
        line for line in lines if line.get("logger") == "gateway.access" and line.get("msg") == "request"
    ]
    for name, rid in traffic.items():
        mine = [line for line in access if line["request_id"] == rid]
        assert len(mine) == 1, (name, mine)
        line = mine[0]
        assert {"ts", "level", "status", "wire"} <= set(line)
        assert line["level"] == "info"
    by_name = {
        name: next(line for line in access if line["request_id"] == rid) for name, rid in traffic.items()
    }
    assert by_name["chat"]["status"] == 200 and by_name["chat"]["team"] == "demo"
    assert by_name["chat"]["model"] == "gpt-4o" and by_name["chat"]["cost_nano"] > 0
    assert by_name["messages"]["wire"] == "anthropic"
    assert by_name["stream"]["status"] == 200
    assert by_name["unknown_model"]["status"] == 404 and by_name["bad_key"]["status"] == 401


def test_no_secret_or_prompt_in_the_log(gw: GatewayProc, traffic: dict[str, str]) -> None:
    text = gw.proc.log()
    for secret in SECRETS:
        assert secret not in text, secret


# ---------------------------------------------------------------- readiness without the store


def test_readyz_stays_ready_while_redis_is_down(mock: MockProvider, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    proc = GatewayProc(write_config(tmp_path, base_config(mock.url)), redis_url=server.url)
    try:
        assert http_json("GET", proc.url + "/readyz")[1] == {
            "ready": True,
            "store": "redis",
            "store_ok": True,
        }
        server.stop()
        status, body, _ = http_json("GET", proc.url + "/readyz")
        assert status == 200
        assert body == {"ready": True, "store": "redis", "store_ok": False}
        assert http_json("GET", proc.url + "/healthz")[0] == 200
        assert http_json("GET", proc.url + "/metrics")[0] == 200
        server.restart()
        deadline = time.monotonic() + 10
        while http_json("GET", proc.url + "/readyz")[1]["store_ok"] is not True:
            assert time.monotonic() < deadline, "store_ok did not recover"
            time.sleep(0.1)
    finally:
        proc.stop()
        server.stop()


# ---------------------------------------------------------------- graceful shutdown


def test_sigterm_lets_a_stream_finish_then_exits_cleanly(mock: MockProvider, tmp_path: Path) -> None:
    cfg = base_config(mock.url)
    grace_s = 10
    cfg["server"]["shutdown_grace_s"] = grace_s
    proc = GatewayProc(write_config(tmp_path, cfg))
    started_ms = int(time.time() * 1000)
    try:
        received, signalled = _stream_through_sigterm(proc)
        code = proc.proc.popen.wait(grace_s)
        assert code == 0, proc.proc.log()[-3000:]
        assert time.monotonic() - signalled < grace_s
    finally:
        proc.stop()

    events = [e for e in received.split(b"\n\n") if e.strip()]
    data_events = [e for e in events if e.startswith(b"data: ")]
    assert data_events[-1] == b"data: [DONE]"
    assert events[-1].startswith(b": x-gateway-cost-usd=")  # written after [DONE]: nothing was cut
    deltas = [orjson.loads(e[6:])["choices"] for e in data_events[:-1]]
    text = "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
    assert len(text.split()) == 20
    assert any(line.get("msg", "").startswith("shutting down") for line in log_lines(proc))

    # After exit, the embedded store's files hold the stream's ledger record.
    store = MemoryStore(tmp_path / "state")
    ledger = asyncio.run(store.ledger("demo", started_ms - 60_000, started_ms + 600_000))
    mine = [r for r in ledger if r.get("client_request_id") == "graceful-stream-1"]
    assert len(mine) == 1, ledger
    record = mine[0]
    assert record["stream"] is True and record["status"] == 200 and record["estimated"] is False
    assert record["usage"]["output_tokens"] == 20
    assert record["cost_nano"] > 0


def _stream_through_sigterm(proc: GatewayProc) -> tuple[bytes, float]:
    """Start a ~1 s stream, SIGTERM the gateway after its first event, check the listener closes
    while the stream is still in flight, then read the stream to its end."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
    try:
        headers = {
            **DEMO,
            "content-type": "application/json",
            "x-request-id": "graceful-stream-1",
            "x-mock-chunk-delay-ms": "50",
            "x-mock-completion-tokens": "20",
        }
        conn.request("POST", "/v1/chat/completions", orjson.dumps({**CHAT, "stream": True}), headers)
        resp = conn.getresponse()
        assert resp.status == 200
        received = resp.readline()  # the stream is flowing
        assert received.startswith(b"data: ")

        proc.proc.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _assert_refuses_new_connections(proc.port, within_s=1.0)
        assert proc.proc.popen.poll() is None, "the gateway exited with a stream in flight"

        received += resp.read()  # to the end of the chunked body
        assert time.monotonic() - signalled > 0.5  # the stream really was still running
        return received, signalled
    finally:
        conn.close()


def _assert_refuses_new_connections(port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.02)


# ---------------------------------------------------------------- several workers


def test_two_workers_share_one_port_and_aggregate_metrics(mock: MockProvider, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    proc = GatewayProc(write_config(tmp_path, base_config(mock.url)), redis_url=server.url, workers=2)
    try:
        deadline = time.monotonic() + 20
        while len(listening_lines(proc)) < 2:
            assert time.monotonic() < deadline, proc.proc.log()[-3000:]
            time.sleep(0.1)
        pids = {line["pid"] for line in listening_lines(proc)}
        assert len(pids) == 2 and proc.proc.pid not in pids  # two worker processes under a supervisor
        assert {line["url"] for line in listening_lines(proc)} == {f"http://127.0.0.1:{proc.port}"}

        for i in range(50):
            body = {**CHAT, "messages": [{"role": "user", "content": f"request {i}"}]}
            status, _, _ = http_json("POST", proc.url + "/v1/chat/completions", body, DEMO)
            assert status == 200

        # Whichever worker answers /metrics reports both workers' counts: its own exactly, the other's
        # as of that worker's last flush (each second: counters and histograms are buffered).
        def both_counted() -> bool:
            _, samples = metrics(proc)
            return total(samples, "llm_gateway_requests_total") == 50

        wait_for("both workers' counts in one scrape", both_counted, timeout=5)
        for _ in range(4):
            _, samples = metrics(proc)
            assert total(samples, "llm_gateway_requests_total") == 50
            assert total(samples, "llm_gateway_requests_total", team="demo", status_class="2xx") == 50
            assert total(samples, "llm_gateway_request_duration_seconds_count") == 50
        assert proc.stop() == 0
    finally:
        proc.stop()
        server.stop()


def test_two_workers_without_redis_refuse_to_start(mock: MockProvider, tmp_path: Path) -> None:
    config = write_config(tmp_path, base_config(mock.url))
    port = free_port()
    run = run_gateway_cli("serve", "--config", str(config), "--port", str(port), "--workers", "2")
    assert run.returncode == 2, run.stderr
    assert "Redis" in run.stderr and "GATEWAY_REDIS_URL" in run.stderr
    assert "Traceback" not in run.stderr
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


# ---------------------------------------------------------------- start-up failures


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda text: text.replace("  port: 0\n", "  port: 0\n  bogus: 1\n"),
            "server.bogus:",
            id="unknown-key",
        ),
        pytest.param(
            lambda text: text.replace("  port: 0\n", "  port: not-a-port\n"), "server.port:", id="wrong-type"
        ),
        pytest.param(lambda text: text.replace("  port: 0\n", "  port: [0\n"), "invalid YAML", id="bad-yaml"),
        pytest.param(
            lambda text: text.replace(f"api_key: {PROVIDER_SECRET}", "api_key: ${GW_TEST_UNSET_VAR}", 1),
            "environment variable GW_TEST_UNSET_VAR is not set",
            id="missing-env",
        ),
        pytest.param(
            lambda text: text.replace("provider: mock-openai\n", "provider: mock-nowhere\n", 1),
            "mock-nowhere",
            id="unknown-provider",
        ),
    ],
)
def test_a_config_error_prints_file_and_line_and_exits_2(
    mock: MockProvider, tmp_path: Path, mutate: Any, expected: str
) -> None:
    good = write_config(tmp_path, base_config(mock.url)).read_text()
    bad_text = mutate(good)
    assert bad_text != good
    path = tmp_path / "bad.yaml"
    path.write_text(bad_text)
    run = run_gateway_cli("serve", "--config", str(path), "--port", str(free_port()))
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    problem = next(line for line in run.stderr.splitlines() if expected in line)
    location = problem.split(": ")[0]
    assert location.startswith(f"{path}:"), problem
    line = int(location.rsplit(":", 1)[1])
    assert 1 <= line <= len(bad_text.splitlines())


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    run = run_gateway_cli("serve", "--config", str(missing), "--port", str(free_port()))
    assert run.returncode == 2
    assert f"{missing}: cannot read" in run.stderr and "Traceback" not in run.stderr


def test_without_uvloop_the_server_falls_back_to_asyncio(mock: MockProvider, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text('raise ImportError("uvloop hidden by the test")\n')
    proc = GatewayProc(write_config(tmp_path, base_config(mock.url)), env={"PYTHONPATH": str(shadow)})
    try:
        assert [line["event_loop"] for line in listening_lines(proc)] == ["asyncio"]
        assert http_json("POST", proc.url + "/v1/chat/completions", CHAT, DEMO)[0] == 200
    finally:
        proc.stop()
