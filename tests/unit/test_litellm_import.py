"""LiteLLM catalog import: exact per-token -> per-1M conversion, field mapping, skips, rendering."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsonutil import loads
from gateway.metering.litellm_import import convert_litellm_catalog, render_catalog_yaml
from gateway.metering.pricing import PriceCatalog

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_sample.json"
AS_OF = date(2026, 11, 1)
SOURCE = "https://raw.githubusercontent.com/BerriAI/litellm/00035b6/model_prices_and_context_window.json"


Converted = tuple[dict[str, dict[str, Any]], list[str]]


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    data: dict[str, Any] = loads(FIXTURE.read_bytes())
    return data


@pytest.fixture(scope="module")
def converted(sample: dict[str, Any]) -> Converted:
    return convert_litellm_catalog(sample, as_of=AS_OF, source=SOURCE)


def test_imports_priced_chat_completion_and_embedding_entries(
    converted: Converted,
) -> None:
    models, _ = converted
    assert set(models) == {
        "gpt-4o",
        "claude-3-5-haiku-20241022",
        "gemini/gemini-2.5-flash",
        "text-embedding-3-small",
        "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "example/odd-precision",
    }


def test_openai_entry_is_exact(converted: Converted) -> None:
    entry = converted[0]["gpt-4o"]
    assert entry == {
        "provider": "openai",
        "input": Decimal("2.5"),
        "cached_input": Decimal("1.25"),
        "cache_write": None,
        "output": Decimal("10"),
        "reasoning": None,
        "context_window": 128_000,
        "max_output_tokens": 16_384,
        "source": SOURCE,
        "as_of": AS_OF,
    }
    assert all(isinstance(entry[f], Decimal) for f in ("input", "cached_input", "output"))


def test_anthropic_cache_fields_are_mapped(converted: Converted) -> None:
    entry = converted[0]["claude-3-5-haiku-20241022"]
    assert (entry["input"], entry["cached_input"], entry["cache_write"], entry["output"]) == (
        Decimal("0.8"),
        Decimal("0.08"),
        Decimal("1"),
        Decimal("4"),
    )
    assert entry["provider"] == "anthropic"


def test_reasoning_price_and_provider_vocabulary(
    converted: Converted,
) -> None:
    models = converted[0]
    gemini = models["gemini/gemini-2.5-flash"]
    assert gemini["provider"] == "gcp.gemini"
    assert (gemini["input"], gemini["cached_input"]) == (Decimal("0.3"), Decimal("0.03"))
    assert (gemini["output"], gemini["reasoning"]) == (Decimal("2.5"), Decimal("2.5"))
    assert gemini["max_output_tokens"] == 65_535
    together = models["together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"]
    assert together["provider"] == "together"
    assert together["context_window"] is None  # not in the entry: left unknown, never guessed
    assert models["example/odd-precision"]["provider"] == "some_new_provider"  # unknown ids pass through


def test_embedding_output_is_zero(converted: Converted) -> None:
    entry = converted[0]["text-embedding-3-small"]
    assert (entry["input"], entry["output"], entry["context_window"]) == (Decimal("0.02"), Decimal(0), 8191)


def test_sub_micro_prices_are_rounded_half_up_with_a_warning(
    converted: Converted,
) -> None:
    models, warnings = converted
    assert models["example/odd-precision"]["input"] == Decimal("0.123457")  # from 0.12345678
    assert any("example/odd-precision" in w and "0.12345678" in w and "rounded" in w for w in warnings)


def test_skips_are_reported(converted: Converted) -> None:
    warnings = converted[1]
    assert any(w.startswith("skipped dall-e-3:") and "image_generation" in w for w in warnings)
    assert any(w.startswith("skipped example/no-output-price:") for w in warnings)
    assert not any("sample_spec" in w for w in warnings)  # documentation, not a model
    assert len(warnings) == 3


def test_only_restricts_and_reports_missing(sample: dict[str, Any]) -> None:
    models, warnings = convert_litellm_catalog(
        sample, as_of=AS_OF, source=SOURCE, only={"gpt-4o", "sample_spec", "gpt-9"}
    )
    assert set(models) == {"gpt-4o"}
    assert warnings == ["not found in LiteLLM data: gpt-9"]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"mode": "chat", "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06}, "litellm_provider"),
        ({"litellm_provider": "openai", "mode": "chat", "output_cost_per_token": 1e-06}, "input_cost"),
        ({"litellm_provider": "openai", "input_cost_per_token": 1e-06, "output_cost_per_token": 0}, "mode"),
        (
            {
                "litellm_provider": "x",
                "mode": "chat",
                "input_cost_per_token": -1e-06,
                "output_cost_per_token": 0,
            },
            "negative",
        ),
        (
            {
                "litellm_provider": "x",
                "mode": "chat",
                "input_cost_per_token": "n/a",
                "output_cost_per_token": 0,
            },
            "input_cost_per_token",
        ),
        ("not an object", "object"),
    ],
)
def test_malformed_entries_are_skipped(entry: Any, reason: str) -> None:
    models, warnings = convert_litellm_catalog({"m": entry}, as_of=AS_OF, source=SOURCE)
    assert models == {}
    assert len(warnings) == 1 and warnings[0].startswith("skipped m:") and reason in warnings[0]


@given(st.integers(min_value=0, max_value=10**9))
def test_float_per_token_prices_convert_exactly(micro_usd_per_mtok: int) -> None:
    # Any catalog price with <= 6 decimals, once stored as LiteLLM's per-token float, comes back exact.
    usd_per_mtok = Decimal(micro_usd_per_mtok).scaleb(-6)
    per_token = float(usd_per_mtok / 1_000_000)
    raw = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": per_token}
    raw["output_cost_per_token"] = per_token
    models, warnings = convert_litellm_catalog({"m": raw}, as_of=AS_OF, source=SOURCE)
    assert warnings == []
    assert models["m"]["input"] == usd_per_mtok


# --- rendering ---------------------------------------------------------------------------------------


def test_rendered_yaml_validates_and_round_trips(converted: Converted) -> None:
    models = converted[0]
    catalog = PriceCatalog.model_validate(yaml.safe_load(render_catalog_yaml(models)))
    assert set(catalog.models) == set(models)
    for name, entry in models.items():
        parsed = catalog.models[name]
        for field, value in entry.items():
            assert getattr(parsed, field) == value, (name, field)


def test_rendering_is_deterministic(converted: Converted) -> None:
    models = converted[0]
    reordered = {name: dict(reversed(entry.items())) for name, entry in reversed(models.items())}
    assert render_catalog_yaml(models) == render_catalog_yaml(reordered)


def test_rendered_layout(converted: Converted) -> None:
    text = render_catalog_yaml({"gpt-4o": converted[0]["gpt-4o"]}, header="line one\nline two")
    assert text.startswith("# line one\n# line two\n\nversion: 1\ncurrency: USD\nmodels:\n  gpt-4o:\n")
    assert "    input: 2.50\n" in text and "    output: 10.00\n" in text
    assert "    cache_write: null\n" in text and "    as_of: 2026-11-01\n" in text


@pytest.mark.parametrize("name", ["yes", "null", "2024-01-01", "1.5", "a: b", "x #y", "-dash", "ünïcode"])
def test_awkward_model_names_survive_yaml(name: str) -> None:
    entry = {"provider": "openai", "input": Decimal("0.000001"), "output": Decimal("123456.5")}
    entry |= {"source": "internal: rate card #7", "as_of": AS_OF}
    catalog = PriceCatalog.model_validate(yaml.safe_load(render_catalog_yaml({name: entry})))
    assert list(catalog.models) == [name]
    parsed = catalog.models[name]
    assert (parsed.input, parsed.output, parsed.source) == (entry["input"], entry["output"], entry["source"])


def test_render_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        render_catalog_yaml({"m": {"provider": "openai", "input": Decimal(1), "colour": "red"}})
