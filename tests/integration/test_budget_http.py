"""Budgets and rate limits as a client sees them, over HTTP, on both stores (embedded and Redis).

Denials in each wire format (status, body, ``Retry-After``, ``x-should-retry``) and what the
official SDKs do with them; the ``downgrade`` action; per-key and token budgets; RPM/TPM limits;
a raised limit taking effect on reload without touching the spend; ``/admin/budgets`` and the
budget metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.harness import (
    ADMIN_TOKEN,
    GatewayProc,
    MockProvider,
    RedisServer,
    base_config,
    http_json,
    write_config,
)

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HI = [{"role": "user", "content": "hi"}]


def usd_to_nano(text: str) -> int:
    return int(Decimal(text) * 1_000_000_000)


def key(name: str) -> dict[str, str]:
    return {"id": name, "key": f"sk-{name}"}


def team(budget: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"cache": {"mode": "off"}, **extra}
    if budget is not None:
        cfg["budget"] = budget
    return cfg


TEAMS: dict[str, Any] = {
    "deny": team({"usd": "0.001", "period": "daily"}, keys=[key("deny")]),
    "sdk": team({"usd": "0.001", "period": "monthly"}, keys=[key("sdk")]),
    "dg": team(
        {"usd": "0.001", "period": "daily", "action": "downgrade", "downgrade_to": "gpt-4o-mini"},
        keys=[key("dg")],
    ),
    "keyed": team(
        {"usd": "1", "period": "daily"},
        keys=[{**key("k-small"), "budget": {"usd": "0.0001", "period": "weekly"}}, key("k-free")],
    ),
    "tok": team({"tokens": 100, "period": "daily"}, keys=[key("tok")]),
    "schema": team({"tokens": 300, "period": "daily"}, keys=[key("schema")]),
    "rpm": team(rate_limits={"rpm": 3}, keys=[key("rpm")]),
    # A budget too, only so that /admin/budgets shows when its settlement (and TPM refund) has landed.
    "tpm": team({"usd": "100", "period": "daily"}, rate_limits={"tpm": 150}, keys=[key("tpm")]),
    "metered": team(
        {"usd": "0.001", "tokens": 100_000, "period": "daily"}, rate_limits={"rpm": 3}, keys=[key("metered")]
    ),
}


@pytest.fixture(scope="module", params=["memory", "redis"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mock: MockProvider
) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp(f"budget-http-{request.param}")
    server = RedisServer(tmp / "redis") if request.param == "redis" else None
    cfg = base_config(mock.url)
    cfg["teams"] = TEAMS
    proc = GatewayProc(write_config(tmp, cfg), redis_url=server.url if server else None)
    yield proc
    proc.stop()
    if server is not None:
        server.stop()


def chat(
    gw: GatewayProc, team_key: str, max_tokens: int | None = 10, model: str = "gpt-4o", **headers: str
) -> tuple[int, Any, dict[str, str]]:
    body: dict[str, Any] = {"model": model, "messages": HI}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    hdrs = {"authorization": f"Bearer {team_key}", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return http_json("POST", gw.url + "/v1/chat/completions", body, hdrs)


def messages(gw: GatewayProc, team_key: str, max_tokens: int) -> tuple[int, Any, dict[str, str]]:
    body = {"model": "claude-sonnet", "max_tokens": max_tokens, "messages": HI}
    headers = {"x-api-key": team_key, "anthropic-version": "2023-06-01"}
    return http_json("POST", gw.url + "/v1/messages", body, headers)


def scopes(gw: GatewayProc, team_name: str) -> dict[str, dict[str, Any]]:
    status, body, _ = http_json("GET", gw.url + "/admin/budgets", headers=ADMIN)
    assert status == 200, body
    entry = next(t for t in body["data"] if t["team"] == team_name)
    return {s["scope"]: s for s in entry["scopes"]}


def settled(gw: GatewayProc, team_name: str, scope: str | None = None) -> dict[str, Any]:
    """A scope once its settlements have landed (they are written after the response)."""
    name = scope or f"team:{team_name}"
    deadline = time.monotonic() + 10
    while True:
        found = scopes(gw, team_name)[name]
        if found["reserved_usd"] in ("0.000000000", None) and found["reserved_tokens"] == 0:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now).total_seconds()


def same_minute(margin_s: float = 8.0) -> None:
    """Rate windows are calendar minutes: start a window-sensitive check well inside one."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.2)


# ---------------------------------------------------------------------- denial shape


def test_openai_denial_shape(gw: GatewayProc) -> None:
    status, body, headers = chat(gw, "sk-deny", max_tokens=10)
    assert status == 200, body  # a small request fits
    before = scopes(gw, "deny")["team:deny"]["denials"]
    status, body, headers = chat(gw, "sk-deny", max_tokens=5000)  # 5000 x $2/1M = $0.01 > $0.001
    assert status == 429
    assert body["error"]["code"] == "budget_exceeded"
    assert body["error"]["type"] == "insufficient_quota"
    assert "budget exceeded for team:deny" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert abs(int(headers["retry-after"]) - seconds_to_midnight()) <= 2
    assert headers["x-request-id"]
    assert scopes(gw, "deny")["team:deny"]["denials"] == before + 1  # one request, one denial


def test_anthropic_denial_shape(gw: GatewayProc) -> None:
    status, body, headers = messages(gw, "sk-deny", max_tokens=2000)  # 2000 x $15/1M = $0.03
    assert status == 429
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "budget exceeded" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert abs(int(headers["retry-after"]) - seconds_to_midnight()) <= 2
    assert headers["request-id"] == body["request_id"]


class CountingClient:
    """Counts every HTTP attempt an SDK makes (its retries included)."""

    def __init__(self) -> None:
        self.attempts = 0

    def hook(self, _request: Any) -> None:
        self.attempts += 1


def test_sdks_do_not_retry_a_budget_denial(gw: GatewayProc) -> None:
    before = scopes(gw, "sdk")["team:sdk"]["denials"]
    counter = CountingClient()
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [counter.hook]})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-sdk", http_client=http_client)
    assert client.max_retries >= 2  # the SDK default: it would retry a plain 429
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5000)  # type: ignore[arg-type]
    assert caught.value.status_code == 429
    assert caught.value.code == "budget_exceeded"
    assert counter.attempts == 1
    client.close()

    counter_a = CountingClient()
    a_client = anthropic.Anthropic(
        base_url=gw.url,
        api_key="sk-sdk",
        http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [counter_a.hook]}),
    )
    with pytest.raises(anthropic.RateLimitError):
        a_client.messages.create(model="claude-sonnet", messages=HI, max_tokens=2000)  # type: ignore[arg-type]
    assert counter_a.attempts == 1
    a_client.close()
    assert scopes(gw, "sdk")["team:sdk"]["denials"] == before + 2


# ---------------------------------------------------------------------- downgrade


def test_downgrade_serves_the_cheaper_model_then_denies(gw: GatewayProc) -> None:
    status, body, headers = chat(gw, "sk-dg", max_tokens=10)
    assert status == 200, body
    assert headers["x-gateway-model"] == "gpt-4o"  # fits: no downgrade

    # $0.002 upper bound on gpt-4o does not fit $0.001; on gpt-4o-mini ($0.40/1M out) it does.
    status, body, headers = chat(gw, "sk-dg", max_tokens=1000)
    assert status == 200, body
    assert headers["x-gateway-model"] == "gpt-4o-mini"
    assert headers["x-gateway-route"].endswith("+budget_downgrade")
    assert body["model"] == "mock-gpt-mini"

    # Even gpt-4o-mini cannot pay for 5000 output tokens ($0.002): denied.
    status, body, headers = chat(gw, "sk-dg", max_tokens=5000)
    assert status == 429, body
    assert body["error"]["code"] == "budget_exceeded"
    assert headers["x-should-retry"] == "false"


# ---------------------------------------------------------------------- per-key and token budgets


def test_per_key_budget_under_a_team(gw: GatewayProc) -> None:
    # 100 output tokens on gpt-4o reserve $0.0002: more than k-small's $0.0001, nothing for the team.
    status, body, headers = chat(gw, "sk-k-small", max_tokens=100)
    assert status == 429, body
    assert "key:k-small" in body["error"]["message"]
    now = datetime.now(UTC)
    week_end = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    week_end += timedelta(days=7)
    assert abs(int(headers["retry-after"]) - (week_end - now).total_seconds()) <= 2  # the key's period

    status, body, _ = chat(gw, "sk-k-free", max_tokens=100)  # same team, key without its own budget
    assert status == 200, body
    status, body, _ = chat(gw, "sk-k-small", max_tokens=10)  # a request that fits the key
    assert status == 200, body

    team_scope = settled(gw, "keyed")
    small = settled(gw, "keyed", "key:k-small")
    assert small["limit_usd"] == "0.000100000" and small["period"] == "weekly"
    assert small["denials"] == 1 and small["requests"] == 1
    assert team_scope["requests"] == 2 and team_scope["denials"] == 0
    # The team pays for both keys; the key only for itself.
    assert usd_to_nano(team_scope["spent_usd"]) > usd_to_nano(small["spent_usd"]) > 0
    assert "key:k-free" not in scopes(gw, "keyed")  # no budget of its own: no scope


def test_token_budget(gw: GatewayProc) -> None:
    # Reserves the prompt's byte bound (~20) + 50 output tokens of the 100-token budget.
    status, body, _ = chat(gw, "sk-tok", max_tokens=50, x_mock_completion_tokens="50")
    assert status == 200, body
    used = settled(gw, "tok")
    assert used["spent_tokens"] == body["usage"]["total_tokens"]
    assert used["limit_tokens"] == 100 and used["limit_usd"] is None
    status, body, headers = chat(gw, "sk-tok", max_tokens=50)  # 58 spent + 70 > 100
    assert status == 429, body
    assert body["error"]["code"] == "budget_exceeded"
    assert "token budget exceeded" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert scopes(gw, "tok")["team:tok"]["remaining_tokens"] == 100 - used["spent_tokens"]


# ---------------------------------------------------------------------- rate limits


def test_rpm_limit(gw: GatewayProc) -> None:
    same_minute()
    for _ in range(3):
        status, body, headers = chat(gw, "sk-rpm")
        assert status == 200, body
    assert headers["x-ratelimit-remaining-requests"] == "0"
    status, body, headers = chat(gw, "sk-rpm")
    assert status == 429, body
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == f"{headers['retry-after']}s"
    assert "x-should-retry" not in headers  # a rate limit is worth retrying after Retry-After


def test_tpm_limit(gw: GatewayProc) -> None:
    same_minute()
    # Reserves 12 (the prompt's byte bound) + 80 tokens; settles at the actual 88, refunding the rest.
    status, body, headers = chat(gw, "sk-tpm", max_tokens=80, x_mock_completion_tokens="80")
    assert status == 200, body
    assert headers["x-ratelimit-remaining-tokens"] == str(150 - 92)  # what the reservation left
    used = body["usage"]["total_tokens"]
    settled(gw, "tpm")
    status, body, headers = chat(gw, "sk-tpm", max_tokens=80)  # 88 + 92 > 150
    assert status == 429, body
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-tokens"] == "150"
    assert headers["x-ratelimit-remaining-tokens"] == str(150 - used)
    assert headers["x-ratelimit-reset-tokens"] == f"{headers['retry-after']}s"
    status, body, _ = chat(gw, "sk-tpm", max_tokens=5)  # a smaller request still fits the minute
    assert status == 200, body


# ---------------------------------------------------------------------- admin view and metrics


def test_admin_budgets_fields(gw: GatewayProc) -> None:
    status, body, _ = chat(gw, "sk-deny", max_tokens=10)
    assert status == 200, body
    assert chat(gw, "sk-deny", max_tokens=5000)[0] == 429
    view = settled(gw, "deny")
    now = datetime.now(UTC)
    day = now.strftime("%Y-%m-%d")
    assert view["scope"] == "team:deny" and view["period"] == "daily" and view["period_id"] == day
    assert datetime.fromisoformat(view["period_start"]) == datetime.fromisoformat(f"{day}T00:00:00+00:00")
    assert datetime.fromisoformat(view["period_end"]) - datetime.fromisoformat(view["period_start"]) == (
        timedelta(days=1)
    )
    assert view["limit_usd"] == "0.001000000"
    spent, reserved = usd_to_nano(view["spent_usd"]), usd_to_nano(view["reserved_usd"])
    assert spent > 0 and reserved == 0
    assert usd_to_nano(view["remaining_usd"]) == 1_000_000 - spent - reserved
    assert view["limit_tokens"] is None and view["remaining_tokens"] is None
    assert view["spent_tokens"] > 0 and view["reserved_tokens"] == 0
    assert view["requests"] >= 1 and view["denials"] >= 1
    status, body, _ = http_json("GET", gw.url + "/admin/budgets", headers=ADMIN)
    entry = next(t for t in body["data"] if t["team"] == "rpm")
    assert entry["rate_limits"] == {"rpm": 3, "tpm": None} and entry["scopes"] == []
    assert entry["on_store_error"] == "fail_closed"
    status, body, _ = http_json("GET", gw.url + "/admin/budgets")
    assert status == 401


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(","))
        if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_budget_metrics(gw: GatewayProc) -> None:
    same_minute(5)
    status, body, _ = chat(gw, "sk-metered", max_tokens=10)
    assert status == 200, body
    for _ in range(2):
        status, body, _ = chat(gw, "sk-metered", max_tokens=5000)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
    for _ in range(2):
        assert chat(gw, "sk-metered", max_tokens=10)[0] == 200
    status, body, _ = chat(gw, "sk-metered", max_tokens=10)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    view = settled(gw, "metered")
    period = view["period_id"]
    labels = {"team": "metered", "scope": "team:metered", "period": period}

    deadline = time.monotonic() + 12  # the gauges refresh every 5 s
    while True:
        text = http_json("GET", gw.url + "/metrics")[1]
        spent = metric_value(text, "llm_gateway_budget_spent_usd", **labels)
        if spent is not None and round(spent * 1e9) == usd_to_nano(view["spent_usd"]):
            break
        assert time.monotonic() < deadline, spent
        time.sleep(0.5)
    assert metric_value(text, "llm_gateway_budget_limit_usd", **labels) == 0.001
    assert metric_value(text, "llm_gateway_budget_reserved_usd", **labels) == 0.0
    assert metric_value(text, "llm_gateway_budget_limit_tokens", **labels) == 100_000
    assert metric_value(text, "llm_gateway_budget_spent_tokens", **labels) == view["spent_tokens"]
    assert metric_value(text, "llm_gateway_budget_reserved_tokens", **labels) == 0
    denied = metric_value(text, "llm_gateway_budget_denied_requests_total", team="metered", reason="usd")
    assert denied == 2
    limited = metric_value(text, "llm_gateway_rate_limited_requests_total", team="metered", kind="rpm")
    assert limited == 1
    assert view["denials"] == 2


# ---------------------------------------------------------------------- reload


def test_raised_limit_applies_on_reload_without_resetting_spend(tmp_path: Path, mock: MockProvider) -> None:
    cfg = base_config(mock.url)
    cfg["teams"] = {"grow": team({"usd": "0.0001", "period": "daily"}, keys=[key("grow")])}
    path = write_config(tmp_path, cfg)
    proc = GatewayProc(path)
    try:
        status, body, _ = chat(proc, "sk-grow", max_tokens=20)  # reserves ~$0.00006 of $0.0001
        assert status == 200, body
        spent = settled(proc, "grow")["spent_usd"]
        assert chat(proc, "sk-grow", max_tokens=40)[0] == 429

        # Edit the file: the watcher (every second) validates it and swaps it in.
        raised = yaml.safe_load(path.read_text())
        raised["teams"]["grow"]["budget"]["usd"] = "0.001"
        path.write_text(yaml.safe_dump(raised, sort_keys=False))
        deadline = time.monotonic() + 10
        while scopes(proc, "grow")["team:grow"]["limit_usd"] != "0.001000000":
            assert time.monotonic() < deadline, "the raised limit was not picked up"
            time.sleep(0.1)
        view = scopes(proc, "grow")["team:grow"]
        assert view["spent_usd"] == spent  # the spend is kept
        assert view["denials"] == 1
        status, body, _ = chat(proc, "sk-grow", max_tokens=40)
        assert status == 200, body

        # The admin endpoint reloads on demand; a lowered limit denies at once.
        lowered = yaml.safe_load(path.read_text())
        lowered["teams"]["grow"]["budget"]["usd"] = "0.0001"
        path.write_text(yaml.safe_dump(lowered, sort_keys=False))
        status, body, _ = http_json("POST", proc.url + "/admin/reload", headers=ADMIN)
        assert status == 200 and body == {"reloaded": True}
        assert scopes(proc, "grow")["team:grow"]["limit_usd"] == "0.000100000"
        assert chat(proc, "sk-grow", max_tokens=10)[0] == 429  # $0.00008 spent; 10 tokens need $0.000028

        # A broken file is rejected and the running policy stays.
        path.write_text("teams: [this is not a config")
        status, body, _ = http_json("POST", proc.url + "/admin/reload", headers=ADMIN)
        assert status == 400, body
        assert scopes(proc, "grow")["team:grow"]["limit_usd"] == "0.000100000"
    finally:
        proc.stop()


def test_a_response_schema_counts_toward_the_reservation(gw: GatewayProc) -> None:
    """A structured-output schema is written into the prompt by the provider and billed as prompt
    tokens: the reservation must bound it too (by its JSON's length), not only the messages."""
    properties = {f"field_{i}": {"type": "string", "description": "d" * 30} for i in range(8)}
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object", "properties": properties}},
    }
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 10, "response_format": schema}
    status, answer, _ = http_json(
        "POST", gw.url + "/v1/chat/completions", body, {"authorization": "Bearer sk-schema"}
    )
    assert status == 429, answer  # ~500 schema bytes + the prompt + 10 > 300 tokens, even counted exactly
    assert answer["error"]["code"] == "budget_exceeded"
    status, answer, _ = chat(gw, "sk-schema", max_tokens=10)  # the same request without the schema fits
    assert status == 200, answer
