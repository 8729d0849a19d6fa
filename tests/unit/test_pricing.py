"""Exactness of the price catalog and the cost arithmetic.

Every expected cost is computed twice: by hand in the test with ``Decimal`` (USD per 1M tokens times
tokens), and as the literal nano-USD integer, so a mistake in either is visible.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.metering.pricing import (
    ModelPrice,
    PriceCatalog,
    Rates,
    cost_nano,
    cost_upper_bound_nano,
    nano_to_usd_str,
    usd_to_nano,
)
from gateway.metering.usage import Usage, from_anthropic, from_openai

PRICES_YAML = Path(__file__).resolve().parents[2] / "policies" / "prices.yaml"
MILLION = Decimal(1_000_000)


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.model_validate(yaml.safe_load(PRICES_YAML.read_text()))


def rates_of(catalog: PriceCatalog, model: str) -> Rates:
    return catalog.models[model].rates()


def usd_to_expected_nano(usd: Decimal) -> int:
    """The reference rounding: USD -> nano-USD, half up."""
    return int((usd * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price(**fields: Any) -> ModelPrice:
    base: dict[str, Any] = {
        "provider": "openai",
        "input": "1",
        "output": "2",
        "source": "https://example.test/pricing",
        "as_of": date(2026, 11, 1),
    }
    return ModelPrice.model_validate(base | fields)


# --- cost_nano: one test per usage shape ----------------------------------------------------------


def test_plain_usage(catalog: PriceCatalog) -> None:
    # mock-gpt: input 1.00, output 2.00 USD/1M
    usage = Usage(input_tokens=1234, output_tokens=567)
    usd = (1234 * Decimal("1.00") + 567 * Decimal("2.00")) / MILLION
    assert usd == Decimal("0.002368")
    assert cost_nano(usage, rates_of(catalog, "mock-gpt")) == usd_to_expected_nano(usd) == 2_368_000


def test_openai_cached_tokens_are_priced_once_at_the_cached_rate(catalog: PriceCatalog) -> None:
    # OpenAI's prompt_tokens already includes cached_tokens: 2000 uncached + 8000 cached.
    usage = from_openai(
        {"prompt_tokens": 10_000, "completion_tokens": 200, "prompt_tokens_details": {"cached_tokens": 8000}}
    )
    assert usage is not None
    usd = (2000 * Decimal("1.00") + 8000 * Decimal("0.50") + 200 * Decimal("2.00")) / MILLION
    assert usd == Decimal("0.0064")
    cost = cost_nano(usage, rates_of(catalog, "mock-gpt"))
    assert cost == usd_to_expected_nano(usd) == 6_400_000
    double_counted = (10_000 * Decimal("1.00") + 8000 * Decimal("0.50") + 200 * Decimal("2.00")) / MILLION
    assert cost != usd_to_expected_nano(double_counted)


def test_cache_write_tokens(catalog: PriceCatalog) -> None:
    # mock-claude: input 3.00, cache_write 3.75, output 15.00
    usage = Usage(input_tokens=5000, cache_creation_input_tokens=4000, output_tokens=100)
    usd = (1000 * Decimal("3.00") + 4000 * Decimal("3.75") + 100 * Decimal("15.00")) / MILLION
    assert usd == Decimal("0.0195")
    assert cost_nano(usage, rates_of(catalog, "mock-claude")) == usd_to_expected_nano(usd) == 19_500_000


def test_reasoning_tokens_at_their_own_rate() -> None:
    rates = price(input="1.10", output="4.40", reasoning="8.80").rates()
    usage = Usage(input_tokens=300, output_tokens=1000, reasoning_tokens=800)
    usd = (300 * Decimal("1.10") + 200 * Decimal("4.40") + 800 * Decimal("8.80")) / MILLION
    assert usd == Decimal("0.00825")
    assert cost_nano(usage, rates) == usd_to_expected_nano(usd) == 8_250_000


def test_reasoning_defaults_to_output_rate(catalog: PriceCatalog) -> None:
    # mock-reasoner: input 1.10, output 4.40, reasoning 4.40
    usage = Usage(input_tokens=321, output_tokens=1500, reasoning_tokens=1200)
    usd = (321 * Decimal("1.10") + 300 * Decimal("4.40") + 1200 * Decimal("4.40")) / MILLION
    assert usd == Decimal("0.0069531")
    assert cost_nano(usage, rates_of(catalog, "mock-reasoner")) == usd_to_expected_nano(usd) == 6_953_100


@pytest.mark.parametrize("model", ["mock-claude", "claude-sonnet-4-5"])
def test_anthropic_cache_read_and_creation_normalized(catalog: PriceCatalog, model: str) -> None:
    # Anthropic's input_tokens EXCLUDES both cache fields; from_anthropic adds them exactly once.
    usage = from_anthropic(
        {
            "input_tokens": 1000,
            "cache_read_input_tokens": 50_000,
            "cache_creation_input_tokens": 2000,
            "output_tokens": 500,
        }
    )
    assert usage is not None
    assert usage.input_tokens == 53_000 and usage.uncached_input_tokens == 1000
    usd = (
        1000 * Decimal("3.00") + 50_000 * Decimal("0.30") + 2000 * Decimal("3.75") + 500 * Decimal("15.00")
    ) / MILLION
    assert usd == Decimal("0.033")
    assert cost_nano(usage, rates_of(catalog, model)) == usd_to_expected_nano(usd) == 33_000_000


def test_embedding_has_input_only(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=8191)
    usd = 8191 * Decimal("0.02") / MILLION
    assert cost_nano(usage, rates_of(catalog, "mock-embed")) == usd_to_expected_nano(usd) == 163_820


@pytest.mark.parametrize(
    ("usd_per_mtok", "tokens", "expected_nano"),
    [
        ("0.0125", 1, 13),  # 12.5 nano: half rounds up
        ("0.0124", 1, 12),  # 12.4 nano
        ("0.01875", 1, 19),  # 18.75 nano
        ("0.000001", 499, 0),  # 0.499 nano
        ("0.000001", 500, 1),  # 0.5 nano
        ("0.075", 7, 525),  # exact
    ],
)
def test_rounds_half_up_once_per_request(usd_per_mtok: str, tokens: int, expected_nano: int) -> None:
    rates = price(input=usd_per_mtok, output="0").rates()
    assert usd_to_expected_nano(tokens * Decimal(usd_per_mtok) / MILLION) == expected_nano
    assert cost_nano(Usage(input_tokens=tokens), rates) == expected_nano


def test_inconsistent_counts_never_bill_a_token_twice(catalog: PriceCatalog) -> None:
    rates = rates_of(catalog, "mock-claude")
    # cache fields larger than the input total: every billed token is still one of the 100 reported.
    broken = Usage(input_tokens=100, cached_input_tokens=80, cache_creation_input_tokens=80, output_tokens=0)
    usd = (80 * Decimal("0.30") + 20 * Decimal("3.75")) / MILLION
    assert cost_nano(broken, rates) == usd_to_expected_nano(usd)
    # reasoning larger than output: output is the total, reasoning is clamped into it.
    reasoner = price(output="1", reasoning="3").rates()
    clamped = usd_to_expected_nano(10 * Decimal("3") / MILLION)
    assert cost_nano(Usage(output_tokens=10, reasoning_tokens=50), reasoner) == clamped == 30_000


# --- cost_upper_bound_nano ------------------------------------------------------------------------


def test_upper_bound_uses_the_dearest_rates_and_rounds_up() -> None:
    rates = Rates(input=3, cached_input=1, cache_write=4, output=7, reasoning=9, provider="x")
    assert cost_upper_bound_nano(100, 10, rates) == -(-(100 * 4 + 10 * 9) // 1000) == 1
    one_pico = Rates(input=1, cached_input=1, cache_write=1, output=0, reasoning=0, provider="x")
    assert cost_nano(Usage(input_tokens=1), one_pico) == 0
    assert cost_upper_bound_nano(1, 0, one_pico) == 1


RATE = st.integers(min_value=0, max_value=10**9)  # up to 1000 USD per 1M tokens


@st.composite
def rates_strategy(draw: st.DrawFn) -> Rates:
    return Rates(
        input=draw(RATE),
        cached_input=draw(RATE),
        cache_write=draw(RATE),
        output=draw(RATE),
        reasoning=draw(RATE),
        provider="test",
    )


@st.composite
def bounded_usage(draw: st.DrawFn) -> tuple[int, int, Usage]:
    """Token totals for a reservation, and any usage (even inconsistent) within them."""
    max_in = draw(st.integers(min_value=0, max_value=10**7))
    max_out = draw(st.integers(min_value=0, max_value=10**7))
    input_tokens = draw(st.integers(min_value=0, max_value=max_in))
    output_tokens = draw(st.integers(min_value=0, max_value=max_out))
    usage = Usage(
        input_tokens=input_tokens,
        cached_input_tokens=draw(st.integers(min_value=0, max_value=2 * input_tokens + 1)),
        cache_creation_input_tokens=draw(st.integers(min_value=0, max_value=2 * input_tokens + 1)),
        output_tokens=output_tokens,
        reasoning_tokens=draw(st.integers(min_value=0, max_value=2 * output_tokens + 1)),
    )
    return max_in, max_out, usage


@given(rates=rates_strategy(), case=bounded_usage())
def test_upper_bound_never_below_real_cost(rates: Rates, case: tuple[int, int, Usage]) -> None:
    max_in, max_out, usage = case
    assert cost_upper_bound_nano(max_in, max_out, rates) >= cost_nano(usage, rates)


@given(rates=rates_strategy(), data=st.data())
def test_cost_matches_decimal_reference(rates: Rates, data: st.DataObject) -> None:
    tokens = st.integers(min_value=0, max_value=10**6)
    cached, written, uncached = data.draw(tokens), data.draw(tokens), data.draw(tokens)
    reasoning, visible = data.draw(tokens), data.draw(tokens)
    usage = Usage(
        input_tokens=cached + written + uncached,
        cached_input_tokens=cached,
        cache_creation_input_tokens=written,
        output_tokens=reasoning + visible,
        reasoning_tokens=reasoning,
    )
    pico = Decimal(
        uncached * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + visible * rates.output
        + reasoning * rates.reasoning
    )
    assert cost_nano(usage, rates) == usd_to_expected_nano(pico / 10**12)


# --- rates(): defaults, discount, overrides ---------------------------------------------------------


def test_rates_are_exact_integer_pico_usd_per_token(catalog: PriceCatalog) -> None:
    rates = rates_of(catalog, "gpt-4o")
    assert rates == Rates(
        input=2_500_000,
        cached_input=1_250_000,
        cache_write=2_500_000,  # unset: follows input
        output=10_000_000,
        reasoning=10_000_000,  # unset: follows output
        provider="openai",
        context_window=128_000,
        max_output_tokens=16_384,
    )


def test_discount_applies_to_every_rate(catalog: PriceCatalog) -> None:
    rates = catalog.models["gpt-4o"].rates(discount=Decimal("0.2"))
    assert (rates.input, rates.cached_input, rates.cache_write) == (2_000_000, 1_000_000, 2_000_000)
    assert (rates.output, rates.reasoning) == (8_000_000, 8_000_000)


def test_discount_rounds_half_up_to_whole_pico() -> None:
    rates = price(input="0.000001", output="0.000003").rates(discount=Decimal("0.5"))
    assert (rates.input, rates.output) == (1, 2)  # 0.5 -> 1, 1.5 -> 2
    assert price(input="0.075").rates(discount=Decimal("0.333333")).input == 50_000  # 50000.025


def test_full_discount_is_free() -> None:
    rates = price(input="3", output="15").rates(discount=Decimal(1))
    assert cost_nano(Usage(input_tokens=10**6, output_tokens=10**6), rates) == 0


def test_overrides_are_used_as_is_and_defaults_follow_them(catalog: PriceCatalog) -> None:
    model = catalog.models["gpt-4o"]
    rates = model.rates(overrides={"input": "2.00"})
    assert rates.input == 2_000_000
    assert rates.cached_input == 1_250_000  # listed in the catalog: unchanged
    assert rates.cache_write == 2_000_000  # unset in the catalog: follows the negotiated input
    combined = model.rates(discount=Decimal("0.1"), overrides={"output": Decimal("9.5")})
    assert combined.output == 9_500_000  # the negotiated figure, not discounted again
    assert combined.reasoning == 9_500_000
    assert combined.input == 2_250_000


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"discount": Decimal("1.5")}, ValueError),
        ({"discount": Decimal("-0.1")}, ValueError),
        ({"discount": 0.2}, TypeError),
        ({"overrides": {"inptu": "1"}}, ValueError),
        ({"overrides": {"input": "0.0000001"}}, ValueError),
        ({"overrides": {"input": "-1"}}, ValueError),
        ({"overrides": {"input": 1.5}}, TypeError),
    ],
)
def test_bad_negotiated_terms_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        price().rates(**kwargs)


# --- ModelPrice / PriceCatalog validation ---------------------------------------------------------


def test_yaml_floats_become_exact_decimals() -> None:
    model = price(input=0.075, output=0.3, cached_input=0.01875)
    assert model.input == Decimal("0.075")
    assert model.cached_input == Decimal("0.01875")
    assert model.rates().input == 75_000


@pytest.mark.parametrize(
    "fields",
    [
        {"input": "-0.01"},
        {"output": "0.0000001"},  # 7 decimals: not an integer pico-USD per token
        {"input": 0.1 + 0.2},  # float noise is refused, not silently kept
        {"input": True},
        {"input": "NaN"},
        {"input": "cheap"},
        {"source": "   "},
        {"as_of": "last week"},
        {"context_window": 0},
        {"surprise": 1},
    ],
)
def test_invalid_model_prices_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        price(**fields)


@pytest.mark.parametrize("missing", ["provider", "input", "output", "source", "as_of"])
def test_required_fields(missing: str) -> None:
    fields = price().model_dump()
    del fields[missing]
    with pytest.raises(ValidationError):
        ModelPrice.model_validate(fields)


@pytest.mark.parametrize(
    "document",
    [
        {"version": 1, "currency": "EUR", "models": {}},
        {"version": 2, "currency": "USD", "models": {}},
        {"version": 1, "currency": "USD", "models": {}, "extra": True},
        {"version": 1, "currency": "USD", "models": {" gpt-4o": price().model_dump()}},
    ],
)
def test_invalid_catalogs_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PriceCatalog.model_validate(document)


# --- the shipped catalog ----------------------------------------------------------------------------


def test_shipped_catalog_is_large_and_complete(catalog: PriceCatalog) -> None:
    assert len(catalog.models) >= 45
    for name, model in catalog.models.items():
        assert model.source.strip(), name
        assert isinstance(model.as_of, date), name
        assert model.as_of <= date.today(), name
        assert model.input is not None and model.output is not None, name
        model.rates()  # every entry converts to exact integer rates


def test_shipped_catalog_covers_the_brief(catalog: PriceCatalog) -> None:
    required = {
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o",
        "gpt-4o-mini", "o1", "o3", "o3-mini", "o4-mini", "gpt-3.5-turbo", "gpt-4-turbo",
        "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
        "gpt-3.5-turbo-instruct",
        "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5", "claude-sonnet-4", "claude-3-7-sonnet",
        "claude-3-5-haiku", "claude-haiku-4-5", "claude-3-haiku",
        "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash", "gemini-1.5-pro",
        "gemini-1.5-flash",
        "mistral-large", "mistral-medium", "mistral-small", "codestral", "ministral-8b", "open-mistral-nemo",
        "deepseek-chat", "deepseek-reasoner", "llama-3.3-70b-versatile", "llama-3.1-8b-instant",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo", "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo",
        "mock-gpt", "mock-gpt-mini", "mock-claude", "mock-reasoner", "mock-embed",
    }  # fmt: skip
    assert required <= catalog.models.keys(), sorted(required - catalog.models.keys())


def test_shipped_providers_use_the_otel_vocabulary(catalog: PriceCatalog) -> None:
    otel = {"openai", "anthropic", "gcp.gemini", "mistral_ai", "deepseek", "groq", "x_ai"}
    custom = {"together", "mock"}
    assert {model.provider for model in catalog.models.values()} <= otel | custom


def test_anthropic_cache_tiers_follow_the_published_multipliers(catalog: PriceCatalog) -> None:
    # Cache writes (5m) are 1.25x input and cache reads 0.1x input; a 10x slip here is a known catalog bug.
    for name, model in catalog.models.items():
        if model.provider == "anthropic":
            assert model.cache_write == model.input * Decimal("1.25"), name
            assert model.cached_input == model.input * Decimal("0.1"), name


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("mock-gpt", {"input": "1.00", "cached_input": "0.50", "output": "2.00"}),
        ("mock-gpt-mini", {"input": "0.10", "cached_input": "0.05", "output": "0.40"}),
        ("mock-claude", {"input": "3.00", "cached_input": "0.30", "cache_write": "3.75", "output": "15.00"}),
        ("mock-reasoner", {"input": "1.10", "output": "4.40", "reasoning": "4.40"}),
        ("mock-embed", {"input": "0.02"}),
    ],
)
def test_mock_model_prices_are_pinned(catalog: PriceCatalog, model: str, expected: dict[str, str]) -> None:
    entry = catalog.models[model]
    for field, value in expected.items():
        assert getattr(entry, field) == Decimal(value), (model, field)


# --- money formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (12_345, "0.000012345"),
        (0, "0.000000000"),
        (1, "0.000000001"),
        (1_500_000_000, "1.500000000"),
        (123_456_789_012, "123.456789012"),
        (-1, "-0.000000001"),
    ],
)
def test_nano_to_usd_str(nano: int, text: str) -> None:
    assert nano_to_usd_str(nano) == text
    assert usd_to_nano(text) == nano


@pytest.mark.parametrize(
    ("value", "nano"),
    [
        (Decimal("1.5"), 1_500_000_000),
        (2, 2_000_000_000),
        ("0.0000000005", 1),  # half rounds up
        ("0.0000000004999", 0),
        ("-0.0000000005", -1),  # half away from zero
        (" 0.25 ", 250_000_000),
    ],
)
def test_usd_to_nano(value: Decimal | str | int, nano: int) -> None:
    assert usd_to_nano(value) == nano


@pytest.mark.parametrize("value", [0.1, "abc", "Infinity", True])
def test_usd_to_nano_refuses_non_money(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        usd_to_nano(value)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_usd_string_round_trip(nano: int) -> None:
    assert usd_to_nano(nano_to_usd_str(nano)) == nano
