"""Spend reports against the ledger they summarize: a mixed load through a real gateway, then the
admin API (``GET /admin/spend``) and the CLI (``gateway report``) in every format, each checked
against the ledger records read straight from the store (memory state dir, or Redis).

The CLI reads the store directly: for the embedded store it runs after the gateway has stopped
(it replays and compacts the state dir), for Redis while the gateway is still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.metering.pricing import PriceCatalog, nano_to_usd_str
from gateway.metering.report import FOCUS_COLUMNS, METRIC_COLUMNS, validate_focus_rows
from tests.harness import ADMIN_TOKEN, ROOT, GatewayProc, MockProvider, RedisServer, base_config, write_config
from tests.integration.test_metering import Answer, post, read_ledger, rid

TOKEN_KINDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_tokens",
)
N_REQUESTS = 200
CACHE_PROMPTS = 5  # the cached team repeats these, so most of its requests are hits


# ---------------------------------------------------------------- the load


@dataclass(frozen=True)
class Planned:
    client_id: str
    team: str
    key: str
    model: str
    inbound: str
    stream: bool
    headers: dict[str, str]
    content: str
    metered: bool  # passes auth and admission, so it must land in the ledger


def plan(seed: int) -> list[Planned]:
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    out: list[Planned] = []
    for i in range(N_REQUESTS):
        team = rng.choice(["demo", "demo", "other", "cachey"])
        models = {
            "demo": ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "reasoner"],
            "other": ["gpt-4o-mini"],
            "cachey": ["gpt-4o-mini"],
        }[team]
        model = rng.choice(models)
        inbound = rng.choice(["openai", "openai", "anthropic"])
        stream = rng.random() < 0.35
        headers = {
            "x-mock-prompt-tokens": str(rng.randint(10, 5000)),
            "x-mock-completion-tokens": str(rng.randint(1, 60)),
        }
        if model == "claude-sonnet" and rng.random() < 0.5:
            headers["x-mock-cache-read-tokens"] = "8"
            headers["x-mock-cache-creation-tokens"] = "2"
        elif model != "claude-sonnet" and rng.random() < 0.4:
            headers["x-mock-cached-tokens"] = "5"
        if model == "reasoner":
            headers["x-mock-reasoning-tokens"] = str(rng.randint(1, 100))
        tags = [
            t for t in (rng.choice(["feature=search", "feature=chat", ""]), rng.choice(["env=prod", ""])) if t
        ]
        if tags:
            headers["x-gateway-tags"] = ",".join(tags)
        if team != "cachey" and rng.random() < 0.08:
            headers["x-mock-status"] = rng.choice(["400", "500"])
        content = f"load {run} {i}"
        if team == "cachey":  # identical bodies and forwarded x-mock-* headers -> cache hits
            which = rng.randrange(CACHE_PROMPTS)
            content, stream = f"cached {run} {which}", False
            headers = {k: v for k, v in headers.items() if not k.startswith("x-mock-")}
            headers.update({"x-mock-prompt-tokens": str(100 + which), "x-mock-completion-tokens": "7"})
        out.append(
            Planned(f"rp-{run}-{i:03d}", team, f"sk-{team}", model, inbound, stream, headers, content, True)
        )
    # Refused before metering: never in the ledger, never in a report.
    out.append(Planned(f"rp-{run}-badkey", "demo", "sk-nope", "gpt-4o", "openai", False, {}, "x", False))
    out.append(
        Planned(f"rp-{run}-nomodel", "demo", "sk-demo", "no-such-model", "openai", False, {}, "x", False)
    )
    out.append(Planned(f"rp-{run}-denied", "other", "sk-other", "gpt-4o", "openai", False, {}, "x", False))
    return out


def send(url: str, p: Planned) -> Answer:
    body: dict[str, Any] = {
        "model": p.model,
        "messages": [{"role": "user", "content": p.content}],
        "max_tokens": 200,
    }
    if p.stream:
        body["stream"] = True
    headers = {"x-request-id": p.client_id, **p.headers}
    if p.inbound == "anthropic":
        headers.update({"x-api-key": p.key, "anthropic-version": "2023-06-01"})
        return post(f"{url}/v1/messages", body, headers)
    headers["authorization"] = f"Bearer {p.key}"
    return post(f"{url}/v1/chat/completions", body, headers)


def shown_cost(answer: Answer, stream: bool) -> str | None:
    if answer.status != 200:
        return None
    if not stream:
        return answer.headers.get("x-gateway-cost-usd")
    comments = [text for kind, text in answer.events() if kind == "comment"]
    return comments[-1].removeprefix("x-gateway-cost-usd=") if comments else None


def report_config(mock_url: str) -> dict[str, Any]:
    cfg = base_config(mock_url)
    cfg["models"]["reasoner"] = {"deployments": [{"provider": "mock-openai", "model": "mock-reasoner"}]}
    cfg["teams"]["demo"]["budget"] = {"usd": 1000}  # leases + settle; "other" stays lease-less
    cfg["teams"]["cachey"] = {
        "keys": [{"id": "cachey", "key": "sk-cachey"}],
        "cache": {"mode": "always"},
        "budget": {"usd": 1000},
    }
    cfg["routing"] = {"retry": {"max_attempts": 1}}
    return cfg


# ---------------------------------------------------------------- one load per backend, every output


@dataclass
class Run:
    kind: str
    planned: list[Planned]
    answers: dict[str, Answer]
    ledger: list[dict[str, Any]]
    since: str
    until: str
    admin: dict[str, str] = field(default_factory=dict)  # "<by>|<format>" -> body
    cli: dict[str, str] = field(default_factory=dict)

    @property
    def metered(self) -> list[Planned]:
        return [p for p in self.planned if p.metered]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for_ledger(
    read: Callable[[], list[dict[str, Any]]], want: set[str], timeout: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = read()
        if {rid(r) for r in records} >= want or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def all_records(
    state_dir: Path, redis_url: str | None, teams: list[str], since_ms: int, until_ms: int
) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for team in teams:
            out += await read_ledger(state_dir, redis_url, team, since_ms, until_ms)
        return out

    return asyncio.run(read())


REPORTS = [("team,model", fmt) for fmt in ("json", "csv", "table", "focus")] + [
    ("team,model,tag", "json"),
    ("team,model,tag", "table"),
]


def admin_get(url: str, since: str, until: str, by: str, fmt: str) -> str:
    query = f"since={since}&until={until}&by={by}&format={fmt}"
    req = urllib.request.Request(
        f"{url}/admin/spend?{query}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def cli_report(config: Path, since: str, until: str, by: str, fmt: str, redis_url: str | None) -> str:
    """``gateway report`` in-process (an interpreter start per format would dominate the runtime);
    :func:`cli_report_process` runs the real command line once per backend."""
    argv = [
        "report",
        "--config",
        str(config),
        "--since",
        since,
        "--until",
        until,
        "--by",
        by,
        "--format",
        fmt,
    ]
    saved = os.environ.pop("GATEWAY_REDIS_URL", None)
    if redis_url:
        os.environ["GATEWAY_REDIS_URL"] = redis_url
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert cli_main(argv) == 0
    finally:
        os.environ.pop("GATEWAY_REDIS_URL", None)
        if saved is not None:
            os.environ["GATEWAY_REDIS_URL"] = saved
    return out.getvalue()


def cli_report_process(config: Path, since: str, until: str, by: str, fmt: str, redis_url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    if redis_url:
        env["GATEWAY_REDIS_URL"] = redis_url
    args = [
        "report",
        "--config",
        str(config),
        "--since",
        since,
        "--until",
        until,
        "--by",
        by,
        "--format",
        fmt,
    ]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module", params=["memory", "redis"])
def run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mock: MockProvider
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp(f"reports-{request.param}")
    redis = RedisServer(tmp / "redis") if request.param == "redis" else None  # a ledger of this load only
    redis_url = redis.url if redis else None
    config = write_config(tmp, report_config(mock.url))
    proc = GatewayProc(config, redis_url=redis_url)
    try:
        started = datetime.now(UTC)
        planned = plan(seed=7)
        with ThreadPoolExecutor(8) as pool:
            answers = dict(
                zip(
                    [p.client_id for p in planned],
                    pool.map(lambda p: send(proc.url, p), planned),
                    strict=True,
                )
            )
        since, until = iso(started - timedelta(minutes=1)), iso(datetime.now(UTC) + timedelta(minutes=1))
        since_ms = int((started - timedelta(minutes=1)).timestamp() * 1000)
        until_ms = since_ms + 3_600_000
        teams = ["demo", "other", "cachey"]
        want = {p.client_id for p in planned if p.metered}
        ledger = wait_for_ledger(
            lambda: all_records(tmp / "state", redis_url, teams, since_ms, until_ms), want
        )
        result = Run(request.param, planned, answers, ledger, since, until)
        for by, fmt in REPORTS:
            result.admin[f"{by}|{fmt}"] = admin_get(proc.url, since, until, by, fmt)
        if redis_url is None:
            proc.stop()  # the CLI replays the embedded store's state dir: never beside a live gateway
        for by, fmt in REPORTS:
            result.cli[f"{by}|{fmt}"] = cli_report(config, since, until, by, fmt, redis_url)
        result.cli["process|focus"] = cli_report_process(
            config, since, until, "team,model", "focus", redis_url
        )
        yield result
    finally:
        proc.stop()
        if redis is not None:
            redis.stop()


# ---------------------------------------------------------------- the truth, computed here


def ledger_cost(run: Run) -> int:
    return sum(int(r["cost_nano"]) for r in run.ledger)


def expected_groups(run: Run, with_tag: bool) -> dict[tuple[str, ...], Counter[str]]:
    groups: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for r in run.ledger:
        # The tag dimension puts a record in one group per key=value pair, an untagged one in "".
        pairs = ([f"{k}={v}" for k, v in sorted(r["tags"].items())] or [""]) if with_tag else [""]
        for pair in pairs:
            key = (r["team"], r["served_model"]) + ((pair,) if with_tag else ())
            g = groups[key]
            g["requests"] += 1
            g["cost_nano"] += int(r["cost_nano"])
            g["cache_hits"] += r["cache"] == "hit"
            g["errors"] += isinstance(r["status"], int) and r["status"] >= 400
            for kind in TOKEN_KINDS:
                g[kind] += int(r["usage"].get(kind, 0))
    return groups


def check_rows(rows: list[dict[str, Any]], run: Run, by: list[str]) -> None:
    expected = expected_groups(run, "tag" in by)
    got = {tuple(str(row[d]) for d in by): row for row in rows}
    assert set(got) == set(expected)
    for key, want in expected.items():
        row = got[key]
        for name, value in want.items():
            assert int(row[name]) == value, (key, name)
        assert row["cost_usd"] == nano_to_usd_str(want["cost_nano"])


def check_totals(totals: dict[str, Any], run: Run) -> None:
    assert int(totals["requests"]) == len(run.metered) == len(run.ledger)
    assert int(totals["cost_nano"]) == ledger_cost(run)
    assert totals["cost_usd"] == nano_to_usd_str(ledger_cost(run))
    assert int(totals["cache_hits"]) == sum(r["cache"] == "hit" for r in run.ledger)
    assert int(totals["errors"]) == sum(run.answers[p.client_id].status >= 400 for p in run.metered)
    for kind in TOKEN_KINDS:
        assert int(totals[kind]) == sum(int(r["usage"].get(kind, 0)) for r in run.ledger)


# ---------------------------------------------------------------- the ledger itself


def test_every_metered_request_is_in_the_ledger_once(run: Run) -> None:
    ids = [rid(r) for r in run.ledger]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert set(ids) == {p.client_id for p in run.metered}
    assert len({r["request_id"] for r in run.ledger}) == len(run.ledger)
    statuses = Counter(a.status for a in run.answers.values())
    assert statuses[200] > 150 and statuses[400] + statuses[500] > 0, statuses
    assert sum(r["cache"] == "hit" for r in run.ledger) > 10


def test_each_answer_shows_its_ledger_cost_and_status(run: Run) -> None:
    by_id = {rid(r): r for r in run.ledger}
    for p in run.metered:
        answer, record = run.answers[p.client_id], by_id[p.client_id]
        assert record["status"] == answer.status, p
        assert record["team"] == p.team and record["requested_model"] == p.model
        if answer.status == 200:
            assert shown_cost(answer, p.stream) == nano_to_usd_str(int(record["cost_nano"])), p
            assert record["estimated"] is False
        else:
            assert record["cost_nano"] == 0


# ---------------------------------------------------------------- admin API and CLI, every format


@pytest.mark.parametrize("source", ["admin", "cli"])
def test_json_report_adds_up_to_the_ledger(run: Run, source: str) -> None:
    out = orjson.loads(getattr(run, source)["team,model|json"])
    check_totals(out["totals"], run)
    check_rows(out["rows"], run, ["team", "model"])


def test_admin_and_cli_agree(run: Run) -> None:
    assert run.cli["process|focus"] == run.cli["team,model|focus"]  # the real command line, once
    for key in run.admin:
        admin, cli = run.admin[key], run.cli[key]
        if key.endswith("|json"):
            assert orjson.loads(admin) == orjson.loads(cli), key
        else:
            assert admin.rstrip("\n") == cli.rstrip("\n"), key


@pytest.mark.parametrize("source", ["admin", "cli"])
def test_csv_report(run: Run, source: str) -> None:
    reader = csv.DictReader(io.StringIO(getattr(run, source)["team,model|csv"]))
    assert reader.fieldnames == ["team", "model", *METRIC_COLUMNS]
    rows = list(reader)
    check_rows(rows, run, ["team", "model"])
    assert sum(int(r["requests"]) for r in rows) == len(run.metered)
    assert sum(int(r["cost_nano"]) for r in rows) == ledger_cost(run)


@pytest.mark.parametrize("source", ["admin", "cli"])
def test_table_report(run: Run, source: str) -> None:
    lines = getattr(run, source)["team,model|table"].rstrip("\n").split("\n")
    assert lines[0].split()[:4] == ["team", "model", "requests", "cost_usd"]
    total = lines[-1].split()
    assert total[0] == "TOTAL"
    assert int(total[1]) == len(run.metered)
    assert total[2] == nano_to_usd_str(ledger_cost(run))
    body = [line.split() for line in lines[2:-2]]
    assert len(body) == len(expected_groups(run, False))
    assert sum(int(cells[2]) for cells in body) == len(run.metered)


@pytest.mark.parametrize("source", ["admin", "cli"])
def test_tag_report_counts_a_record_once_per_tag(run: Run, source: str) -> None:
    out = orjson.loads(getattr(run, source)["team,model,tag|json"])
    check_rows(out["rows"], run, ["team", "model", "tag"])
    check_totals(out["totals"], run)  # the totals are over records, never per tag
    table = getattr(run, source)["team,model,tag|table"]
    assert "\nTOTAL*" in table and "counted once per tag" in table


@pytest.mark.parametrize("source", ["admin", "cli"])
def test_focus_export_validates_and_bills_the_ledger(run: Run, source: str) -> None:
    reader = csv.DictReader(io.StringIO(getattr(run, source)["team,model|focus"]))
    assert reader.fieldnames == FOCUS_COLUMNS
    rows = [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]
    assert rows
    assert validate_focus_rows(rows, expected_cost_nano=ledger_cost(run)) == []
    billed = sum(Decimal(str(r["BilledCost"])) for r in rows)
    assert billed * 10**9 == ledger_cost(run)
    assert sum(int(str(r["x_RequestCount"])) for r in rows) == len(run.metered)
    for row in rows:
        tags = orjson.loads(str(row["Tags"]))
        assert tags["team"] == row["SubAccountId"]
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]


# ---------------------------------------------------------------- price catalog import


def policy_check(path: Path) -> tuple[int, str]:
    """``gateway policy check`` in-process (the import above already ran the real command line)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["policy", "check", str(path)])
    return code, out.getvalue()


def test_prices_import_produces_a_catalog_a_config_can_use(tmp_path: Path, mock: MockProvider) -> None:
    catalog_path = tmp_path / "imported.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "prices",
            "import",
            str(ROOT / "tests/fixtures/litellm_sample.json"),
            "--out",
            str(catalog_path),
            "--as-of",
            "2026-11-01",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    catalog = PriceCatalog.model_validate(yaml.safe_load(catalog_path.read_text()))
    gpt = catalog.models["gpt-4o"]
    assert (gpt.input, gpt.cached_input, gpt.output) == (Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))
    assert str(gpt.as_of) == "2026-11-01"

    cfg = base_config(mock.url)
    cfg["prices"] = str(catalog_path)
    cfg["models"] = {
        "gpt-4o": {"deployments": [{"provider": "mock-openai", "model": "gpt-4o"}]},
        "haiku": {"deployments": [{"provider": "mock-anthropic", "model": "claude-3-5-haiku-20241022"}]},
    }
    cfg["teams"]["other"]["models"] = ["gpt-4o"]
    good = write_config(tmp_path, cfg)
    code, out = policy_check(good)
    assert code == 0, out
    assert "valid (2 models" in out

    # The catalog is really what the check read: a model it lacks is refused.
    cfg["models"]["mystery"] = {"deployments": [{"provider": "mock-openai", "model": "mock-gpt"}]}
    bad = write_config(tmp_path, cfg, "bad.yaml")
    code, out = policy_check(bad)
    assert code == 1
    assert "INVALID" in out and "mock-gpt" in out


@pytest.mark.parametrize(
    ("since", "until", "by"),
    [
        ("2026-12-01", "2026-11-01", "team"),
        ("2026-11-01", "2026-12-01", "team,nope"),
        ("soon", "later", "team"),
    ],
)
def test_cli_report_usage_errors_exit_2(
    tmp_path: Path, mock: MockProvider, capsys: pytest.CaptureFixture[str], since: str, until: str, by: str
) -> None:
    config = write_config(tmp_path, base_config(mock.url))
    argv = ["report", "--config", str(config), "--since", since, "--until", until, "--by", by]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "state").exists()  # refused before the store was opened
