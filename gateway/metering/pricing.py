"""The price catalog schema and the exact cost arithmetic.

Units, chosen so that no float ever touches money:

* the catalog (``policies/prices.yaml``) states list prices in **USD per 1M tokens**, at most 6 decimals;
* :class:`Rates` holds them as integers in **pico-USD per token** (== micro-USD per 1M tokens), so the
  conversion from the catalog is an exact shift by 10**6;
* costs are integers in **nano-USD** (1e-9 USD). A request's cost is summed in pico-USD and rounded
  once, half up, to nano-USD.

Cached tokens are the classic mispricing (cache reads billed at the full rate, or billed twice), so
:func:`cost_nano` prices every input token exactly once, in exactly one of three buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.metering.usage import Usage

PICO_PER_NANO = 1_000
NANO_PER_USD = 1_000_000_000
# USD per 1M tokens -> pico-USD per token: multiply by 1e12 / 1e6.
PICO_PER_USD_PER_MTOK = 1_000_000
MAX_PRICE_DECIMALS = 6

RATE_FIELDS: tuple[str, ...] = ("input", "cached_input", "cache_write", "output", "reasoning")
_ONE = Decimal(1)


def to_decimal(value: Any) -> Decimal:
    """Coerce a catalog number to ``Decimal`` without float arithmetic.

    Floats (YAML ``0.075``) go through ``str`` so 0.075 stays 0.075 rather than its binary neighbour.
    """
    if isinstance(value, bool):
        raise ValueError("a price must be a number, not a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, float | int | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal number: {value!r}") from exc
    else:
        raise ValueError(f"a price must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"a price must be finite, got {value!r}")
    return result


def per_million_to_pico(usd_per_mtok: Decimal) -> int:
    """USD per 1M tokens -> integer pico-USD per token; refuses anything that is not exact."""
    scaled = usd_per_mtok * PICO_PER_USD_PER_MTOK
    integral = scaled.to_integral_value()
    if scaled != integral:
        raise ValueError(f"{usd_per_mtok} USD/1M has more than {MAX_PRICE_DECIMALS} decimals")
    return int(integral)


def _check_price(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError(f"a price must be non-negative, got {value}")
    per_million_to_pico(value)  # raises on sub-micro precision
    return value


def _round_half_up(value: Decimal) -> int:
    return int(value.quantize(_ONE, rounding=ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class Rates:
    """Effective per-token rates for one deployment, in integer pico-USD per token (hot path)."""

    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int
    provider: str
    context_window: int | None = None
    max_output_tokens: int | None = None


class ModelPrice(BaseModel):
    """One catalog entry: list prices in USD per 1M tokens, and where and when they were read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(min_length=1)
    input: Decimal
    cached_input: Decimal | None = None  # cache-read tokens; defaults to input
    cache_write: Decimal | None = None  # cache-creation tokens; defaults to input
    output: Decimal
    reasoning: Decimal | None = None  # reasoning tokens; defaults to output
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    source: str = Field(min_length=1)
    as_of: date

    @field_validator(*RATE_FIELDS, mode="before")
    @classmethod
    def _coerce_price(cls, value: Any) -> Any:
        return None if value is None else to_decimal(value)

    @field_validator(*RATE_FIELDS)
    @classmethod
    def _validate_price(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _check_price(value)

    @field_validator("source")
    @classmethod
    def _validate_source(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source must name where the figures come from")
        return value.strip()

    def rates(self, discount: Decimal = Decimal(0), overrides: dict[str, Any] | None = None) -> Rates:
        """Effective rates after a deployment's negotiated terms.

        ``discount`` (a fraction 0..1) scales every catalog rate, rounded half up to whole pico-USD.
        ``overrides`` are explicit rates in USD per 1M tokens, used as-is (no discount on top): they are
        the negotiated figure itself. A field left unset in the catalog follows its base field
        (cached_input and cache_write follow input, reasoning follows output) after both adjustments.
        """
        keep = _keep_fraction(discount)
        fixed = _parse_overrides(overrides)

        def rate(field: str, fallback: int | None) -> int:
            if field in fixed:
                return fixed[field]
            listed: Decimal | None = getattr(self, field)
            if listed is None:
                assert fallback is not None  # only optional fields have a fallback
                return fallback
            return _round_half_up(per_million_to_pico(listed) * keep)

        input_rate = rate("input", None)
        output_rate = rate("output", None)
        return Rates(
            input=input_rate,
            cached_input=rate("cached_input", input_rate),
            cache_write=rate("cache_write", input_rate),
            output=output_rate,
            reasoning=rate("reasoning", output_rate),
            provider=self.provider,
            context_window=self.context_window,
            max_output_tokens=self.max_output_tokens,
        )


def _keep_fraction(discount: Decimal | int | str) -> Decimal:
    if isinstance(discount, float):
        raise TypeError("discount must be a Decimal (or str/int), never a float")
    fraction = to_decimal(discount)
    if not 0 <= fraction <= 1:
        raise ValueError(f"discount must be within 0..1, got {fraction}")
    return _ONE - fraction


def _parse_overrides(overrides: dict[str, Any] | None) -> dict[str, int]:
    if not overrides:
        return {}
    unknown = sorted(set(overrides) - set(RATE_FIELDS))
    if unknown:
        raise ValueError(f"unknown rate override(s) {unknown}; allowed: {list(RATE_FIELDS)}")
    parsed: dict[str, int] = {}
    for field, value in overrides.items():
        if isinstance(value, float):
            raise TypeError(f"override {field!r} must be a Decimal/str/int, never a float")
        parsed[field] = per_million_to_pico(_check_price(to_decimal(value)))
    return parsed


class PriceCatalog(BaseModel):
    """The whole ``prices.yaml`` document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    currency: Literal["USD"]
    models: dict[str, ModelPrice]

    @field_validator("models")
    @classmethod
    def _validate_names(cls, models: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        for name in models:
            if not name or name != name.strip():
                raise ValueError(f"model name {name!r} is empty or has surrounding whitespace")
        return models


def cost_nano(usage: Usage, rates: Rates) -> int:
    """Exact cost of one request in nano-USD, rounded half up once at the end.

    Every input token lands in exactly one bucket: cache read, cache write, or uncached. Inconsistent
    counts (cache fields larger than the input total, reasoning larger than output) are clamped so a
    token is never billed twice and never more tokens are billed than were reported.
    """
    input_tokens = max(0, usage.input_tokens)
    cached = min(max(0, usage.cached_input_tokens), input_tokens)
    written = min(max(0, usage.cache_creation_input_tokens), input_tokens - cached)
    uncached = input_tokens - cached - written
    output_tokens = max(0, usage.output_tokens)
    reasoning = min(max(0, usage.reasoning_tokens), output_tokens)
    pico = (
        uncached * rates.input
        + cached * rates.cached_input
        + written * rates.cache_write
        + (output_tokens - reasoning) * rates.output
        + reasoning * rates.reasoning
    )
    return (pico + PICO_PER_NANO // 2) // PICO_PER_NANO


def cost_upper_bound_nano(input_tokens: int, output_tokens: int, rates: Rates) -> int:
    """Worst-case cost for a budget reservation: never below :func:`cost_nano` of any usage within
    these totals, whatever the cache/reasoning split turns out to be. Rounded up."""
    input_rate = max(rates.input, rates.cached_input, rates.cache_write)
    output_rate = max(rates.output, rates.reasoning)
    pico = max(0, input_tokens) * input_rate + max(0, output_tokens) * output_rate
    return -(-pico // PICO_PER_NANO)


def nano_to_usd_str(nano: int) -> str:
    """``12345`` -> ``"0.000012345"``: exact, always 9 decimals, for logs, headers and reports."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def usd_to_nano(value: Decimal | str | int) -> int:
    """USD amount -> integer nano-USD, rounding sub-nano precision half up (away from zero)."""
    if isinstance(value, float):
        raise TypeError("money must not be a float: pass a Decimal, str or int")
    return _round_half_up(to_decimal(value) * NANO_PER_USD)
