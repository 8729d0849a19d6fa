"""Policy hot reload on a running gateway: under load, with bad files, and without losing spend."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ADMIN_TOKEN, GatewayProc, MockProvider, base_config, http_json

AUTH = {"authorization": "Bearer sk-demo"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 3}
TARGETS = ("gpt-4o-mini", "claude-sonnet", "azure-gpt", "gpt-4o")


def config(mock_url: str, version: int) -> dict[str, Any]:
    cfg = base_config(mock_url)
    cfg["teams"]["demo"]["budget"] = {"usd": 100, "period": "monthly"}
    target = TARGETS[version % len(TARGETS)]
    cfg["routing"] = {"rules": [{"name": f"v{version}", "when": {"models": ["gpt-4o"]}, "route_to": target}]}
    return cfg


def write_atomically(path: Path, text: str) -> None:
    """Like a deploy tool would: the file watcher never sees a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(path: Path, cfg: dict[str, Any]) -> None:
    write_atomically(path, yaml.safe_dump(cfg, sort_keys=False))


def reload(gw: GatewayProc) -> tuple[int, Any]:
    status, body, _ = http_json("POST", gw.url + "/admin/reload", {}, ADMIN)
    return status, body


def route(gw: GatewayProc) -> tuple[str, str]:
    status, body, hdrs = http_json("POST", gw.url + "/v1/chat/completions", BODY, AUTH)
    assert status == 200, body
    return hdrs["x-gateway-route"], hdrs["x-gateway-model"]


def counter(gw: GatewayProc, name: str) -> float:
    _, text, _ = http_json("GET", gw.url + "/metrics")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def spent_usd(gw: GatewayProc) -> float:
    status, body, _ = http_json("GET", gw.url + "/admin/budgets", None, ADMIN)
    assert status == 200, body
    [team] = [t for t in body["data"] if t["team"] == "demo"]
    [scope] = [s for s in team["scopes"] if s["scope"].startswith("team:")]
    return float(scope["spent_usd"])


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProvider
) -> Iterator[tuple[GatewayProc, Path]]:
    path = tmp_path_factory.mktemp("reload") / "gateway.yaml"
    write(path, config(mock.url, 0))
    gw = GatewayProc(path)
    yield gw, path
    gw.stop()


@pytest.fixture
def setup(running: tuple[GatewayProc, Path], mock: MockProvider) -> tuple[GatewayProc, Path]:
    """The shared gateway, back on policy v0."""
    gw, path = running
    write(path, config(mock.url, 0))
    assert reload(gw)[0] == 200
    return running


class Load:
    """Closed-loop clients hammering the gateway from threads until stopped."""

    def __init__(self, gw: GatewayProc, clients: int = 4) -> None:
        self.gw = gw
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.routes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                status, body, hdrs = http_json("POST", self.gw.url + "/v1/chat/completions", BODY, AUTH)
            except OSError as exc:  # a dropped connection is a failed request too
                status, body, hdrs = 0, repr(exc), {}
            with self.lock:
                self.statuses[status] += 1
                self.routes[hdrs.get("x-gateway-route", "-")] += 1
                if status != 200:
                    self.errors.append(f"{status}: {body}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)


def test_hot_reload_under_load_fails_no_request(setup: tuple[GatewayProc, Path], mock: MockProvider) -> None:
    gw, path = setup
    assert route(gw) == ("v0", "gpt-4o-mini")
    with Load(gw) as load:
        for version in range(1, 6):
            write(path, config(mock.url, version))
            status, body = reload(gw)
            assert (status, body) == (200, {"reloaded": True})
            # The very next request runs under the new rule.
            assert route(gw) == (f"v{version}", TARGETS[version % len(TARGETS)])
            time.sleep(0.1)  # let the load run under this policy for a moment
    assert load.errors == []
    assert sum(load.statuses.values()) > 50, load.statuses  # the load really ran across the reloads
    assert set(load.routes) <= {f"v{i}" for i in range(6)}
    assert len(load.routes) >= 3  # ... and saw several policies


BAD_FILES = {
    "syntax": (
        "version: 1\nserver:\n  port: [8080\n",
        "gateway.yaml:4: invalid YAML",
    ),
    "unknown key": (None, "gateway.yaml:{line}: routing.rules[0].bogus_key: unknown key 'bogus_key'"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_keeps_the_old_policy(
    setup: tuple[GatewayProc, Path], mock: MockProvider, kind: str
) -> None:
    gw, path = setup
    write(path, config(mock.url, 1))
    assert reload(gw)[0] == 200
    assert route(gw) == ("v1", "claude-sonnet")
    errors = counter(gw, "llm_gateway_policy_reload_errors_total")

    text, expected = BAD_FILES[kind]
    if text is None:
        cfg = config(mock.url, 2)
        cfg["routing"]["rules"][0]["bogus_key"] = True
        text = yaml.safe_dump(cfg, sort_keys=False)
        line = next(i for i, row in enumerate(text.splitlines(), 1) if "bogus_key" in row)
        expected = expected.format(line=line)
    with Load(gw, clients=2) as load:
        write_atomically(path, text)
        status, body = reload(gw)
        assert status == 400
        message = body["error"]["message"]
        assert "previous policy stays active" in message
        assert f"{path.parent}/{expected}" in message, message
        assert route(gw) == ("v1", "claude-sonnet")  # still the old rule
    assert load.errors == []
    assert set(load.routes) == {"v1"}
    # The explicit reload failed; the file watcher may have tried (and failed) once more.
    assert counter(gw, "llm_gateway_policy_reload_errors_total") >= errors + 1

    # Fixing the file is enough: the next reload applies it.
    write(path, config(mock.url, 3))
    assert reload(gw)[0] == 200
    assert route(gw) == ("v3", "gpt-4o")


def test_spend_survives_a_reload(setup: tuple[GatewayProc, Path], mock: MockProvider) -> None:
    gw, path = setup
    spend_hdr = {**AUTH, "x-mock-prompt-tokens": "50000"}
    initial = spent_usd(gw)
    for _ in range(3):
        status, _, _ = http_json(
            "POST", gw.url + "/v1/chat/completions", {**BODY, "model": "claude-sonnet"}, spend_hdr
        )
        assert status == 200
    before = wait_for_spend(gw, minimum=initial + 0.45)  # 3 x 50k tokens at $3/1M
    write(path, config(mock.url, 2))
    assert reload(gw)[0] == 200
    assert spent_usd(gw) == pytest.approx(before)
    status, _, hdrs = http_json("POST", gw.url + "/v1/chat/completions", BODY, AUTH)
    assert status == 200 and hdrs["x-gateway-route"] == "v2"
    assert float(hdrs["x-gateway-budget-remaining-usd"]) <= 100 - before


def wait_for_spend(gw: GatewayProc, minimum: float, timeout: float = 5.0) -> float:
    """Settlement runs just after the response: poll until it is visible."""
    deadline = time.monotonic() + timeout
    while True:
        spent = spent_usd(gw)
        if spent >= minimum or time.monotonic() > deadline:
            assert spent >= minimum
            return spent
        time.sleep(0.02)
