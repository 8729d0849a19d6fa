"""Convert LiteLLM's ``model_prices_and_context_window.json`` into our ``prices.yaml`` format.

LiteLLM states prices as float USD per *one* token (``2e-06``); we store exact decimals in USD per
1M tokens. Each float is read through ``repr`` (its shortest round-tripping decimal) and scaled by
10**6 in ``Decimal``, so ``2e-06`` becomes exactly ``2`` and never ``1.9999999999999998``.

The file changes often and grows fields per provider, so only the few fields we price with are read;
everything else is ignored. Skipped entries and any rounding are reported as warnings, never silent.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.jsonutil import dumps_str
from gateway.metering.pricing import MAX_PRICE_DECIMALS, RATE_FIELDS, ModelPrice, to_decimal

PRICED_MODES = frozenset({"chat", "completion", "embedding"})
_QUANTUM = Decimal(1).scaleb(-MAX_PRICE_DECIMALS)
_PER_MILLION = Decimal(1_000_000)

# LiteLLM field -> our field (all per token in LiteLLM, per 1M tokens here).
_COST_FIELDS: dict[str, str] = {
    "input_cost_per_token": "input",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_token": "output",
    "output_cost_per_reasoning_token": "reasoning",
}

# LiteLLM provider ids -> OpenTelemetry ``gen_ai.provider.name`` values (custom names where OTel has none).
# An id missing here is kept verbatim: it still labels the series, just not in OTel's vocabulary.
PROVIDER_NAMES: dict[str, str] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure.ai.openai",
    "azure_text": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai-language-models": "gcp.vertex_ai",
    "vertex_ai-anthropic_models": "gcp.vertex_ai",
    "vertex_ai-mistral_models": "gcp.vertex_ai",
    "vertex_ai-llama_models": "gcp.vertex_ai",
    "vertex_ai-embedding-models": "gcp.vertex_ai",
    "vertex_ai-text-models": "gcp.vertex_ai",
    "vertex_ai-chat-models": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "codestral": "mistral_ai",
    "text-completion-codestral": "mistral_ai",
    "deepseek": "deepseek",
    "groq": "groq",
    "together_ai": "together",
    "xai": "x_ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "watsonx": "ibm.watsonx.ai",
    "perplexity": "perplexity",
    "fireworks_ai": "fireworks",
    "openrouter": "openrouter",
}

# Field order of every rendered entry (mirrors ModelPrice).
ENTRY_FIELDS: tuple[str, ...] = (
    "provider",
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
    "context_window",
    "max_output_tokens",
    "source",
    "as_of",
)

DEFAULT_HEADER = (
    "Model list prices in USD per 1M tokens (exact decimals, at most 6 places).\n"
    "cached_input / cache_write default to input, reasoning defaults to output.\n"
    "Every figure is a list price as of its entry's as_of date, read from its source."
)


class _Skip(Exception):
    """An entry that cannot be imported; the message becomes the warning."""


def convert_litellm_catalog(
    data: dict[str, Any],
    *,
    as_of: date,
    source: str,
    only: set[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Convert LiteLLM's catalog to our ``models:`` mapping, plus warnings for what was skipped or rounded.

    ``only`` restricts the import to those model keys; any of them missing from ``data`` is a warning.
    Every produced entry has been validated by :class:`ModelPrice`.
    """
    models: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for name, raw in data.items():
        if name == "sample_spec" or (only is not None and name not in only):
            continue
        try:
            entry, notes = _convert_entry(name, raw, as_of=as_of, source=source)
        except _Skip as skip:
            warnings.append(f"skipped {name}: {skip}")
            continue
        models[name] = entry
        warnings.extend(notes)
    if only is not None:
        warnings.extend(f"not found in LiteLLM data: {name}" for name in sorted(only - data.keys()))
    return models, warnings


def _convert_entry(name: str, raw: Any, *, as_of: date, source: str) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(raw, dict):
        raise _Skip("entry is not an object")
    mode = raw.get("mode")
    if mode not in PRICED_MODES:
        raise _Skip(f"mode {mode!r} is not one of {sorted(PRICED_MODES)}")
    provider = raw.get("litellm_provider")
    if not isinstance(provider, str) or not provider:
        raise _Skip("no litellm_provider")
    if raw.get("input_cost_per_token") is None:
        raise _Skip("no input_cost_per_token")
    if raw.get("output_cost_per_token") is None and mode != "embedding":
        raise _Skip("no output_cost_per_token")

    notes: list[str] = []
    prices: dict[str, Decimal | None] = dict.fromkeys(RATE_FIELDS)
    prices["output"] = Decimal(0)  # embeddings produce no output tokens
    for litellm_field, field in _COST_FIELDS.items():
        value = raw.get(litellm_field)
        if value is not None:
            prices[field] = _per_token_to_per_million(name, litellm_field, value, notes)

    entry: dict[str, Any] = {
        "provider": PROVIDER_NAMES.get(provider, provider),
        **prices,
        "context_window": _positive_int(raw.get("max_input_tokens")),
        "max_output_tokens": _positive_int(raw.get("max_output_tokens")),
        "source": source,
        "as_of": as_of,
    }
    try:
        ModelPrice.model_validate(entry)
    except ValidationError as exc:
        raise _Skip(f"invalid after conversion: {exc.errors()[0]['msg']}") from exc
    return {field: entry[field] for field in ENTRY_FIELDS}, notes


def _per_token_to_per_million(name: str, field: str, value: Any, notes: list[str]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Skip(f"{field} is not a number: {value!r}")
    try:
        # repr() is the shortest decimal that round-trips the float: 2e-06 -> "2e-06", never 1.99999...
        per_token = to_decimal(repr(value) if isinstance(value, float) else value)
    except ValueError as exc:
        raise _Skip(f"{field}: {exc}") from exc
    if per_token < 0:
        raise _Skip(f"{field} is negative: {value!r}")
    exact = per_token * _PER_MILLION
    rounded = exact.quantize(_QUANTUM, rounding=ROUND_HALF_UP)
    if rounded != exact:
        notes.append(
            f"rounded {name} {field}: {_plain(exact)} USD/1M has more than {MAX_PRICE_DECIMALS} "
            f"decimals, stored as {_plain(rounded)}"
        )
    return _normalize(rounded)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _normalize(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (``Decimal('1E+1')``)."""
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return normalized.quantize(Decimal(1))
    return normalized


def _plain(value: Decimal) -> str:
    return format(value, "f")


# --- rendering ---------------------------------------------------------------------------------------

_PLAIN_SCALAR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+~%?=&-]*")


def render_catalog_yaml(models: dict[str, dict[str, Any]], *, header: str | None = None) -> str:
    """Render a ``prices.yaml`` document: entries sorted by (provider, model), fields in a fixed order.

    Output is deterministic for a given input, so a re-import shows up as a clean diff.
    """
    lines = [f"# {line}".rstrip() for line in (header or DEFAULT_HEADER).splitlines()]
    lines += ["", "version: 1", "currency: USD", "models:"]
    for name in sorted(models, key=lambda n: (str(models[n].get("provider", "")), n)):
        entry = models[name]
        unknown = sorted(set(entry) - set(ENTRY_FIELDS))
        if unknown:
            raise ValueError(f"{name}: unknown field(s) {unknown}")
        lines.append(f"  {_yaml_str(name)}:")
        lines.extend(f"    {field}: {_yaml_value(entry.get(field))}" for field in ENTRY_FIELDS)
    return "\n".join(lines) + "\n"


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal | float):
        return _yaml_price(to_decimal(value))
    if isinstance(value, date):
        return value.isoformat()
    return _yaml_str(str(value))


def _yaml_price(value: Decimal) -> str:
    """At least two decimals for readability (``2.50``), never exponent notation, never rounded."""
    text = _plain(_normalize(value))
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _yaml_str(text: str) -> str:
    """Plain scalar when YAML reads it back as the same string, else a double-quoted (JSON) scalar."""
    if _PLAIN_SCALAR.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return dumps_str(text)
