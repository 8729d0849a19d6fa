"""Attribution tags: sources, precedence and bounds (gateway/tagging.py).

Tags are never a reason to fail a request: anything out of bounds is dropped, and what remains is
bounded in count and size whatever the client sends.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.model import TagLimits
from gateway.tagging import extract, parse_header

DEFAULT = TagLimits()


def header(raw: str, limits: TagLimits = DEFAULT) -> dict[str, str]:
    into: dict[str, str] = {}
    parse_header(raw, limits, into)
    return into


# ---------------------------------------------------------------- header parsing


def test_header_pairs() -> None:
    assert header("feature=search,env=prod") == {"feature": "search", "env": "prod"}


def test_header_whitespace_is_trimmed() -> None:
    assert header("  feature = search ,\tenv=prod  ") == {"feature": "search", "env": "prod"}


def test_header_items_without_equals_are_skipped() -> None:
    assert header("feature,env=prod,,=,justtext") == {"env": "prod"}


def test_header_value_keeps_later_equals_signs() -> None:
    assert header("q=a=b") == {"q": "a=b"}


def test_header_empty_value_is_kept_as_empty() -> None:
    assert header("env=") == {"env": ""}


def test_header_empty_key_is_dropped() -> None:
    assert header("=prod, =x") == {}


def test_header_last_duplicate_wins() -> None:
    assert header("env=dev,env=prod") == {"env": "prod"}


def test_header_empty_string() -> None:
    assert header("") == {}


@pytest.mark.parametrize(
    "key",
    [
        "bad key",
        "semi;colon",
        "slash/x",
        "quote'",
        "dollar$",
        "brace{",
        "ünïcode",
        "tab\tkey",
        "new\nline",
        "a,b",
    ],
)
def test_bad_key_characters_are_dropped(key: str) -> None:
    assert extract({}, {"metadata": {key: "v", "ok": "1"}}, None, DEFAULT) == {"ok": "1"}
    if "," not in key:  # a comma splits the header item instead
        assert header(f"{key}=v,ok=1") == {"ok": "1"}


@pytest.mark.parametrize("key", ["a", "A-Z_0.9:x", "team.sub-area:1", "_", "-", "x" * 64])
def test_allowed_key_characters(key: str) -> None:
    assert header(f"{key}=v") == {key: "v"}


# ---------------------------------------------------------------- bounds


def test_key_length_limit_is_inclusive() -> None:
    limits = TagLimits(max_key_len=8)
    assert header("k2345678=ok,k23456789=dropped", limits) == {"k2345678": "ok"}


def test_value_is_truncated_not_dropped() -> None:
    limits = TagLimits(max_value_len=5)
    assert header("a=12345,b=123456789", limits) == {"a": "12345", "b": "12345"}


def test_value_is_trimmed_before_truncation() -> None:
    assert header("a=   xyz   ", TagLimits(max_value_len=3)) == {"a": "xyz"}


def test_max_tags_keeps_the_first_ones() -> None:
    limits = TagLimits(max_tags=3)
    assert header("a=1,b=2,c=3,d=4,e=5", limits) == {"a": "1", "b": "2", "c": "3"}


def test_max_tags_still_lets_a_known_key_be_overridden() -> None:
    limits = TagLimits(max_tags=2)
    assert header("a=1,b=2,c=3,a=9", limits) == {"a": "9", "b": "2"}


def test_max_tags_zero_means_no_tags() -> None:
    limits = TagLimits(max_tags=0)
    body = {"metadata": {"a": "1"}, "user": "u"}
    assert extract({"team": "x"}, body, "b=2", limits) == {}


def test_header_with_many_items_is_bounded() -> None:
    raw = ",".join(f"k{i}=v{i}" for i in range(10_000))
    tags = header(raw, TagLimits(max_tags=5))
    assert tags == {f"k{i}": f"v{i}" for i in range(5)}


def test_bad_items_do_not_use_up_the_tag_count_but_parsing_is_bounded() -> None:
    # Only the first max_tags * 2 items are looked at, so a hostile header costs O(max_tags).
    limits = TagLimits(max_tags=2)
    assert header("bad key=1,also bad=2,ok=3,fine=4", limits) == {"ok": "3", "fine": "4"}
    assert header("bad key=1,also bad=2,x y=3,p q=4,ok=5", limits) == {}


# ---------------------------------------------------------------- sources and precedence


def test_all_sources() -> None:
    tags = extract(
        {"cost_center": "cc-1"},
        {"metadata": {"feature": "chat"}, "user": "alice"},
        "env=prod",
        DEFAULT,
    )
    assert tags == {"cost_center": "cc-1", "feature": "chat", "user": "alice", "env": "prod"}


def test_precedence_team_then_metadata_then_user_then_header() -> None:
    team = {"env": "team", "feature": "team", "user": "team", "owner": "team"}
    body = {"metadata": {"env": "meta", "feature": "meta", "user": "meta"}, "user": "field"}
    tags = extract(team, body, "env=header", DEFAULT)
    assert tags == {"env": "header", "feature": "meta", "user": "field", "owner": "team"}


def test_team_tags_count_against_the_limit() -> None:
    limits = TagLimits(max_tags=2)
    tags = extract({"a": "1", "b": "2"}, {"metadata": {"c": "3"}, "user": "u"}, "d=4,a=header", limits)
    assert tags == {"a": "header", "b": "2"}


def test_team_tags_are_bounded_too() -> None:
    limits = TagLimits(max_key_len=4, max_value_len=2)
    assert extract({"long_key": "v", "k": "value"}, {}, None, limits) == {"k": "va"}


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["x"], {"y": "z"}])
def test_metadata_keeps_string_values_only(value: Any) -> None:
    assert extract({}, {"metadata": {"n": value, "s": "ok"}}, None, DEFAULT) == {"s": "ok"}


@pytest.mark.parametrize("metadata", [None, "x", ["a=b"], 3])
def test_metadata_that_is_not_an_object_is_ignored(metadata: Any) -> None:
    assert extract({}, {"metadata": metadata}, None, DEFAULT) == {}


@pytest.mark.parametrize("user", [None, "", 5, ["alice"], {"id": "alice"}])
def test_user_must_be_a_non_empty_string(user: Any) -> None:
    assert extract({}, {"user": user}, None, DEFAULT) == {}


def test_user_is_truncated() -> None:
    assert extract({}, {"user": "x" * 500}, None, TagLimits(max_value_len=10)) == {"user": "x" * 10}


def test_anthropic_metadata_user_id() -> None:
    assert extract({}, {"metadata": {"user_id": "u-42"}}, None, DEFAULT) == {"user_id": "u-42"}


def test_no_header_no_body_tags() -> None:
    assert extract({}, {}, None, DEFAULT) == {}
    assert extract({}, {}, "", DEFAULT) == {}


def test_extract_returns_a_fresh_dict() -> None:
    team = {"a": "1"}
    tags = extract(team, {}, None, DEFAULT)
    tags["b"] = "2"
    assert team == {"a": "1"}


# ---------------------------------------------------------------- properties

_anything = st.text(max_size=40)


@given(
    limits=st.builds(
        TagLimits,
        max_tags=st.integers(0, 8),
        max_key_len=st.integers(1, 20),
        max_value_len=st.integers(1, 20),
    ),
    team=st.dictionaries(_anything, _anything, max_size=6),
    metadata=st.dictionaries(_anything, st.one_of(_anything, st.integers()), max_size=12),
    user=st.one_of(st.none(), _anything),
    raw=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_input_stays_within_bounds(
    limits: TagLimits, team: dict[str, str], metadata: dict[str, Any], user: str | None, raw: str | None
) -> None:
    tags = extract(team, {"metadata": metadata, "user": user}, raw, limits)
    assert len(tags) <= limits.max_tags
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")
    for key, value in tags.items():
        assert 1 <= len(key) <= limits.max_key_len
        assert set(key) <= allowed
        assert isinstance(value, str) and len(value) <= limits.max_value_len
        assert value == value.strip() or len(value) == limits.max_value_len
