"""Usage normalization: each wire format's usage object -> one ``Usage``, and back.

The invariant that billing rests on: ``input_tokens`` counts every prompt token exactly once (cache
reads and writes included), ``output_tokens`` counts every generated token once (reasoning included),
whatever shape, gaps or garbage the provider's object has.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.metering.pricing import Rates, cost_nano
from gateway.metering.usage import Usage, from_anthropic, from_openai, to_anthropic, to_openai

BAD_COUNTS: list[Any] = [None, -1, -100, True, False, "12", 1.5, float("nan"), float("inf"), [], {}]


def test_openai_full_object() -> None:
    usage = from_openai(
        {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 0},
        }
    )
    assert usage == Usage(
        input_tokens=1200, cached_input_tokens=1024, output_tokens=300, reasoning_tokens=200
    )
    assert usage.total_tokens == 1500
    assert usage.uncached_input_tokens == 176
    assert usage.estimated is False


def test_openai_cached_is_inside_prompt_tokens_not_added() -> None:
    usage = from_openai({"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 60}})
    assert usage is not None
    assert usage.input_tokens == 100  # never 160
    assert usage.uncached_input_tokens == 40


def test_openai_cache_write_tokens() -> None:
    usage = from_openai(
        {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 50}}
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_creation_input_tokens) == (100, 30, 50)
    assert usage.uncached_input_tokens == 20


@pytest.mark.parametrize("value", [None, "usage", 3, [], ["prompt_tokens"], True])
def test_not_an_object_is_no_usage(value: Any) -> None:
    assert from_openai(value) is None
    assert from_anthropic(value) is None


def test_empty_object_is_zero_usage() -> None:
    assert from_openai({}) == Usage()
    assert from_anthropic({}) == Usage()


def test_embeddings_usage_has_no_completion() -> None:
    assert from_openai({"prompt_tokens": 8, "total_tokens": 8}) == Usage(input_tokens=8)


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_openai_bad_counts_read_as_zero(bad: Any) -> None:
    usage = from_openai(
        {
            "prompt_tokens": bad,
            "completion_tokens": bad,
            "prompt_tokens_details": {"cached_tokens": bad, "cache_write_tokens": bad},
            "completion_tokens_details": {"reasoning_tokens": bad},
        }
    )
    assert usage == Usage()


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_anthropic_bad_counts_read_as_zero(bad: Any) -> None:
    usage = from_anthropic(
        {
            "input_tokens": bad,
            "output_tokens": bad,
            "cache_read_input_tokens": bad,
            "cache_creation_input_tokens": bad,
            "output_tokens_details": {"reasoning_tokens": bad},
        }
    )
    assert usage == Usage()


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_one_bad_field_does_not_spoil_the_others(bad: Any) -> None:
    usage = from_openai(
        {"prompt_tokens": 50, "completion_tokens": bad, "prompt_tokens_details": {"cached_tokens": 10}}
    )
    assert usage == Usage(input_tokens=50, cached_input_tokens=10)
    usage = from_anthropic({"input_tokens": bad, "output_tokens": 7, "cache_read_input_tokens": 20})
    assert usage == Usage(input_tokens=20, cached_input_tokens=20, output_tokens=7)


def test_whole_floats_are_counts() -> None:
    """Some OpenAI-compatible servers send ``12.0``: reading it as 0 would bill the request as free."""
    usage = from_openai({"prompt_tokens": 12.0, "completion_tokens": 3.0})
    assert usage == Usage(input_tokens=12, output_tokens=3)
    assert isinstance(usage.input_tokens, int)
    assert from_anthropic({"input_tokens": 5.0, "cache_read_input_tokens": 2.0}) == Usage(
        input_tokens=7, cached_input_tokens=2
    )


@pytest.mark.parametrize("details", [None, [], "x", 5, True])
def test_openai_details_that_are_not_objects_are_ignored(details: Any) -> None:
    usage = from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "prompt_tokens_details": details,
            "completion_tokens_details": details,
        }
    )
    assert usage == Usage(input_tokens=10, output_tokens=4)


@pytest.mark.parametrize("details", [None, [], "x", 5])
def test_anthropic_details_that_are_not_objects_are_ignored(details: Any) -> None:
    usage = from_anthropic({"input_tokens": 10, "output_tokens": 4, "output_tokens_details": details})
    assert usage == Usage(input_tokens=10, output_tokens=4)


def test_anthropic_adds_cache_fields_to_input_once() -> None:
    usage = from_anthropic(
        {
            "input_tokens": 500,  # excludes both cache fields on Anthropic's wire
            "output_tokens": 200,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 500,
        }
    )
    assert usage == Usage(
        input_tokens=3000, cached_input_tokens=2000, cache_creation_input_tokens=500, output_tokens=200
    )
    assert usage.uncached_input_tokens == 500


def test_anthropic_missing_and_null_cache_fields() -> None:
    assert from_anthropic({"input_tokens": 9, "output_tokens": 2}) == Usage(input_tokens=9, output_tokens=2)
    usage = from_anthropic(
        {
            "input_tokens": 9,
            "output_tokens": 2,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
        }
    )
    assert usage == Usage(input_tokens=9, output_tokens=2)


def test_anthropic_streaming_message_start_shape() -> None:
    # message_start carries the input side and a placeholder output of 1; message_delta the final output.
    start = from_anthropic(
        {
            "input_tokens": 4,
            "output_tokens": 1,
            "cache_creation_input_tokens": 2,
            "cache_read_input_tokens": 3,
        }
    )
    assert start == Usage(
        input_tokens=9, cached_input_tokens=3, cache_creation_input_tokens=2, output_tokens=1
    )


def test_anthropic_reasoning_details() -> None:
    usage = from_anthropic(
        {"input_tokens": 1, "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 30}}
    )
    assert usage == Usage(input_tokens=1, output_tokens=50, reasoning_tokens=30)


def test_uncached_never_negative() -> None:
    assert (
        Usage(input_tokens=10, cached_input_tokens=8, cache_creation_input_tokens=8).uncached_input_tokens
        == 0
    )


def test_as_dict_round_trip() -> None:
    usage = Usage(1, 2, 3, 4, 5, estimated=True)
    assert Usage(**usage.as_dict()) == usage
    assert list(usage.as_dict()) == [
        "input_tokens",
        "cached_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "estimated",
    ]


def test_to_openai_shape() -> None:
    usage = Usage(
        input_tokens=3000, cached_input_tokens=2000, cache_creation_input_tokens=500, output_tokens=200
    )
    assert to_openai(usage) == {
        "prompt_tokens": 3000,
        "completion_tokens": 200,
        "total_tokens": 3200,
        "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 500},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert "cache_write_tokens" not in to_openai(Usage(input_tokens=1))["prompt_tokens_details"]


def test_to_anthropic_shape() -> None:
    usage = Usage(
        input_tokens=3000, cached_input_tokens=2000, cache_creation_input_tokens=500, output_tokens=200
    )
    assert to_anthropic(usage) == {
        "input_tokens": 500,
        "output_tokens": 200,
        "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 2000,
    }


# ---------------------------------------------------------------- properties

counts = st.integers(min_value=0, max_value=10**9)


@st.composite
def consistent_usage(draw: st.DrawFn) -> Usage:
    cached = draw(counts)
    written = draw(counts)
    uncached = draw(counts)
    reasoning = draw(counts)
    visible = draw(counts)
    return Usage(
        input_tokens=uncached + cached + written,
        cached_input_tokens=cached,
        cache_creation_input_tokens=written,
        output_tokens=visible + reasoning,
        reasoning_tokens=reasoning,
    )


@given(consistent_usage())
def test_openai_round_trip(usage: Usage) -> None:
    assert from_openai(to_openai(usage)) == usage


@given(consistent_usage())
def test_anthropic_round_trip_keeps_input_side(usage: Usage) -> None:
    back = from_anthropic(to_anthropic(usage))
    assert back is not None
    assert (back.input_tokens, back.cached_input_tokens, back.cache_creation_input_tokens) == (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_creation_input_tokens,
    )
    assert back.output_tokens == usage.output_tokens  # Anthropic has no reasoning field on the wire


@given(consistent_usage())
def test_translation_never_changes_the_price(usage: Usage) -> None:
    """A request costs the same whichever wire format its usage travelled in."""
    rates = Rates(
        input=3_000_000,
        cached_input=300_000,
        cache_write=3_750_000,
        output=15_000_000,
        reasoning=15_000_000,
        provider="test",
    )
    expected = cost_nano(usage, rates)
    assert cost_nano(from_openai(to_openai(usage)) or Usage(), rates) == expected
    assert cost_nano(from_anthropic(to_anthropic(usage)) or Usage(), rates) == expected


_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_fields = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "output_tokens_details",
]


@given(st.dictionaries(st.sampled_from(_fields), _junk))
def test_any_object_normalizes_to_non_negative_ints(raw: dict[str, Any]) -> None:
    for parse in (from_openai, from_anthropic):
        usage = parse(raw)
        assert usage is not None
        for name, value in usage.as_dict().items():
            if name != "estimated":
                assert type(value) is int and value >= 0, (name, value)
