"""Spend reports over ledger records: dedupe, group-by aggregation, renderers and a FOCUS 1.2 export.

Everything here is a pure function over a list of ledger record dicts (see :mod:`gateway.metering.ledger`).
Money stays integer nano-USD until it is rendered, and is rendered exactly with
:func:`~gateway.metering.pricing.nano_to_usd_str` (9 decimals, never an exponent, never a float).

Token counts follow :class:`~gateway.metering.usage.Usage`: ``input_tokens`` already includes the cached
and cache-creation tokens, ``output_tokens`` already includes the reasoning tokens, so only input and
output may be added together.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import product
from typing import Any

from gateway import jsonutil
from gateway.metering.pricing import NANO_PER_USD, nano_to_usd_str

Record = Mapping[str, Any]

TOKEN_KINDS: tuple[str, ...] = (
    "input_tokens",
    "cached_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_tokens",
)
METRIC_COLUMNS: tuple[str, ...] = (
    "requests",
    "cost_usd",
    "cost_nano",
    *TOKEN_KINDS,
    "cache_hits",
    "cache_savings_usd",
    "cache_savings_nano",
    "routing_savings_usd",
    "routing_savings_nano",
    "estimated_requests",
    "estimated_share",
    "errors",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS_PER_HOUR = 3_600_000
_SHARE_QUANTUM = Decimal("0.0001")


# ---------------------------------------------------------------- dedupe


def dedupe(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One record per ``request_id`` (the ledger is at-least-once), in first-seen order.

    A measured record beats an estimated one (the write-ahead intent of a request that later completed);
    otherwise the first delivery wins, so a replayed duplicate never changes a report.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        request_id = str(record["request_id"])
        kept = chosen.get(request_id)
        if kept is None or (kept.get("estimated") and not record.get("estimated")):
            chosen[request_id] = dict(record)
    return list(chosen.values())


# ---------------------------------------------------------------- accumulation


def _tokens(record: Record, kind: str) -> int:
    value = (record.get("usage") or {}).get(kind, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _is_error(status: Any) -> bool:
    return isinstance(status, int) and not isinstance(status, bool) and status >= 400


def _share(part: int, whole: int) -> str:
    """``part / whole`` as a 4-decimal string, rounded half up, computed in Decimal."""
    if whole == 0:
        return "0.0000"
    return format((Decimal(part) / Decimal(whole)).quantize(_SHARE_QUANTUM, rounding=ROUND_HALF_UP), "f")


_COUNTERS: tuple[str, ...] = tuple(c for c in METRIC_COLUMNS if not c.endswith(("_usd", "_share")))


@dataclass(slots=True)
class _Sums:
    """Integer sums for one group (:data:`_COUNTERS`); rendered only at the end, never rounded twice."""

    n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))

    def add(self, record: Record) -> None:
        n = self.n
        cost = int(record.get("cost_nano", 0))
        counterfactual = int(record.get("counterfactual_nano", 0))
        n["requests"] += 1
        n["errors"] += _is_error(record.get("status"))
        n["estimated_requests"] += bool(record.get("estimated"))
        n["cost_nano"] += cost
        if record.get("cache") == "hit":
            # A hit costs nothing; what it saved is what the answer cost when it was made.
            n["cache_hits"] += 1
            n["cache_savings_nano"] += counterfactual
        else:
            n["routing_savings_nano"] += counterfactual - cost
        for kind in TOKEN_KINDS:
            n[kind] += _tokens(record, kind)

    def add_row(self, row: Mapping[str, Any]) -> None:
        for name in _COUNTERS:
            self.n[name] += row[name]

    def row(self) -> dict[str, Any]:
        n = self.n
        rendered = {
            f"{money}_usd": nano_to_usd_str(n[f"{money}_nano"])
            for money in ("cost", "cache_savings", "routing_savings")
        }
        rendered["estimated_share"] = _share(n["estimated_requests"], n["requests"])
        return {name: rendered[name] if name in rendered else n[name] for name in METRIC_COLUMNS}


# ---------------------------------------------------------------- aggregation


def _utc(ms: int) -> datetime:
    # Integer timedelta arithmetic: exact for any epoch-ms value, unlike float timestamps.
    return _EPOCH + timedelta(milliseconds=ms)


def _iso_z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hour_start_ms(ts_ms: int) -> int:
    return ts_ms - ts_ms % _MS_PER_HOUR


def _field(name: str) -> Callable[[Record], list[str]]:
    return lambda record: [str(record.get(name, ""))]


def _tag_pairs(record: Record) -> list[str]:
    tags = record.get("tags") or {}
    # An untagged record still lands in one group (""), so no spend disappears from a tag report.
    return [f"{key}={value}" for key, value in sorted(tags.items())] or [""]


_DIMENSIONS: dict[str, Callable[[Record], list[str]]] = {
    "team": _field("team"),
    "model": _field("served_model"),
    "requested_model": _field("requested_model"),
    "provider": _field("provider"),
    "key": _field("key_id"),
    "route": _field("route"),
    "operation": _field("operation"),
    "day": lambda record: [_utc(int(record["ts_ms"])).date().isoformat()],
    "hour": lambda record: [_iso_z(_utc(_hour_start_ms(int(record["ts_ms"]))))],
    "tag": _tag_pairs,
}
DIMENSIONS: tuple[str, ...] = (*_DIMENSIONS, "tag:<name>")


def _dimension(name: str) -> Callable[[Record], list[str]]:
    if name.startswith("tag:") and len(name) > 4:
        tag = name[4:]
        return lambda record: [str((record.get("tags") or {}).get(tag, ""))]
    if name in _DIMENSIONS:
        return _DIMENSIONS[name]
    raise ValueError(f"unknown report dimension {name!r}; allowed: {', '.join(DIMENSIONS)}")


def aggregate(records: Iterable[Record], by: Sequence[str]) -> list[dict[str, Any]]:
    """Group the deduplicated records by ``by`` and sum each group (see :data:`METRIC_COLUMNS`).

    ``by`` names dimensions from :data:`DIMENSIONS` (``model`` is the served model, ``key`` the key id,
    ``day`` a UTC ``YYYY-MM-DD``, ``hour`` the UTC hour start ``YYYY-MM-DDTHH:00:00Z``, ``tag:<name>`` that
    tag's value or ""); each becomes a column of the row. ``tag`` puts a record in one group per ``key=value``
    pair (an untagged one in ""), so a record with two tags counts in both groups and **totals over a
    ``tag`` report double count**; any other dimension partitions the records, so rows sum to :func:`totals`.
    Rows are sorted by cost descending, then by group values.
    """
    if len(set(by)) != len(by):
        raise ValueError(f"duplicate report dimension in {list(by)}")
    keyers = [_dimension(name) for name in by]
    groups: dict[tuple[str, ...], _Sums] = {}
    for record in dedupe(records):
        for key in product(*(keyer(record) for keyer in keyers)):
            groups.setdefault(key, _Sums()).add(record)
    rows = [{**dict(zip(by, key, strict=True)), **sums.row()} for key, sums in groups.items()]
    rows.sort(key=lambda row: (-row["cost_nano"], tuple(row[name] for name in by)))
    return rows


def totals(records: Iterable[Record]) -> dict[str, Any]:
    """One row over all deduplicated records (an all-zero row when there are none)."""
    sums = _Sums()
    for record in dedupe(records):
        sums.add(record)
    return sums.row()


def sum_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Re-add aggregate rows exactly (integer fields only), e.g. for a table's TOTAL line."""
    sums = _Sums()
    for row in rows:
        sums.add_row(row)
    return sums.row()


def filter_window(records: Iterable[Record], since_ms: int, until_ms: int) -> list[Record]:
    """The records with ``since_ms <= ts_ms < until_ms``."""
    return [record for record in records if since_ms <= int(record["ts_ms"]) < until_ms]


# ---------------------------------------------------------------- renderers

_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("cost_usd", "cost_usd"),
    ("input_tokens", "input"),
    ("cached_input_tokens", "cached"),
    ("cache_creation_input_tokens", "cache_write"),
    ("output_tokens", "output"),
    ("reasoning_tokens", "reasoning"),
    ("cache_hits", "hits"),
    ("cache_savings_usd", "cache_saved_usd"),
    ("routing_savings_usd", "routing_saved_usd"),
    ("estimated_share", "est_share"),
    ("errors", "errors"),
)


def render_table(rows: Sequence[Mapping[str, Any]], by: Sequence[str]) -> str:
    """An aligned plain-text table: group columns left-aligned, numbers right-aligned, then a TOTAL line.

    With the ``tag`` dimension the TOTAL line re-adds records once per tag, so it is marked ``TOTAL*``.
    """
    headers = [*by, *(title for _, title in _TABLE_COLUMNS)]
    total = sum_rows(rows)
    label = "TOTAL*" if "tag" in by else "TOTAL"
    total_cells = [label if i == 0 else "" for i in range(len(by))] or [label]
    body = [[str(row[name]) for name in by] + [str(row[col]) for col, _ in _TABLE_COLUMNS] for row in rows]
    footer = total_cells + [str(total[col]) for col, _ in _TABLE_COLUMNS]
    if not by:  # no group column to hold the label: give it its own
        headers.insert(0, "")
        body = [["", *cells] for cells in body]
    n_left = max(len(by), 1)
    widths = [max(len(cells[i]) for cells in [headers, *body, footer]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(headers), rule, *(line(cells) for cells in body), rule, line(footer)]
    if "tag" in by:
        lines.append("* a record with several tags is counted once per tag")
    return "\n".join(lines) + "\n"


def render_csv(rows: Iterable[Mapping[str, Any]], by: Sequence[str]) -> str:
    """CSV with a header row: the group columns, then :data:`METRIC_COLUMNS`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*by, *METRIC_COLUMNS])
    for row in rows:
        writer.writerow([row[name] for name in (*by, *METRIC_COLUMNS)])
    return out.getvalue()


def render_json(rows: Sequence[Mapping[str, Any]], totals: Mapping[str, Any]) -> str:
    return jsonutil.dumps_str({"rows": list(rows), "totals": dict(totals)})


# ---------------------------------------------------------------- FOCUS 1.2 export
#
# Granularity: one Usage row per (UTC hour, team, served model, provider). The ledger holds each
# request's total cost only, so splitting it across token kinds would be an allocation, not a fact;
# instead ConsumedQuantity is all tokens (input + output; both already include their sub-kinds) and the
# per-kind counts go to x_ columns. PricingUnit is "Tokens" with PricingQuantity == ConsumedQuantity.
# The ledger records the negotiated cost only, so ListCost and ContractedCost equal BilledCost
# (no list-price claim is made); EffectiveCost == BilledCost because nothing here is prepaid.

_PROVIDERS: dict[str, tuple[str, str]] = {  # ledger provider id -> (display name, service name)
    "openai": ("OpenAI", "OpenAI API"),
    "anthropic": ("Anthropic", "Anthropic API"),
    "azure": ("Microsoft", "Azure OpenAI"),
    "azure.ai.openai": ("Microsoft", "Azure OpenAI"),
    "aws.bedrock": ("Amazon Web Services", "Amazon Bedrock"),
    "gcp.gemini": ("Google", "Gemini API"),
    "gcp.vertex_ai": ("Google Cloud", "Vertex AI"),
    "mistral_ai": ("Mistral AI", "Mistral AI API"),
    "deepseek": ("DeepSeek", "DeepSeek API"),
    "groq": ("Groq", "Groq API"),
    "x_ai": ("xAI", "xAI API"),
    "together": ("Together AI", "Together AI API"),
    "cohere": ("Cohere", "Cohere API"),
}

_X_SOURCES: dict[str, str] = {  # custom Decimal column -> the aggregate row field it shows
    "x_RequestCount": "requests",
    "x_InputTokens": "input_tokens",
    "x_CachedInputTokens": "cached_input_tokens",
    "x_CacheCreationInputTokens": "cache_creation_input_tokens",
    "x_OutputTokens": "output_tokens",
    "x_ReasoningTokens": "reasoning_tokens",
    "x_CacheSavings": "cache_savings_usd",
    "x_RoutingSavings": "routing_savings_usd",
    "x_EstimatedShare": "estimated_share",
}
# x_RequestedModels: the sorted distinct requested models of the row, comma-separated.
_X_COLUMNS: dict[str, str] = {**dict.fromkeys(_X_SOURCES, "Decimal"), "x_RequestedModels": "String"}
# The v1.2 columns this export fills, in the spec's (alphabetical) order; x_ columns after, as required.
FOCUS_TYPES: dict[str, str] = {
    "BilledCost": "Decimal",
    "BillingAccountId": "String",
    "BillingAccountName": "String",
    "BillingCurrency": "String",
    "BillingPeriodEnd": "DateTime",
    "BillingPeriodStart": "DateTime",
    "ChargeCategory": "String",
    "ChargeClass": "String",
    "ChargeDescription": "String",
    "ChargeFrequency": "String",
    "ChargePeriodEnd": "DateTime",
    "ChargePeriodStart": "DateTime",
    "ConsumedQuantity": "Decimal",
    "ConsumedUnit": "String",
    "ContractedCost": "Decimal",
    "EffectiveCost": "Decimal",
    "InvoiceIssuerName": "String",
    "ListCost": "Decimal",
    "PricingQuantity": "Decimal",
    "PricingUnit": "String",
    "ProviderName": "String",
    "PublisherName": "String",
    "RegionId": "String",
    "RegionName": "String",
    "ResourceId": "String",
    "ResourceName": "String",
    "ResourceType": "String",
    "ServiceCategory": "String",
    "ServiceName": "String",
    "ServiceSubcategory": "String",
    "SkuId": "String",
    "SkuPriceId": "String",
    "SubAccountId": "String",
    "SubAccountName": "String",
    "Tags": "JSON",
    **_X_COLUMNS,
}
FOCUS_COLUMNS: list[str] = list(FOCUS_TYPES)
# The v1.2 columns whose feature level is Mandatory, and the ones (of those) that never allow null.
FOCUS_MANDATORY: frozenset[str] = frozenset(
    {
        "BilledCost",
        "BillingAccountId",
        "BillingAccountName",
        "BillingCurrency",
        "BillingPeriodEnd",
        "BillingPeriodStart",
        "ChargeCategory",
        "ChargeClass",
        "ChargeDescription",
        "ChargePeriodEnd",
        "ChargePeriodStart",
        "ContractedCost",
        "EffectiveCost",
        "InvoiceIssuerName",
        "ListCost",
        "PricingQuantity",
        "PricingUnit",
        "ProviderName",
        "PublisherName",
        "ServiceCategory",
        "ServiceName",
        "ServiceSubcategory",
    }
)
_NOT_NULL = FOCUS_MANDATORY - {
    "BillingAccountName",
    "ChargeClass",
    "ChargeDescription",
    "PricingQuantity",
    "PricingUnit",
}
# Every v1.2 column id; anything else in a row must be a custom x_ column.
FOCUS_SPEC_COLUMNS: frozenset[str] = frozenset(FOCUS_TYPES).difference(_X_COLUMNS) | {
    "AvailabilityZone",
    "BillingAccountType",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ContractedUnitPrice",
    "InvoiceId",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "SkuMeter",
    "SkuPriceDetails",
    "SubAccountType",
}


def provider_names(provider: str) -> tuple[str, str]:
    """``(display name, service name)`` for a ledger provider id; unknown ids pass through."""
    name = provider or "unknown"
    return _PROVIDERS.get(name, (name, f"{name} API"))


def _month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month0 = divmod(start.year * 12 + start.month, 12)  # the next month, 0-based
    return start, start.replace(year=year, month=month0 + 1)


@dataclass(slots=True)
class _FocusGroup:
    sums: _Sums = field(default_factory=_Sums)
    requested: set[str] = field(default_factory=set)
    tags: dict[str, str] | None = None  # tags shared, with one value, by every record so far

    def add(self, record: Record) -> None:
        self.sums.add(record)
        self.requested.add(str(record.get("requested_model", "")))
        tags = {str(k): str(v) for k, v in (record.get("tags") or {}).items()}
        self.tags = tags if self.tags is None else {k: v for k, v in self.tags.items() if tags.get(k) == v}


_FocusKey = tuple[int, str, str, str]  # (hour start ms, team, served model, provider)


def _focus_row(key: _FocusKey, group: _FocusGroup, currency: str, account: str) -> dict[str, Any]:
    hour_ms, team, model, provider = key
    display, service = provider_names(provider)
    sums = group.sums.row()
    start = _utc(hour_ms)
    month_start, month_end = _month_bounds(start)
    cost = sums["cost_usd"]
    quantity = str(sums["input_tokens"] + sums["output_tokens"])
    tags = {**(group.tags or {}), "team": team}  # the key's team wins over a user tag named "team"
    return {
        "BilledCost": cost,
        "BillingAccountId": account,
        "BillingAccountName": account,
        "BillingCurrency": currency,
        "BillingPeriodEnd": _iso_z(month_end),
        "BillingPeriodStart": _iso_z(month_start),
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeDescription": f"LLM tokens: {model} for team {team}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": _iso_z(_utc(hour_ms + _MS_PER_HOUR)),
        "ChargePeriodStart": _iso_z(start),
        "ConsumedQuantity": quantity,
        "ConsumedUnit": "Tokens",
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": display,
        "ListCost": cost,
        "PricingQuantity": quantity,
        "PricingUnit": "Tokens",
        "ProviderName": display,
        "PublisherName": display,
        "RegionId": None,
        "RegionName": None,
        "ResourceId": model,
        "ResourceName": model,
        "ResourceType": "LLM Model",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": service,
        "ServiceSubcategory": "Generative AI",
        "SkuId": model,
        "SkuPriceId": f"{model}:tokens",
        "SubAccountId": team,
        "SubAccountName": team,
        "Tags": jsonutil.dumps_sorted(tags).decode(),
        **{column: str(sums[source]) for column, source in _X_SOURCES.items()},
        "x_RequestedModels": ",".join(sorted(group.requested)),
    }


def focus_rows(
    records: Iterable[Record], *, billing_currency: str = "USD", billing_account: str = "llm-gateway"
) -> list[dict[str, Any]]:
    """FOCUS 1.2 Usage rows (values are strings, ``None`` for null), keyed as :data:`FOCUS_COLUMNS`.

    ``Tags`` is ``{"team": ...}`` plus every user tag that all records of the row carry with the same
    value (a tag whose value varies, or that some records lack, is left out rather than misattributed).
    ``billing_account`` fills BillingAccountId/Name: the ledger does not know the operator's account.
    """
    groups: dict[_FocusKey, _FocusGroup] = {}
    for record in dedupe(records):
        key = (
            _hour_start_ms(int(record["ts_ms"])),
            str(record.get("team", "")),
            str(record.get("served_model", "")),
            str(record.get("provider", "")),
        )
        groups.setdefault(key, _FocusGroup()).add(record)
    return [_focus_row(key, groups[key], billing_currency, billing_account) for key in sorted(groups)]


def render_focus_csv(
    records: Iterable[Record], *, billing_currency: str = "USD", billing_account: str = "llm-gateway"
) -> str:
    """FOCUS rows as CSV: header :data:`FOCUS_COLUMNS`, null as an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FOCUS_COLUMNS)
    rows = focus_rows(records, billing_currency=billing_currency, billing_account=billing_account)
    for row in rows:
        writer.writerow(["" if row[name] is None else row[name] for name in FOCUS_COLUMNS])
    return out.getvalue()


_DECIMAL_RE = re.compile(r"-?\d+(\.\d+)?")
_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _type_problem(kind: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a {kind} string, got {type(value).__name__}"
    if kind == "Decimal" and not _DECIMAL_RE.fullmatch(value):
        return f"{value!r} is not a plain decimal"
    if kind == "DateTime":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return f"{value!r} is not a date-time"
        if not _DATETIME_RE.fullmatch(value):
            return f"{value!r} is not YYYY-MM-DDTHH:MM:SSZ"
    if kind == "JSON":
        try:
            parsed = jsonutil.loads(value)
        except jsonutil.JSONDecodeError:
            return f"{value!r} is not JSON"
        if not isinstance(parsed, dict):
            return f"{value!r} is not a JSON object"
    return None


def _row_problems(row: Mapping[str, Any]) -> list[str]:
    problems = [f"missing mandatory column {name}" for name in sorted(FOCUS_MANDATORY - set(row))]
    nulls = sorted(name for name in _NOT_NULL & set(row) if row[name] in (None, ""))
    problems += [f"{name} must not be null" for name in nulls]
    for name, value in row.items():
        if name not in FOCUS_SPEC_COLUMNS and not name.startswith("x_"):
            problems.append(f"custom column {name} lacks the x_ prefix")
        kind = FOCUS_TYPES.get(name)
        if kind and value not in (None, ""):
            problem = _type_problem(kind, value)
            problems += [f"{name}: {problem}"] if problem else []
    if (row.get("ConsumedQuantity") in (None, "")) != (row.get("ConsumedUnit") in (None, "")):
        problems.append("ConsumedUnit must be null exactly when ConsumedQuantity is null")
    for first, last in (("ChargePeriodStart", "ChargePeriodEnd"), ("BillingPeriodStart", "BillingPeriodEnd")):
        if not any(_type_problem("DateTime", row.get(n)) for n in (first, last)) and row[last] <= row[first]:
            problems.append(f"{last} must be after {first}")
    return problems


def validate_focus_rows(
    rows: Iterable[Mapping[str, Any]], *, expected_cost_nano: int | None = None
) -> list[str]:
    """Problems found in FOCUS rows (empty when valid); rows as built or as read back from the CSV.

    With ``expected_cost_nano`` (the ledger's cost over the same deduplicated records), also checks that
    BilledCost adds up to it exactly.
    """
    problems: list[str] = []
    billed = Decimal(0)
    for index, row in enumerate(rows):
        problems += [f"row {index}: {problem}" for problem in _row_problems(row)]
        with suppress(InvalidOperation):  # already reported as a type problem
            billed += Decimal(str(row.get("BilledCost")))
    if expected_cost_nano is not None and billed * NANO_PER_USD != expected_cost_nano:
        problems.append(f"BilledCost sums to {billed}, the ledger to {nano_to_usd_str(expected_cost_nano)}")
    return problems


# ---------------------------------------------------------------- time window


def _parse_instant(text: str) -> datetime:
    text = text.strip()
    if len(text) == 10:  # YYYY-MM-DD: midnight UTC
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    moment = datetime.fromisoformat(text)  # accepts a trailing Z on 3.11+
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a moment before year 1 in UTC
        raise ValueError(f"{text!r} is outside the years 1-9999 in UTC") from None


class TimeWindowError(ValueError):
    """A bad ``since`` or ``until``; ``param`` names the one at fault, for the caller's error."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_since_until(since: str, until: str) -> tuple[int, int]:
    """``[since, until)`` as epoch ms. Each side is ``YYYY-MM-DD`` (midnight UTC) or an ISO 8601
    date-time (UTC when it has no offset). ``until`` is exclusive: a whole November is
    ``2026-11-01`` .. ``2026-12-01``."""
    bounds = []
    for param, text in (("since", since), ("until", until)):
        try:
            bounds.append(_parse_instant(text))
        except ValueError as exc:
            raise TimeWindowError(
                param, f"`{param}` is not a date (YYYY-MM-DD) or an ISO 8601 date-time: {exc}"
            ) from None
    start, end = bounds
    if end <= start:
        raise TimeWindowError("until", f"until ({until}) must be after since ({since})")
    one_ms = timedelta(milliseconds=1)
    return (start - _EPOCH) // one_ms, (end - _EPOCH) // one_ms
