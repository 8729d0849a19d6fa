"""``gateway policy check|explain`` as a user runs them, and every example policy end to end.

The examples under policies/examples are documentation that must keep working: each is linted
here, explained, and served by a real gateway against the session's mock provider, with a
request that triggers its rule.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as gateway_main
from tests.harness import PRICES, ROOT, GatewayProc, MockProvider, free_port, http_json

POLICIES = ROOT / "policies"
EXAMPLES = sorted((POLICIES / "examples").glob("*.yaml"))
GATEWAY_FILES = sorted(p for p in POLICIES.glob("*.yaml") if p.name != "prices.yaml") + EXAMPLES
EXPECTED_EXAMPLES = {
    "auto-routing.yaml",
    "budget-tier-downgrade.yaml",
    "multi-region-failover.yaml",
    "team-allow-lists.yaml",
}


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_the_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= EXPECTED_EXAMPLES


# ---------------------------------------------------------------------- policy check


def test_every_shipped_policy_is_valid() -> None:
    result = gateway_cli("policy", "check", *map(str, GATEWAY_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(GATEWAY_FILES)
    assert all(": valid (" in line for line in lines), lines


def test_examples_explain_themselves() -> None:
    for path in EXAMPLES:
        text = path.read_text()
        assert text.startswith("# Pattern:"), path
        assert "${MOCK_URL:-http://127.0.0.1:9100}" in text, path
        assert "prices: ../prices.yaml" in text, path


BROKEN = {
    "syntax.yaml": ("version: 1\nproviders: {a: [b}\n", ["syntax.yaml:2: invalid YAML"]),
    "unknown-key.yaml": (
        "version: 1\nprovders: {}\n",
        [
            "unknown-key.yaml:2: provders: unknown key 'provders'",
            "unknown-key.yaml:1: providers: required key",
        ],
    ),
}


def test_broken_files_fail_with_file_and_line(tmp_path: Path) -> None:
    paths = []
    for name, (text, _) in BROKEN.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(text)
    # An example with a cross-reference error, laid out like policies/ (its prices are ../prices.yaml).
    text = (POLICIES / "examples" / "auto-routing.yaml").read_text()
    broken = text.replace("      route_to: gpt-4o\n", "      route_to: gpt-5-turbo-max\n", 1)
    assert broken != text
    (tmp_path / "examples").mkdir()
    shutil.copy(PRICES, tmp_path / "prices.yaml")
    paths.append(tmp_path / "examples" / "auto.yaml")
    paths[-1].write_text(broken)
    line = broken.splitlines().index("      route_to: gpt-5-turbo-max") + 1
    # A valid file next to broken ones: each file gets its verdict, the exit code reports any failure.
    paths.append(POLICIES / "gateway.yaml")

    result = gateway_cli("policy", "check", *map(str, paths))
    assert result.returncode == 1
    out = result.stdout
    for name, (_, messages) in BROKEN.items():
        assert f"{tmp_path / name}: INVALID" in out
        for message in messages:
            assert f"  {tmp_path}/{message}" in out, out
    assert f"  {paths[-2]}:{line}: routing.rules[0].route_to: unknown model 'gpt-5-turbo-max'" in out
    assert f"{POLICIES / 'gateway.yaml'}: valid" in out


# ---------------------------------------------------------------------- policy explain


@pytest.fixture
def explain(capsys: pytest.CaptureFixture[str]) -> Callable[..., list[str]]:
    """The same command in-process: the subprocess test above covers the entry point, this is fast."""

    def run(example: str, *args: str) -> list[str]:
        code = gateway_main(["policy", "explain", "--config", str(POLICIES / "examples" / example), *args])
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        return out.out.splitlines()

    return run


def test_explain_prints_trace_chain_and_cost_per_candidate() -> None:
    result = gateway_cli(
        "policy",
        "explain",
        *("--config", str(POLICIES / "examples" / "budget-tier-downgrade.yaml")),
        *("--team", "product", "--model", "gpt-4o", "--prompt-tokens", "1000"),
        *("--tag", "k=v", "--budget-used", "0.85"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "team=product model=gpt-4o prompt_tokens=1000 budget_used=0.85 tags={'k': 'v'}",
        "  rule 'budget-critical-long-prompts': no match (budget_used)",
        "  rule 'budget-downgrade': MATCH",
        "=> rule: budget-downgrade",
        "=> chain: gpt-4o-mini",
        "=> max_tokens cap: 1024",
        "estimated cost per candidate (1000 prompt + 1024 output tokens, upper bound):",
        # 1000 x $0.10/1M + 1024 x $0.40/1M
        "  gpt-4o-mini via mock-openai/mock-gpt-mini: $0.000509600",
    ]


def test_explain_below_the_threshold_keeps_the_model(explain: Callable[..., list[str]]) -> None:
    out = explain(
        "budget-tier-downgrade.yaml", "--team", "product", "--model", "gpt-4o", "--budget-used", "0.5"
    )
    assert "=> rule: default" in out
    assert "=> chain: gpt-4o -> claude-sonnet" in out
    assert "  gpt-4o via mock-openai/mock-gpt: $0.002000000" in out  # 1000 output tokens x $2/1M
    assert "  claude-sonnet via mock-anthropic/mock-claude: $0.015000000" in out


def test_explain_deny(explain: Callable[..., list[str]]) -> None:
    out = explain(
        "budget-tier-downgrade.yaml",
        *("--team", "product", "--model", "gpt-4o", "--prompt-tokens", "5000", "--budget-used", "0.97"),
    )
    assert out[-1].startswith("=> DENY: the team has used 95% of its monthly budget")


def test_explain_auto_prints_the_complexity_score(explain: Callable[..., list[str]]) -> None:
    short = explain("auto-routing.yaml", "--team", "apps", "--model", "auto", "--prompt", "hi there")
    [score] = [line for line in short if line.startswith("  auto: complexity ")]
    assert score.endswith(" vs threshold 0.5 -> gpt-4o-mini")
    assert float(score.split()[2]) < 0.1
    hard = "Prove step by step why this design is optimal; analyze and compare the trade-offs. " * 30
    strong = explain("auto-routing.yaml", "--team", "apps", "--model", "auto", "--prompt", hard)
    assert "=> chain: gpt-4o -> gpt-4o-mini -> claude-sonnet" in strong
    assert "=> chain: gpt-4o-mini -> gpt-4o -> claude-sonnet" in short
    tools = explain("auto-routing.yaml", "--team", "apps", "--model", "auto", "--tools")
    assert "=> rule: auto-needs-strong" in tools


def test_explain_tags(explain: Callable[..., list[str]]) -> None:
    out = explain(
        "multi-region-failover.yaml", "--team", "platform", "--model", "gpt-4o", "--tag", "region=eu"
    )
    assert "=> rule: eu-data-residency" in out
    assert "=> chain: gpt-4o-eu -> gpt-4o-mini-eu" in out


def test_explain_on_an_invalid_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nbogus: 2\n")
    assert gateway_main(["policy", "explain", "--config", str(path), "--team", "t", "--model", "m"]) == 2
    assert f"{path}:2: bogus: unknown key 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------------- examples end to end


@contextmanager
def serve_example(tmp: Path, name: str, **env: str) -> Iterator[GatewayProc]:
    """The example as shipped, from a copy laid out like policies/ (its prices are ../prices.yaml)."""
    (tmp / "examples").mkdir(exist_ok=True)
    shutil.copy(PRICES, tmp / "prices.yaml")
    path = tmp / "examples" / name
    shutil.copy(POLICIES / "examples" / name, path)
    gw = GatewayProc(path, env={"GATEWAY_STATE_DIR": str(tmp / "state"), **env})
    try:
        yield gw
    finally:
        gw.stop()


def chat(
    gw: GatewayProc, key: str, model: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, Any, dict[str, str]]:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 5,
        **body,
    }
    return http_json(
        "POST",
        gw.url + "/v1/chat/completions",
        payload,
        {"authorization": f"Bearer {key}", **(headers or {})},
    )


def routed(reply: tuple[int, Any, dict[str, str]]) -> tuple[str, str]:
    status, body, headers = reply
    assert status == 200, body
    return headers["x-gateway-route"], headers["x-gateway-model"]


def test_example_auto_routing(tmp_path: Path, mock: MockProvider) -> None:
    with serve_example(tmp_path, "auto-routing.yaml", MOCK_URL=mock.url) as gw:
        assert routed(chat(gw, "sk-apps", "auto")) == ("auto", "gpt-4o-mini")
        hard = "Prove step by step why this design is optimal; analyze and compare the trade-offs. " * 30
        assert routed(chat(gw, "sk-apps", "auto", messages=[{"role": "user", "content": hard}])) == (
            "auto",
            "gpt-4o",
        )
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        assert routed(chat(gw, "sk-apps", "auto", tools=tools)) == ("auto-needs-strong", "gpt-4o")
        assert routed(chat(gw, "sk-apps", "gpt-4o-mini")) == ("default", "gpt-4o-mini")


def test_example_budget_tier_downgrade(tmp_path: Path, mock: MockProvider) -> None:
    with serve_example(tmp_path, "budget-tier-downgrade.yaml", MOCK_URL=mock.url) as gw:
        # Each request on gpt-4o is billed 25M prompt tokens at $1/1M: $25, 5 % of the $500 budget.
        spend = {"x-mock-prompt-tokens": "25000000"}
        spent, seen = 0.0, []
        for _ in range(25):
            status, body, headers = chat(gw, "sk-product", "gpt-4o", spend)
            assert status == 200, body
            seen.append((headers["x-gateway-route"], headers["x-gateway-model"], spent))
            if headers["x-gateway-route"] != "default":
                break
            spent += float(headers["x-gateway-cost-usd"])
        assert seen[-1][:2] == ("budget-downgrade", "gpt-4o-mini"), seen
        assert 400 - 0.01 <= seen[-1][2] <= 475, seen  # after 80 % ($400) was spent, never before
        _, _, headers = chat(gw, "sk-product", "claude-sonnet", max_tokens=4000)
        assert (headers["x-gateway-route"], headers["x-gateway-model"]) == ("budget-downgrade", "gpt-4o-mini")
        assert http_json("GET", mock.url + "/_mock/stats")[1]["last_body"]["max_tokens"] == 1024  # the cap


def test_example_multi_region_failover(tmp_path: Path, mock: MockProvider) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # the US region (and the Anthropic fallback) are down
    with serve_example(tmp_path, "multi-region-failover.yaml", MOCK_URL=dead, MOCK_URL_EU=mock.url) as gw:
        started = time.monotonic()
        assert routed(chat(gw, "sk-platform", "gpt-4o")) == ("default", "gpt-4o")  # served by eu-west
        assert time.monotonic() - started < 2
        stats = http_json("GET", mock.url + "/_mock/stats")[1]
        assert stats["last_headers"]["api-key"]  # it was the Azure (EU) deployment
        eu = {"x-gateway-tags": "region=eu"}
        assert routed(chat(gw, "sk-platform", "gpt-4o", eu)) == ("eu-data-residency", "gpt-4o-eu")


def test_example_team_allow_lists(tmp_path: Path, mock: MockProvider) -> None:
    with serve_example(tmp_path, "team-allow-lists.yaml", MOCK_URL=mock.url) as gw:
        status, body, _ = chat(gw, "sk-interns", "gpt-4o")
        assert status == 404 and body["error"]["code"] == "model_not_found"
        image = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ]
        status, body, _ = chat(gw, "sk-interns", "gpt-4o-mini", messages=image)
        assert status == 403 and "image inputs are not enabled" in body["error"]["message"]
        assert routed(chat(gw, "sk-interns", "gpt-4o-mini")) == ("default", "gpt-4o-mini")

        assert routed(chat(gw, "sk-support", "gpt-4o-mini", max_tokens=2000)) == (
            "support-short-answers",
            "gpt-4o-mini",
        )
        assert http_json("GET", mock.url + "/_mock/stats")[1]["last_body"]["max_tokens"] == 512
        assert chat(gw, "sk-support", "gpt-4o")[0] == 404

        batch = {"x-gateway-tags": "job=batch"}
        assert routed(chat(gw, "sk-research", "gpt-4o", batch)) == ("research-batch-cheap", "gpt-4o-mini")
        assert routed(chat(gw, "sk-research", "gpt-4o")) == ("default", "gpt-4o")
