"""Spend reports: exact aggregation over a hand-built ledger, renderers, and the FOCUS 1.2 export.

The fixture has 15 deliveries of 12 requests: an exact duplicate, a write-ahead intent superseded by its
measured record, a conflicting replay, a cache hit, an expired (estimated) lease, two errors, a routing
upgrade that cost more than the requested model, and month boundaries. Every expected figure below was
added up by hand from the table in ``LEDGER``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import jsonutil
from gateway.metering.report import (
    FOCUS_COLUMNS,
    FOCUS_SPEC_COLUMNS,
    FOCUS_TYPES,
    METRIC_COLUMNS,
    TimeWindowError,
    aggregate,
    dedupe,
    filter_window,
    focus_rows,
    parse_since_until,
    provider_names,
    render_csv,
    render_focus_csv,
    render_json,
    render_table,
    sum_rows,
    totals,
    validate_focus_rows,
)


def at(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def usage(inp: int = 0, cached: int = 0, write: int = 0, out: int = 0, reasoning: int = 0) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "cached_input_tokens": cached,
        "cache_creation_input_tokens": write,
        "output_tokens": out,
        "reasoning_tokens": reasoning,
    }


def rec(request_id: str, ts: str, team: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": request_id,
        "ts_ms": at(ts),
        "team": team,
        "key_id": "k1",
        "tags": {},
        "operation": "chat",
        "inbound": "openai",
        "stream": False,
        "requested_model": "gpt-4o",
        "served_model": "gpt-4o",
        "upstream_model": "gpt-4o-2024-08-06",
        "provider": "openai",
        "deployment": "openai-main",
        "route": "default",
        "cache": "miss",
        "status": 200,
        "usage": {},
        "cost_nano": 0,
        "counterfactual_nano": 0,
        "latency_ms": 12.5,
        "estimated": False,
    }
    base.update(fields)
    return base


CLAUDE = {"requested_model": "claude-sonnet-4", "served_model": "claude-sonnet-4", "provider": "anthropic"}
MINI = {"requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini"}

LEDGER: list[dict[str, Any]] = [
    rec(
        "r1",
        "2026-11-01T13:05:00Z",
        "search",
        tags={"env": "prod", "app": "web"},
        usage=usage(1000, 200, 0, 500),
        cost_nano=7_500_000,
        counterfactual_nano=7_500_000,
    ),
    # routed down: asked for gpt-4o, served gpt-4o-mini; delivered twice
    rec(
        "r2",
        "2026-11-01T13:20:00Z",
        "search",
        tags={"env": "prod"},
        served_model="gpt-4o-mini",
        route="cheap",
        usage=usage(2000, out=100),
        cost_nano=360_000,
        counterfactual_nano=6_000_000,
    ),
    rec(
        "r2",
        "2026-11-01T13:20:00Z",
        "search",
        tags={"env": "prod"},
        served_model="gpt-4o-mini",
        route="cheap",
        usage=usage(2000, out=100),
        cost_nano=360_000,
        counterfactual_nano=6_000_000,
    ),
    rec(
        "r3",
        "2026-11-01T14:10:00Z",
        "search",
        key_id="k2",
        tags={"env": "prod"},
        cache="hit",
        usage=usage(1000, out=500),
        cost_nano=0,
        counterfactual_nano=7_000_000,
    ),
    rec(
        "r4",
        "2026-11-01T13:40:00Z",
        "support",
        key_id="k3",
        tags={"env": "staging"},
        **CLAUDE,
        usage=usage(5000, 3000, 1000, 800, 300),
        cost_nano=9_000_000,
        counterfactual_nano=9_000_000,
    ),
    # the write-ahead intent, then the measured completion: the measured one must win
    rec(
        "r5",
        "2026-11-01T13:50:00Z",
        "support",
        key_id="k3",
        tags={"env": "staging"},
        **CLAUDE,
        status="in_flight",
        cost_nano=50_000_000,
        counterfactual_nano=50_000_000,
        estimated=True,
    ),
    rec(
        "r5",
        "2026-11-01T13:50:00Z",
        "support",
        key_id="k3",
        tags={"env": "staging"},
        **CLAUDE,
        usage=usage(400, out=100),
        cost_nano=2_000_000,
        counterfactual_nano=2_000_000,
    ),
    # a lease that expired: charged at its reservation, estimated, no usage
    rec(
        "r6",
        "2026-11-01T15:00:00Z",
        "support",
        key_id="k3",
        **CLAUDE,
        status="expired",
        cost_nano=40_000_000,
        counterfactual_nano=40_000_000,
        estimated=True,
    ),
    rec("r7", "2026-11-01T15:10:00Z", "search", tags={"env": "prod", "app": "web"}, status=429),
    rec("r8", "2026-11-01T15:20:00Z", "support", key_id="k3", tags={"env": "staging"}, **CLAUDE, status=500),
    rec(
        "r9",
        "2026-11-02T00:30:00Z",
        "support",
        key_id="k4",
        **MINI,
        route="cheap",
        operation="embeddings",
        usage=usage(10),
        cost_nano=1,
        counterfactual_nano=1,
    ),
    # a conflicting replay of r9: both measured, so the first delivery stands
    rec(
        "r9",
        "2026-11-02T00:30:00Z",
        "support",
        key_id="k4",
        **MINI,
        route="cheap",
        operation="embeddings",
        usage=usage(10),
        cost_nano=999,
        counterfactual_nano=999,
    ),
    # routed *up*: asked for gpt-4o-mini, served gpt-4o, so routing "saved" a negative amount
    rec(
        "r10",
        "2026-11-01T13:55:00Z",
        "search",
        key_id="k2",
        tags={"env": "prod", "app": "batch"},
        requested_model="gpt-4o-mini",
        usage=usage(100, out=50),
        cost_nano=300,
        counterfactual_nano=100,
    ),
    rec(
        "r11",
        "2026-11-30T23:59:59.999+00:00",
        "search",
        tags={"env": "prod"},
        usage=usage(10, out=10),
        cost_nano=25_000,
        counterfactual_nano=25_000,
    ),
    rec(
        "r12",
        "2026-12-01T00:00:00Z",
        "search",
        tags={"env": "prod"},
        usage=usage(20, out=20),
        cost_nano=50_000,
        counterfactual_nano=50_000,
    ),
]
TOTAL_NANO = 58_935_301


def costs(rows: list[dict[str, Any]], *by: str) -> list[tuple[Any, ...]]:
    """(group values..., requests, cost_nano) per row, in report order."""
    return [(*(row[name] for name in by), row["requests"], row["cost_nano"]) for row in rows]


# ---------------------------------------------------------------- dedupe


def test_fixture_shape() -> None:
    assert len(LEDGER) == 15
    assert len(dedupe(LEDGER)) == 12


def test_dedupe_prefers_the_measured_record_and_keeps_first_seen_order() -> None:
    kept = {r["request_id"]: r for r in dedupe(LEDGER)}
    assert [r["request_id"] for r in dedupe(LEDGER)] == [
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
        "r6",
        "r7",
        "r8",
        "r9",
        "r10",
        "r11",
        "r12",
    ]
    assert kept["r5"]["status"] == 200 and kept["r5"]["cost_nano"] == 2_000_000
    assert kept["r9"]["cost_nano"] == 1  # two measured deliveries: the first stands
    assert kept["r6"]["estimated"] is True  # estimated, but the only delivery


def test_dedupe_estimated_only_keeps_first_and_measured_is_not_replaced() -> None:
    first = rec("x", "2026-11-01T00:00:00Z", "t", estimated=True, cost_nano=1)
    second = rec("x", "2026-11-01T00:00:00Z", "t", estimated=True, cost_nano=2)
    measured = rec("x", "2026-11-01T00:00:00Z", "t", cost_nano=3)
    assert [r["cost_nano"] for r in dedupe([first, second])] == [1]
    assert [r["cost_nano"] for r in dedupe([measured, first])] == [3]
    assert [r["cost_nano"] for r in dedupe([first, measured, second])] == [3]
    assert dedupe([]) == []


def test_dedupe_does_not_alias_the_input() -> None:
    out = dedupe(LEDGER)
    out[0]["cost_nano"] = -1
    assert LEDGER[0]["cost_nano"] == 7_500_000


# ---------------------------------------------------------------- totals


def test_totals_exact() -> None:
    assert totals(LEDGER) == {
        "requests": 12,
        "cost_usd": "0.058935301",
        "cost_nano": TOTAL_NANO,
        "input_tokens": 9540,
        "cached_input_tokens": 3200,
        "cache_creation_input_tokens": 1000,
        "output_tokens": 2080,
        "reasoning_tokens": 300,
        "cache_hits": 1,
        "cache_savings_usd": "0.007000000",
        "cache_savings_nano": 7_000_000,
        # r2 saved 5_640_000, r10 cost 200 more than asked for
        "routing_savings_usd": "0.005639800",
        "routing_savings_nano": 5_639_800,
        "estimated_requests": 1,
        "estimated_share": "0.0833",  # 1/12
        "errors": 2,  # 429 and 500; "expired" is not an HTTP error
    }
    assert list(totals(LEDGER)) == list(METRIC_COLUMNS)


def test_totals_of_nothing_is_a_zero_row() -> None:
    zero = totals([])
    assert zero["requests"] == 0 and zero["cost_usd"] == "0.000000000" and zero["estimated_share"] == "0.0000"
    assert aggregate([], ["team"]) == []


def test_negative_routing_savings_render_with_a_sign() -> None:
    row = totals([LEDGER[12]])  # r10 alone
    assert row["routing_savings_nano"] == -200 and row["routing_savings_usd"] == "-0.000000200"


# ---------------------------------------------------------------- aggregate, every dimension


def test_by_team_exact() -> None:
    rows = aggregate(LEDGER, ["team"])
    assert costs(rows, "team") == [("support", 5, 51_000_001), ("search", 7, 7_935_300)]
    support, search = rows
    assert (
        support["input_tokens"],
        support["cached_input_tokens"],
        support["cache_creation_input_tokens"],
        support["output_tokens"],
        support["reasoning_tokens"],
    ) == (5410, 3000, 1000, 900, 300)
    assert (support["estimated_share"], support["errors"], support["cache_hits"]) == ("0.2000", 1, 0)
    assert (search["input_tokens"], search["cached_input_tokens"]) == (4130, 200)
    assert (search["output_tokens"], search["reasoning_tokens"]) == (1180, 0)
    assert search["cache_hits"] == 1 and search["cache_savings_usd"] == "0.007000000"
    assert search["routing_savings_nano"] == 5_639_800 and search["estimated_share"] == "0.0000"
    assert search["cost_usd"] == "0.007935300"


@pytest.mark.parametrize(
    ("dimension", "expected"),
    [
        (
            "model",
            [("claude-sonnet-4", 4, 51_000_000), ("gpt-4o", 6, 7_575_300), ("gpt-4o-mini", 2, 360_001)],
        ),
        (
            "requested_model",
            [("claude-sonnet-4", 4, 51_000_000), ("gpt-4o", 6, 7_935_000), ("gpt-4o-mini", 2, 301)],
        ),
        ("provider", [("anthropic", 4, 51_000_000), ("openai", 8, 7_935_301)]),
        ("key", [("k3", 4, 51_000_000), ("k1", 5, 7_935_000), ("k2", 2, 300), ("k4", 1, 1)]),
        ("route", [("default", 10, 58_575_300), ("cheap", 2, 360_001)]),
        ("operation", [("chat", 11, 58_935_300), ("embeddings", 1, 1)]),
        (
            "day",
            [
                ("2026-11-01", 9, 58_860_300),
                ("2026-12-01", 1, 50_000),
                ("2026-11-30", 1, 25_000),
                ("2026-11-02", 1, 1),
            ],
        ),
        (
            "hour",
            [
                ("2026-11-01T15:00:00Z", 3, 40_000_000),
                ("2026-11-01T13:00:00Z", 5, 18_860_300),
                ("2026-12-01T00:00:00Z", 1, 50_000),
                ("2026-11-30T23:00:00Z", 1, 25_000),
                ("2026-11-02T00:00:00Z", 1, 1),
                ("2026-11-01T14:00:00Z", 1, 0),
            ],
        ),
        ("tag:env", [("", 2, 40_000_001), ("staging", 3, 11_000_000), ("prod", 7, 7_935_300)]),
        ("tag:app", [("", 9, 51_435_001), ("web", 2, 7_500_000), ("batch", 1, 300)]),
    ],
)
def test_every_partitioning_dimension(dimension: str, expected: list[tuple[Any, ...]]) -> None:
    rows = aggregate(LEDGER, [dimension])
    assert costs(rows, dimension) == expected
    assert sum(row["cost_nano"] for row in rows) == TOTAL_NANO
    assert sum_rows(rows) == totals(LEDGER)


def test_tag_dimension_counts_a_record_once_per_tag() -> None:
    rows = aggregate(LEDGER, ["tag"])
    assert costs(rows, "tag") == [
        ("", 2, 40_000_001),
        ("env=staging", 3, 11_000_000),
        ("env=prod", 7, 7_935_300),
        ("app=web", 2, 7_500_000),
        ("app=batch", 1, 300),
    ]
    # r1, r7, r10 carry two tags each, so they are counted twice
    assert sum(row["cost_nano"] for row in rows) == TOTAL_NANO + 7_500_300
    assert sum(row["requests"] for row in rows) == 12 + 3


def test_two_dimensions_and_sort_order() -> None:
    rows = aggregate(LEDGER, ["team", "model"])
    assert costs(rows, "team", "model") == [
        ("support", "claude-sonnet-4", 4, 51_000_000),
        ("search", "gpt-4o", 6, 7_575_300),
        ("search", "gpt-4o-mini", 1, 360_000),
        ("support", "gpt-4o-mini", 1, 1),
    ]
    assert list(rows[0])[:2] == ["team", "model"]
    assert sum(row["cost_nano"] for row in rows) == TOTAL_NANO


def test_ties_sort_by_group_values() -> None:
    ties = [rec(f"t{i}", "2026-11-01T00:00:00Z", team, cost_nano=5) for i, team in enumerate("cab")]
    assert [row["team"] for row in aggregate(ties, ["team"])] == ["a", "b", "c"]


def test_no_dimension_is_one_total_row() -> None:
    assert aggregate(LEDGER, []) == [totals(LEDGER)]


@pytest.mark.parametrize("by", [["colour"], ["tag:"], ["team", "team"]])
def test_bad_dimensions_are_refused(by: list[str]) -> None:
    with pytest.raises(ValueError, match="dimension"):
        aggregate(LEDGER, by)


def test_aggregate_is_idempotent_over_redelivery() -> None:
    assert aggregate(LEDGER + LEDGER, ["team", "hour"]) == aggregate(LEDGER, ["team", "hour"])


# ---------------------------------------------------------------- renderers


def test_render_table_is_aligned_with_a_total_line() -> None:
    rows = aggregate(LEDGER, ["team", "model"])
    text = render_table(rows, ["team", "model"])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["team", "model", "requests", "cost_usd"]
    assert len({len(line) for line in lines}) == 1  # every line ends at the right-aligned last column
    assert lines[-1].startswith("TOTAL ") and "0.058935301" in lines[-1]
    assert "0.051000000" in lines[2]  # the costliest group first
    assert len(lines) == 2 + len(rows) + 2


def test_render_table_flags_double_counting_and_handles_no_dimension() -> None:
    tagged = render_table(aggregate(LEDGER, ["tag"]), ["tag"]).splitlines()
    assert tagged[-2].startswith("TOTAL*") and "0.066435601" in tagged[-2]
    assert "counted once per tag" in tagged[-1]
    plain = render_table(aggregate(LEDGER, []), []).splitlines()
    assert plain[-1].startswith("TOTAL") and "0.058935301" in plain[-1]
    assert render_table([], ["team"]).splitlines()[-1].split()[:3] == ["TOTAL", "0", "0.000000000"]


def test_render_csv_round_trips() -> None:
    rows = aggregate(LEDGER, ["team", "tag:env"])
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows, ["team", "tag:env"]))))
    assert list(parsed[0]) == ["team", "tag:env", *METRIC_COLUMNS]
    assert [{k: str(v) for k, v in row.items()} for row in rows] == parsed


def test_render_json_round_trips_money_as_strings() -> None:
    rows = aggregate(LEDGER, ["provider"])
    decoded = jsonutil.loads(render_json(rows, totals(LEDGER)))
    assert decoded == {"rows": rows, "totals": totals(LEDGER)}
    assert decoded["totals"]["cost_usd"] == "0.058935301"


# ---------------------------------------------------------------- FOCUS 1.2


def test_focus_rows_exact() -> None:
    rows = focus_rows(LEDGER)
    summary = [
        (r["ChargePeriodStart"], r["SubAccountId"], r["ResourceId"], r["BilledCost"], r["ConsumedQuantity"])
        for r in rows
    ]
    assert summary == [
        ("2026-11-01T13:00:00Z", "search", "gpt-4o", "0.007500300", "1650"),
        ("2026-11-01T13:00:00Z", "search", "gpt-4o-mini", "0.000360000", "2100"),
        ("2026-11-01T13:00:00Z", "support", "claude-sonnet-4", "0.011000000", "6300"),
        ("2026-11-01T14:00:00Z", "search", "gpt-4o", "0.000000000", "1500"),
        ("2026-11-01T15:00:00Z", "search", "gpt-4o", "0.000000000", "0"),
        ("2026-11-01T15:00:00Z", "support", "claude-sonnet-4", "0.040000000", "0"),
        ("2026-11-02T00:00:00Z", "support", "gpt-4o-mini", "0.000000001", "10"),
        ("2026-11-30T23:00:00Z", "search", "gpt-4o", "0.000025000", "20"),
        ("2026-12-01T00:00:00Z", "search", "gpt-4o", "0.000050000", "40"),
    ]
    assert validate_focus_rows(rows, expected_cost_nano=TOTAL_NANO) == []


def test_focus_row_columns() -> None:
    rows = focus_rows(LEDGER)
    first, claude, late = rows[0], rows[2], rows[7]
    assert list(first) == FOCUS_COLUMNS
    assert first["ChargePeriodEnd"] == "2026-11-01T14:00:00Z"
    assert (first["BillingPeriodStart"], first["BillingPeriodEnd"]) == (
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    assert first["BilledCost"] == first["EffectiveCost"] == first["ListCost"] == first["ContractedCost"]
    assert first["PricingQuantity"] == first["ConsumedQuantity"]
    assert (first["ConsumedUnit"], first["PricingUnit"]) == ("Tokens", "Tokens")
    assert (first["ChargeCategory"], first["ChargeClass"], first["ChargeFrequency"]) == (
        "Usage",
        None,
        "Usage-Based",
    )
    assert first["ChargeDescription"] == "LLM tokens: gpt-4o for team search"
    assert first["ServiceCategory"] == "AI and Machine Learning"
    assert first["ServiceSubcategory"] == "Generative AI"
    assert (
        first["ServiceName"],
        first["ProviderName"],
        first["PublisherName"],
        first["InvoiceIssuerName"],
    ) == ("OpenAI API", "OpenAI", "OpenAI", "OpenAI")
    assert (first["SkuId"], first["SkuPriceId"]) == ("gpt-4o", "gpt-4o:tokens")
    assert first["ResourceId"] == first["ResourceName"] == "gpt-4o" and first["ResourceType"] == "LLM Model"
    assert (first["RegionId"], first["RegionName"], first["BillingCurrency"]) == (None, None, "USD")
    assert (first["x_RequestCount"], first["x_InputTokens"], first["x_OutputTokens"]) == ("2", "1100", "550")
    assert first["x_CachedInputTokens"] == "200" and first["x_RoutingSavings"] == "-0.000000200"
    assert first["x_RequestedModels"] == "gpt-4o,gpt-4o-mini"
    # r1 {env: prod, app: web} and r10 {env: prod, app: batch}: app is mixed, so it is left out
    assert jsonutil.loads(first["Tags"]) == {"env": "prod", "team": "search"}
    assert claude["ServiceName"] == "Anthropic API" and claude["x_ReasoningTokens"] == "300"
    assert (claude["x_CachedInputTokens"], claude["x_CacheCreationInputTokens"]) == ("3000", "1000")
    # r6 has no tags, r8 has env=staging: a tag some records lack is not attributed to the row
    assert jsonutil.loads(rows[5]["Tags"]) == {"team": "support"} and rows[5]["x_EstimatedShare"] == "0.5000"
    assert rows[3]["x_CacheSavings"] == "0.007000000"
    assert late["ChargePeriodEnd"] == late["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"
    assert (rows[8]["BillingPeriodStart"], rows[8]["BillingPeriodEnd"]) == (
        "2026-12-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    )


def test_focus_options_and_provider_names() -> None:
    row = focus_rows(LEDGER[:1], billing_currency="USD", billing_account="acme-llm")[0]
    assert row["BillingAccountId"] == row["BillingAccountName"] == "acme-llm"
    assert provider_names("mistral_ai") == ("Mistral AI", "Mistral AI API")
    assert provider_names("acme") == ("acme", "acme API")
    assert provider_names("") == ("unknown", "unknown API")


def test_user_tag_named_team_does_not_override_the_team() -> None:
    row = focus_rows([rec("t", "2026-11-01T00:00:00Z", "real", tags={"team": "spoof", "env": "x"})])[0]
    assert jsonutil.loads(row["Tags"]) == {"env": "x", "team": "real"}


def test_focus_csv_header_types_and_custom_prefix() -> None:
    text = render_focus_csv(LEDGER)
    reader = csv.reader(io.StringIO(text))
    assert next(reader) == FOCUS_COLUMNS
    assert all(c.startswith("x_") for c in FOCUS_COLUMNS if c not in FOCUS_SPEC_COLUMNS)
    assert [c for c in FOCUS_COLUMNS if c.startswith("x_")] == FOCUS_COLUMNS[-10:]  # FOCUS columns first
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 9
    assert validate_focus_rows(parsed, expected_cost_nano=TOTAL_NANO) == []
    assert parsed[0]["ChargeClass"] == "" and parsed[0]["RegionId"] == ""  # null is an empty field


def test_decimals_never_use_exponent_notation() -> None:
    one_nano = [rec("n", "2026-11-01T00:00:00Z", "t", usage=usage(1), cost_nano=1, counterfactual_nano=1)]
    row = focus_rows(one_nano)[0]
    assert row["BilledCost"] == "0.000000001"
    assert totals(one_nano)["cost_usd"] == "0.000000001"
    assert totals(one_nano)["estimated_share"] == "0.0000"  # not "0E-4"
    plain = re.compile(r"-?\d+(\.\d+)?")
    from_csv = list(csv.DictReader(io.StringIO(render_focus_csv(LEDGER + one_nano))))
    for row in focus_rows(LEDGER) + focus_rows(one_nano) + from_csv:
        for name, kind in FOCUS_TYPES.items():
            if kind == "Decimal":
                assert plain.fullmatch(row[name]), (name, row[name])
    money = ("cost_usd", "cache_savings_usd", "routing_savings_usd", "estimated_share")
    for row in [*aggregate(LEDGER + one_nano, ["hour"]), totals(one_nano)]:
        assert all(plain.fullmatch(row[name]) for name in money), row


def test_validator_reports_each_kind_of_problem() -> None:
    good = focus_rows(LEDGER[:1])[0]
    assert validate_focus_rows([good]) == []
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in good.items() if k != "BilledCost"}, "missing mandatory column BilledCost"),
        ({**good, "ServiceName": None}, "ServiceName must not be null"),
        ({**good, "BilledCost": "7.5E-3"}, "not a plain decimal"),
        ({**good, "ChargePeriodStart": "2026-11-01 13:00:00"}, "not YYYY-MM-DDTHH:MM:SSZ"),
        ({**good, "ChargePeriodStart": "yesterday"}, "not a date-time"),
        ({**good, "Tags": "[1]"}, "not a JSON object"),
        ({**good, "Tags": "{"}, "not JSON"),
        ({**good, "ConsumedUnit": None}, "ConsumedUnit must be null exactly when"),
        ({**good, "ConsumedQuantity": "", "PricingQuantity": "0"}, "ConsumedUnit must be null exactly when"),
        ({**good, "RequestCount": "1"}, "custom column RequestCount lacks the x_ prefix"),
        ({**good, "ChargePeriodEnd": good["ChargePeriodStart"]}, "ChargePeriodEnd must be after"),
        ({**good, "x_RequestCount": 2}, "expected a Decimal string"),
    ]
    for row, message in cases:
        problems = validate_focus_rows([row])
        assert any(message in p for p in problems), (message, problems)
    assert any("ledger" in p for p in validate_focus_rows([good], expected_cost_nano=7_500_001))
    assert validate_focus_rows([good, {**good, "x_Extra": "anything"}], expected_cost_nano=15_000_000) == []


# ---------------------------------------------------------------- time window


def test_parse_since_until() -> None:
    nov, dec = 1_793_491_200_000, 1_796_083_200_000  # 2026-11-01, 2026-12-01 midnight UTC
    assert parse_since_until("2026-11-01", "2026-12-01") == (nov, dec)
    assert parse_since_until("2026-11-01T00:00:00Z", "2026-12-01T00:00:00+00:00") == (nov, dec)
    # a naive date-time is UTC; surrounding spaces are ignored
    assert parse_since_until("2026-11-01T00:00:00", " 2026-11-01T00:00:00.001Z ") == (nov, nov + 1)
    assert parse_since_until("2026-11-01T02:00:00+02:00", "2026-11-01T01:00:00Z") == (nov, nov + 3_600_000)
    for since, until, param in [
        ("2026-12-01", "2026-11-01", "until"),
        ("2026-11-01", "2026-11-01", "until"),
        ("soon", "2026-11-01", "since"),
        ("2026-11-01", "later", "until"),
        ("2026-13-01", "2026-12-01", "since"),
        ("0001-01-01T00:00:00+01:00", "2026-12-01", "since"),  # before year 1 in UTC
        ("2026-11-01", "9999-12-31T23:59:59-01:00", "until"),  # after year 9999 in UTC
    ]:
        with pytest.raises(TimeWindowError) as caught:
            parse_since_until(since, until)
        assert caught.value.param == param, (since, until)
        assert param in str(caught.value)


def test_filter_window_is_half_open() -> None:
    since, until = parse_since_until("2026-11-01", "2026-12-01")
    inside = {r["request_id"] for r in filter_window(LEDGER, since, until)}
    assert "r11" in inside and "r12" not in inside and len(inside) == 11


# ---------------------------------------------------------------- property: money is conserved

records_strategy = st.lists(
    st.builds(
        lambda rid, team, model, tags, cost, cf, est, cache, ts, status, inp, out: rec(
            f"r{rid}",
            "2026-11-01T00:00:00Z",
            team,
            served_model=model,
            tags=tags,
            cost_nano=cost,
            counterfactual_nano=cf,
            estimated=est,
            cache=cache,
            ts_ms=ts,
            status=status,
            usage={} if est else usage(inp, out=out),
        ),
        st.integers(0, 25),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["m1", "m2", "m3"]),
        st.dictionaries(st.sampled_from(["env", "app"]), st.sampled_from(["x", "y"]), max_size=2),
        st.integers(0, 10**13),
        st.integers(0, 10**13),
        st.booleans(),
        st.sampled_from(["hit", "miss", "bypass"]),
        st.integers(1_767_225_600_000, 1_830_297_600_000),  # 2026-01-01 .. 2028-01-01
        st.sampled_from([200, 429, 500, "expired", "in_flight"]),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(records_strategy)
def test_money_is_conserved_by_every_view(records: list[dict[str, Any]]) -> None:
    expected = sum(r["cost_nano"] for r in dedupe(records))
    assert sum(row["cost_nano"] for row in aggregate(records, ["team", "model"])) == expected
    assert sum(row["cost_nano"] for row in aggregate(records, ["day", "tag:env"])) == expected
    assert sum(row["cost_nano"] for row in aggregate(records, ["tag"])) >= expected
    assert totals(records)["cost_nano"] == expected
    rows = focus_rows(records)
    assert validate_focus_rows(rows, expected_cost_nano=expected) == []
    assert sum(int(r["x_RequestCount"]) for r in rows) == len(dedupe(records))
