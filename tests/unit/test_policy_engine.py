"""Routing rules: every ``when`` condition, every action, and the first-match-wins contract.

The table tests pin each predicate's meaning one case per row; the hypothesis properties compare
the compiled engine with an independent, deliberately naive evaluator written here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import RoutingConfig
from gateway.policy.complexity import complexity_score
from gateway.policy.engine import Decision, Facts, RuleSet

# 2026-03-02 is a Monday.
MONDAY = datetime(2026, 3, 2, tzinfo=UTC)


def at(day_offset: int, hh: int, mm: int = 0) -> datetime:
    return MONDAY + timedelta(days=day_offset, hours=hh, minutes=mm)


def ruleset(*rules: dict[str, Any], fallbacks: dict[str, list[str]] | None = None) -> RuleSet:
    return RuleSet(RoutingConfig.model_validate({"rules": list(rules), "fallbacks": fallbacks or {}}))


def facts(**kw: Any) -> Facts:
    kw.setdefault("team", "demo")
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("now", at(0, 12))
    return Facts(**kw)


def matches(when: dict[str, Any], f: Facts) -> bool:
    return ruleset({"name": "r", "when": when, "route_to": "target"}).decide(f).rule == "r"


# ---------------------------------------------------------------------- when: one row per case

WHEN_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # teams
    ("teams hit", {"teams": ["demo", "ml"]}, {"team": "ml"}, True),
    ("teams miss", {"teams": ["demo"]}, {"team": "other"}, False),
    ("teams empty list", {"teams": []}, {}, False),
    # models: globs over the requested model
    ("models exact", {"models": ["gpt-4o"]}, {"model": "gpt-4o"}, True),
    ("models exact is not a prefix", {"models": ["gpt-4o"]}, {"model": "gpt-4o-mini"}, False),
    ("models glob", {"models": ["gpt-*"]}, {"model": "gpt-4o-mini"}, True),
    ("models glob miss", {"models": ["claude-*"]}, {"model": "gpt-4o"}, False),
    ("models ?", {"models": ["o?"]}, {"model": "o3"}, True),
    ("models [set]", {"models": ["o[13]"]}, {"model": "o3"}, True),
    ("models any of", {"models": ["claude-*", "auto"]}, {"model": "auto"}, True),
    ("models star", {"models": ["*"]}, {"model": "anything/at:all"}, True),
    ("models case-sensitive", {"models": ["GPT-*"]}, {"model": "gpt-4o"}, False),
    ("models empty list", {"models": []}, {"model": "gpt-4o"}, False),
    # tags: every listed tag must match; "*" = present with any value
    ("tags equal", {"tags": {"env": "prod"}}, {"tags": {"env": "prod", "x": "y"}}, True),
    ("tags differ", {"tags": {"env": "prod"}}, {"tags": {"env": "dev"}}, False),
    ("tags absent", {"tags": {"env": "prod"}}, {"tags": {}}, False),
    ("tags all of", {"tags": {"env": "prod", "app": "bot"}}, {"tags": {"env": "prod"}}, False),
    ("tags star present", {"tags": {"feature": "*"}}, {"tags": {"feature": "search"}}, True),
    ("tags star empty value", {"tags": {"feature": "*"}}, {"tags": {"feature": ""}}, True),
    ("tags star absent", {"tags": {"feature": "*"}}, {"tags": {"other": "x"}}, False),
    ("tags empty mapping", {"tags": {}}, {"tags": {}}, True),
    # prompt_tokens ranges (bounds inclusive or exclusive as written)
    ("prompt gte at bound", {"prompt_tokens": {"gte": 100}}, {"prompt_tokens_fn": lambda: 100}, True),
    ("prompt gt at bound", {"prompt_tokens": {"gt": 100}}, {"prompt_tokens_fn": lambda: 100}, False),
    ("prompt lt at bound", {"prompt_tokens": {"lt": 100}}, {"prompt_tokens_fn": lambda: 100}, False),
    ("prompt lte at bound", {"prompt_tokens": {"lte": 100}}, {"prompt_tokens_fn": lambda: 100}, True),
    ("prompt in band", {"prompt_tokens": {"gte": 10, "lt": 20}}, {"prompt_tokens_fn": lambda: 19}, True),
    ("prompt above band", {"prompt_tokens": {"gte": 10, "lt": 20}}, {"prompt_tokens_fn": lambda: 20}, False),
    ("prompt below band", {"prompt_tokens": {"gte": 10, "lt": 20}}, {"prompt_tokens_fn": lambda: 9}, False),
    ("prompt no counter = 0", {"prompt_tokens": {"lt": 1}}, {}, True),
    # max_tokens: the client's cap; an unset cap never matches a range
    ("max_tokens in range", {"max_tokens": {"gt": 1000}}, {"max_tokens": 4096}, True),
    ("max_tokens out of range", {"max_tokens": {"gt": 1000}}, {"max_tokens": 1000}, False),
    ("max_tokens unset", {"max_tokens": {"gte": 0}}, {"max_tokens": None}, False),
    # request shape flags: true and false both mean something
    ("has_tools true", {"has_tools": True}, {"has_tools": True}, True),
    ("has_tools true miss", {"has_tools": True}, {"has_tools": False}, False),
    ("has_tools false", {"has_tools": False}, {"has_tools": False}, True),
    ("has_tools false miss", {"has_tools": False}, {"has_tools": True}, False),
    ("has_images", {"has_images": True}, {"has_images": True}, True),
    ("has_images miss", {"has_images": True}, {}, False),
    ("has_response_format", {"has_response_format": True}, {"has_response_format": True}, True),
    ("has_response_format miss", {"has_response_format": True}, {}, False),
    ("stream", {"stream": True}, {"stream": True}, True),
    ("stream miss", {"stream": True}, {"stream": False}, False),
    ("not stream", {"stream": False}, {"stream": False}, True),
    # budget_used: share of the team's budget
    ("budget over", {"budget_used": {"gte": 0.8}}, {"budget_used": 0.8}, True),
    ("budget under", {"budget_used": {"gte": 0.8}}, {"budget_used": 0.79}, False),
    ("budget band", {"budget_used": {"gte": 0.5, "lt": 0.8}}, {"budget_used": 0.6}, True),
    ("budget default 0", {"budget_used": {"lt": 0.1}}, {}, True),
    # operation
    ("operation chat", {"operation": "chat"}, {"operation": "chat"}, True),
    ("operation embeddings", {"operation": "embeddings"}, {"operation": "chat"}, False),
    ("operation text", {"operation": "text_completion"}, {"operation": "text_completion"}, True),
    # time windows (UTC; end exclusive)
    ("time inside", {"time": {"between": "09:00-17:00"}}, {"now": at(0, 9)}, True),
    ("time end exclusive", {"time": {"between": "09:00-17:00"}}, {"now": at(0, 17)}, False),
    ("time before", {"time": {"between": "09:00-17:00"}}, {"now": at(0, 8, 59)}, False),
    ("time minutes", {"time": {"between": "09:30-09:45"}}, {"now": at(0, 9, 44)}, True),
    ("wrap evening", {"time": {"between": "22:00-06:00"}}, {"now": at(0, 23)}, True),
    ("wrap morning", {"time": {"between": "22:00-06:00"}}, {"now": at(0, 5, 59)}, True),
    ("wrap end exclusive", {"time": {"between": "22:00-06:00"}}, {"now": at(0, 6)}, False),
    ("wrap midday", {"time": {"between": "22:00-06:00"}}, {"now": at(0, 12)}, False),
    ("wrap at midnight", {"time": {"between": "22:00-06:00"}}, {"now": at(1, 0)}, True),
    ("whole day", {"time": {"between": "00:00-00:00"}}, {"now": at(3, 13)}, True),
    ("days hit", {"time": {"between": "09:00-17:00", "days": ["mon"]}}, {"now": at(0, 10)}, True),
    ("days miss", {"time": {"between": "09:00-17:00", "days": ["tue"]}}, {"now": at(0, 10)}, False),
    ("weekend", {"time": {"between": "00:00-00:00", "days": ["sat", "sun"]}}, {"now": at(6, 23)}, True),
    ("weekend miss", {"time": {"between": "00:00-00:00", "days": ["sat", "sun"]}}, {"now": at(0, 1)}, False),
    # a wrapping window belongs to the day it opens: Friday night runs into Saturday morning
    ("wrap fri night", {"time": {"between": "22:00-06:00", "days": ["fri"]}}, {"now": at(4, 23)}, True),
    ("wrap sat morning", {"time": {"between": "22:00-06:00", "days": ["fri"]}}, {"now": at(5, 3)}, True),
    ("wrap fri morning", {"time": {"between": "22:00-06:00", "days": ["fri"]}}, {"now": at(4, 3)}, False),
    ("wrap mon morning", {"time": {"between": "22:00-06:00", "days": ["sun"]}}, {"now": at(0, 3)}, True),
    (
        "time in another zone is converted",
        {"time": {"between": "09:00-10:00"}},
        {"now": datetime(2026, 3, 2, 11, 30, tzinfo=timezone(timedelta(hours=2)))},
        True,
    ),
    ("naive time is UTC", {"time": {"between": "09:00-10:00"}}, {"now": datetime(2026, 3, 2, 9, 30)}, True),
    # several conditions: all must hold
    ("and: all hold", {"teams": ["demo"], "models": ["gpt-*"], "stream": True}, {"stream": True}, True),
    ("and: one fails", {"teams": ["demo"], "models": ["gpt-*"], "stream": True}, {"stream": False}, False),
    ("empty when matches all", {}, {"team": "x", "model": "y"}, True),
]


@pytest.mark.parametrize(
    ("when", "fact_kw", "expected"), [c[1:] for c in WHEN_CASES], ids=[c[0] for c in WHEN_CASES]
)
def test_when_condition(when: dict[str, Any], fact_kw: dict[str, Any], expected: bool) -> None:
    assert matches(when, facts(**fact_kw)) is expected


def test_time_defaults_to_the_current_utc_clock() -> None:
    now = datetime.now(UTC)
    window = f"{now.hour:02d}:00-{(now.hour + 1) % 24:02d}:00"
    f = facts()
    f.now = None
    # Within a second of an hour boundary the clock may have moved on: accept only the stable case.
    if now.minute < 59:
        assert matches({"time": {"between": window}}, f)


# ---------------------------------------------------------------------- lazy prompt tokens


class Counter:
    def __init__(self, value: int) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    ("rules", "expected_rule", "expected_calls"),
    [
        pytest.param([{"name": "a", "when": {"teams": ["demo"]}, "route_to": "m"}], "a", 0, id="no-range"),
        pytest.param(
            [
                {"name": "a", "when": {"teams": ["demo"]}, "route_to": "m"},
                {"name": "b", "when": {"prompt_tokens": {"gt": 10}}, "route_to": "m"},
            ],
            "a",
            0,
            id="range-after-the-match",
        ),
        pytest.param(
            [{"name": "a", "when": {"teams": ["ml"], "prompt_tokens": {"gt": 10}}, "route_to": "m"}],
            "default",
            0,
            id="cheap-predicate-fails-first",
        ),
        pytest.param(
            [
                {"name": "a", "when": {"prompt_tokens": {"gt": 1000}}, "route_to": "m"},
                {"name": "b", "when": {"prompt_tokens": {"gt": 10}}, "route_to": "m"},
            ],
            "b",
            1,
            id="counted-once-for-two-rules",
        ),
        pytest.param(
            [{"name": "a", "when": {"prompt_tokens": {"gt": 1000}}, "route_to": "m"}],
            "default",
            1,
            id="reached",
        ),
    ],
)
def test_prompt_tokens_are_counted_lazily(
    rules: list[dict[str, Any]], expected_rule: str, expected_calls: int
) -> None:
    counter = Counter(500)
    decision = ruleset(*rules).decide(facts(prompt_tokens_fn=counter))
    assert decision.rule == expected_rule
    assert counter.calls == expected_calls


def test_needs_prompt_tokens() -> None:
    assert not ruleset({"name": "a", "route_to": "m"}).needs_prompt_tokens()
    assert ruleset({"name": "a", "when": {"prompt_tokens": {"gt": 1}}, "route_to": "m"}).needs_prompt_tokens()


# ---------------------------------------------------------------------- actions


def test_no_rule_routes_to_the_requested_model_with_its_default_fallbacks() -> None:
    rs = ruleset(fallbacks={"gpt-4o": ["gpt-4o-mini"]})
    assert rs.decide(facts()) == Decision(rule="default", chain=("gpt-4o", "gpt-4o-mini"))
    assert rs.decide(facts(model="claude")).chain == ("claude",)


@pytest.mark.parametrize(
    ("rule", "defaults", "chain"),
    [
        pytest.param({"route_to": "b"}, {}, ("b",), id="route_to-str"),
        pytest.param({"route_to": ["b", "c"]}, {}, ("b", "c"), id="route_to-list"),
        pytest.param({"route_to": "b", "fallbacks": ["c", "d"]}, {}, ("b", "c", "d"), id="fallbacks"),
        pytest.param({"fallbacks": ["c"]}, {}, ("a", "c"), id="fallbacks-without-route_to-keep-the-model"),
        pytest.param({"route_to": "b"}, {"b": ["c"]}, ("b", "c"), id="default-fallbacks-of-target"),
        pytest.param({"route_to": "b"}, {"a": ["c"]}, ("b",), id="default-fallbacks-of-requested-unused"),
        pytest.param(
            {"route_to": "b", "fallbacks": ["c"]},
            {"b": ["d"], "c": ["e"]},
            ("b", "c", "d", "e"),
            id="defaults-after",
        ),
        pytest.param({"route_to": "b"}, {"b": ["c"], "c": ["d"]}, ("b", "c", "d"), id="defaults-transitive"),
        pytest.param(
            {"route_to": ["b", "c"], "fallbacks": ["b", "c"]}, {"b": ["c"]}, ("b", "c"), id="no-duplicates"
        ),
    ],
)
def test_chain(rule: dict[str, Any], defaults: dict[str, list[str]], chain: tuple[str, ...]) -> None:
    rs = ruleset({"name": "r", **rule}, fallbacks=defaults)
    assert rs.decide(facts(model="a")).chain == chain


AUTO = {"name": "auto", "when": {"models": ["auto"]}, "auto": {"strong": "big", "weak": "small"}}
SHORT = "What is the capital of France?"
COMPLEX = (
    "Analyze and compare the trade-offs of these two designs step by step, then prove which is optimal. "
    "```python\ndef f(x):\n    return x * 2\n```\n1. Why? 2. How would you refactor it? "
    "Evaluate 3 * 4 + 5 = 17 and 2 ^ 10 = 1024. " * 8
)


@pytest.mark.parametrize(
    ("text", "threshold", "expected"),
    [
        pytest.param(SHORT, 0.5, ("small", "big"), id="short-goes-weak"),
        pytest.param(COMPLEX, 0.5, ("big", "small"), id="complex-goes-strong"),
        pytest.param("", 0.5, ("small", "big"), id="empty-goes-weak"),
        pytest.param(SHORT, 0.0, ("big", "small"), id="threshold-0-always-strong"),
        pytest.param(COMPLEX, 1.0, ("small", "big"), id="threshold-1-weak-unless-perfect"),
    ],
)
def test_auto_routes_by_complexity(text: str, threshold: float, expected: tuple[str, str]) -> None:
    rule = {**AUTO, "auto": {"strong": "big", "weak": "small", "threshold": threshold}}
    decision = ruleset(rule).decide(facts(model="auto", prompt_text_fn=lambda: text), explain=True)
    assert decision.rule == "auto"
    assert decision.chain == expected
    assert any(line.startswith("auto: complexity") for line in decision.trace)


def test_auto_threshold_is_inclusive() -> None:
    score = complexity_score(COMPLEX)
    assert 0 < score < 1
    rule = {**AUTO, "auto": {"strong": "big", "weak": "small", "threshold": score}}
    assert ruleset(rule).decide(facts(model="auto", prompt_text_fn=lambda: COMPLEX)).chain[0] == "big"


def test_auto_keeps_explicit_fallbacks_before_the_other_tier() -> None:
    rule = {**AUTO, "fallbacks": ["spare"]}
    chain = ruleset(rule, fallbacks={"small": ["tiny"]}).decide(
        facts(model="auto", prompt_text_fn=lambda: SHORT)
    )
    assert chain.chain == ("small", "spare", "big", "tiny")


def test_complexity_score_orders_short_below_complex() -> None:
    assert complexity_score("") == 0.0
    assert complexity_score(SHORT) < 0.5 <= complexity_score(COMPLEX) <= 1.0


def test_max_tokens_cache_and_tags_ride_on_the_decision() -> None:
    rs = ruleset(
        {
            "name": "r",
            "route_to": "b",
            "max_tokens": 256,
            "cache": {"mode": "always", "ttl_s": 60, "group": "shared"},
            "add_tags": {"tier": "cheap", "routed": "yes"},
        }
    )
    d = rs.decide(facts())
    assert d.max_tokens_cap == 256
    assert d.cache is not None and (d.cache.mode, d.cache.ttl_s, d.cache.group) == ("always", 60, "shared")
    assert d.add_tags == (("tier", "cheap"), ("routed", "yes"))
    assert d.deny is None


def test_defaults_of_a_rule_without_extras() -> None:
    d = ruleset({"name": "r", "route_to": "b"}).decide(facts())
    assert (d.max_tokens_cap, d.cache, d.deny, d.add_tags) == (None, None, None, ())


def test_deny() -> None:
    rs = ruleset(
        {
            "name": "no-images",
            "when": {"has_images": True},
            "deny": "images are not allowed",
            "add_tags": {"a": "b"},
        },
        {"name": "rest", "route_to": "b"},
    )
    denied = rs.decide(facts(has_images=True))
    assert (denied.rule, denied.deny, denied.chain, denied.add_tags) == (
        "no-images",
        "images are not allowed",
        (),
        (("a", "b"),),
    )
    allowed = rs.decide(facts(has_images=False))
    assert (allowed.rule, allowed.deny, allowed.chain) == ("rest", None, ("b",))


def test_rule_without_target_keeps_the_requested_model() -> None:
    d = ruleset({"name": "cap", "max_tokens": 10}).decide(facts(model="m"))
    assert (d.rule, d.chain, d.max_tokens_cap) == ("cap", ("m",), 10)


def test_explain_trace_names_each_rule_and_why() -> None:
    rs = ruleset(
        {"name": "ml-only", "when": {"teams": ["ml"]}, "route_to": "x"},
        {"name": "long", "when": {"prompt_tokens": {"gt": 1000}}, "route_to": "x"},
        {"name": "prod", "when": {"tags": {"env": "prod"}}, "route_to": "y"},
    )
    d = rs.decide(facts(tags={"env": "prod"}, prompt_tokens_fn=lambda: 5), explain=True)
    assert d.trace == (
        "rule 'ml-only': no match (teams)",
        "rule 'long': no match (prompt_tokens)",
        "rule 'prod': MATCH",
    )
    assert rs.decide(facts(), explain=False).trace == ()
    assert rs.decide(facts(), explain=True).trace[-1] == "no rule matched: default route"


# ---------------------------------------------------------------------- properties

TEAMS = ("demo", "ml", "ops")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "auto")
GLOBS = ("gpt-*", "*", "claude-*", "auto", "gpt-4o")
TAG_KEYS = ("env", "app")
TAG_VALUES = ("prod", "dev", "*")


def _range(lo: float, hi: float) -> st.SearchStrategy[dict[str, float]]:
    bound = st.floats(lo, hi, allow_nan=False).map(lambda v: round(v, 2))
    return st.dictionaries(st.sampled_from(("gt", "gte", "lt", "lte")), bound, min_size=1, max_size=2)


whens = st.fixed_dictionaries(
    {},
    optional={
        "teams": st.lists(st.sampled_from(TEAMS), min_size=1, max_size=2),
        "models": st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2),
        "tags": st.dictionaries(st.sampled_from(TAG_KEYS), st.sampled_from(TAG_VALUES), max_size=2),
        "prompt_tokens": _range(0, 2000),
        "max_tokens": _range(0, 2000),
        "has_tools": st.booleans(),
        "stream": st.booleans(),
        "budget_used": _range(0, 1),
        "operation": st.sampled_from(("chat", "embeddings")),
        "time": st.fixed_dictionaries(
            {"between": st.sampled_from(("09:00-17:00", "22:00-06:00", "00:00-00:00"))},
            optional={"days": st.lists(st.sampled_from(("mon", "sat", "sun")), max_size=2)},
        ),
    },
)
rule_lists = st.lists(whens, max_size=6).map(
    lambda ws: [{"name": f"r{i}", "when": w, "route_to": f"target-{i}"} for i, w in enumerate(ws)]
)
fact_values = st.fixed_dictionaries(
    {
        "team": st.sampled_from(TEAMS),
        "model": st.sampled_from(MODELS),
        "tags": st.dictionaries(st.sampled_from(TAG_KEYS), st.sampled_from(("prod", "dev")), max_size=2),
        "prompt_tokens": st.integers(0, 2000),
        "max_tokens": st.none() | st.integers(0, 2000),
        "has_tools": st.booleans(),
        "stream": st.booleans(),
        "budget_used": st.floats(0, 1.2, allow_nan=False),
        "operation": st.sampled_from(("chat", "embeddings")),
        "now": st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
    }
)


def _naive_range(r: dict[str, float], v: float) -> bool:
    ops: dict[str, Callable[[float, float], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return all(ops[k](v, bound) for k, bound in r.items())


def _naive_time(t: dict[str, Any], now: datetime) -> bool:
    """Walk back minute by minute to the most recent opening of the window: is it still open?"""
    start, end = (int(x[:2]) * 60 + int(x[3:]) for x in t["between"].split("-"))
    length = (end - start) % 1440 or 1440
    days = t.get("days") or ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    minute = now.hour * 60 + now.minute
    since_open = (minute - start) % 1440
    opened_on = (now - timedelta(minutes=since_open)).weekday()
    return since_open < length and names[opened_on] in days


def naive_match(when: dict[str, Any], v: dict[str, Any]) -> bool:
    checks = {
        "teams": lambda c: v["team"] in c,
        "models": lambda c: any(fnmatch.fnmatchcase(v["model"], g) for g in c),
        "tags": lambda c: all(k in v["tags"] and (x == "*" or v["tags"][k] == x) for k, x in c.items()),
        "prompt_tokens": lambda c: _naive_range(c, v["prompt_tokens"]),
        "max_tokens": lambda c: v["max_tokens"] is not None and _naive_range(c, v["max_tokens"]),
        "has_tools": lambda c: v["has_tools"] == c,
        "stream": lambda c: v["stream"] == c,
        "budget_used": lambda c: _naive_range(c, v["budget_used"]),
        "operation": lambda c: v["operation"] == c,
        "time": lambda c: _naive_time(c, v["now"]),
    }
    return all(checks[k](c) for k, c in when.items())


def to_facts(v: dict[str, Any]) -> Facts:
    tokens = v["prompt_tokens"]
    return Facts(**{k: x for k, x in v.items() if k != "prompt_tokens"}, prompt_tokens_fn=lambda: tokens)


@settings(max_examples=400, deadline=None)
@given(rules=rule_lists, v=fact_values)
def test_first_match_wins(rules: list[dict[str, Any]], v: dict[str, Any]) -> None:
    expected = next((r["name"] for r in rules if naive_match(r["when"], v)), "default")
    decision = ruleset(*rules).decide(to_facts(v))
    assert decision.rule == expected
    if expected != "default":
        assert decision.chain == (f"target-{expected[1:]}",)
    else:
        assert decision.chain == (v["model"],)


@settings(max_examples=200, deadline=None)
@given(rules=rule_lists, v=fact_values)
def test_evaluation_is_deterministic(rules: list[dict[str, Any]], v: dict[str, Any]) -> None:
    first, second = ruleset(*rules), ruleset(*rules)
    decisions = {first.decide(to_facts(v)), first.decide(to_facts(v)), second.decide(to_facts(v))}
    assert len(decisions) == 1
    traced = first.decide(to_facts(v), explain=True)
    assert (traced.rule, traced.chain) == (first.decide(to_facts(v)).rule, first.decide(to_facts(v)).chain)
