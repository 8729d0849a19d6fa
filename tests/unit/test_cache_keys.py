"""Response-cache keys and the cacheability decision (gateway.cache.cache_key / decide), as properties.

The key must be a function of what can change the answer and nothing else: JSON key order (at any depth)
and the fields that only steer delivery or bookkeeping never change it; every other field, including ones
the gateway has never heard of, always does; and who may see the entry (the namespace), the wire format,
the operation and the model that will serve are always part of it. Last, the stampede bookkeeping: waiters
get the leader's entry, never wait longer than ``lock_wait_ms``, and never delete another replica's lock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.cache import NON_OUTPUT_FIELDS, CacheDecision, ResponseCache, cache_key, decide
from gateway.cache_codec import CacheEntry
from gateway.config.model import CacheConfig, CacheSettings
from gateway.config.runtime import CachePolicy
from gateway.observability.metrics import Metrics
from gateway.store.memory import MemoryStore

# ---------------------------------------------------------------- strategies

# orjson only encodes 64-bit integers (and parses larger ones as floats), so bodies never hold more
_INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_SCALARS = st.none() | st.booleans() | _INTS | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)},
        optional={"name": st.text(max_size=8), "extra": JSON},
    ),
    min_size=1,
    max_size=4,
)
OUTPUT_FIELDS = (
    "messages",
    "tools",
    "tool_choice",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "logit_bias",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "reasoning_effort",
    "prompt",
    "input",
    "system",
)
PROPERTY = settings(max_examples=50, deadline=None)
NON_OUTPUT = ("stream", "stream_options", "user", "metadata", "model", "store", "service_tier")


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A chat body with some optional output fields, each holding arbitrary (nested) JSON."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-sonnet"]))}
    body["messages"] = draw(MESSAGES)
    for name in draw(st.lists(st.sampled_from(OUTPUT_FIELDS[1:]), unique=True, max_size=5)):
        body[name] = draw(JSON)
    return body


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same JSON value with every object's key order permuted, at every depth (lists keep order)."""
    if isinstance(value, dict):
        items = [(key, shuffled(item, rnd)) for key, item in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [shuffled(item, rnd) for item in value]
    return value


SAMPLING = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty")


def key(body: dict[str, Any], namespace: str = "team:a", inbound: str = "openai", model: str = "m") -> str:
    return cache_key(namespace, inbound, "chat", model, body)


# ---------------------------------------------------------------- key properties


def test_the_documented_non_output_fields_are_exactly_these() -> None:
    assert frozenset(NON_OUTPUT) == NON_OUTPUT_FIELDS


@PROPERTY
@given(body=bodies(), rnd=st.randoms(use_true_random=False))
def test_key_order_at_any_depth_never_changes_the_key(body: dict[str, Any], rnd: random.Random) -> None:
    assert key(shuffled(body, rnd)) == key(body)


@PROPERTY
@given(
    nested=st.dictionaries(st.text(max_size=6), JSON, min_size=2, max_size=6),
    rnd=st.randoms(use_true_random=False),
)
def test_nested_objects_in_tools_and_response_format_are_order_free(
    nested: dict[str, Any], rnd: random.Random
) -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": nested}}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": nested}},
    }
    assert key(shuffled(body, rnd)) == key(body)


@PROPERTY
@given(body=bodies(), name=st.sampled_from(OUTPUT_FIELDS), a=JSON, b=JSON)
def test_any_output_field_value_changes_the_key(body: dict[str, Any], name: str, a: Any, b: Any) -> None:
    # JSON equality: 1 == 1.0 == True in Python, but they are different request bodies on the wire,
    # except for the sampling parameters, where 0 and 0.0 mean the same (and share a key, tested below)
    assume(type(a) is not type(b) or a != b)
    assume(not (name in SAMPLING and {type(a), type(b)} == {int, float} and a == b))
    assert key({**body, name: a}) != key({**body, name: b})


@PROPERTY
@given(body=bodies(), name=st.sampled_from(OUTPUT_FIELDS), value=JSON)
def test_adding_an_output_field_changes_the_key(body: dict[str, Any], name: str, value: Any) -> None:
    without = {k: v for k, v in body.items() if k != name}
    assert key({**without, name: value}) != key(without)


@PROPERTY
@given(body=bodies(), text=st.text(max_size=40), position=st.integers(min_value=0, max_value=3))
def test_changing_one_message_changes_the_key(body: dict[str, Any], text: str, position: int) -> None:
    messages = [dict(m) for m in body["messages"]]
    index = position % len(messages)
    assume(messages[index]["content"] != text)
    messages[index]["content"] = text
    assert key({**body, "messages": messages}) != key(body)


@PROPERTY
@given(
    body=bodies(),
    name=st.text(min_size=1, max_size=12).filter(lambda n: n not in NON_OUTPUT_FIELDS),
    value=JSON,
)
def test_an_unknown_new_field_is_assumed_to_change_the_output(
    body: dict[str, Any], name: str, value: Any
) -> None:
    without = {k: v for k, v in body.items() if k != name}
    assert key({**without, name: value}) != key(without)


@PROPERTY
@given(body=bodies(), name=st.sampled_from(NON_OUTPUT), value=JSON)
def test_non_output_fields_never_change_the_key(body: dict[str, Any], name: str, value: Any) -> None:
    without = {k: v for k, v in body.items() if k != name}
    assert key({**body, name: value}) == key(without)


@pytest.mark.parametrize(
    ("name", "same", "other"),
    [("temperature", (0, 0.0), 0.5), ("top_p", (1, 1.0), 0.9), ("presence_penalty", (-1, -1.0), -1.5)],
)
def test_integral_floats_of_sampling_parameters_share_the_int_key(
    name: str, same: tuple[int, float], other: float
) -> None:
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    as_int, as_float = ({**base, name: value} for value in same)
    assert key(as_int) == key(as_float)
    assert key({**base, name: other}) != key(as_int)


def test_streaming_and_bookkeeping_variants_share_one_key() -> None:
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    variants = [
        {**base, "stream": True},
        {**base, "stream": True, "stream_options": {"include_usage": True}},
        {**base, "user": "alice", "metadata": {"ticket": "42"}, "store": True, "service_tier": "flex"},
        {**base, "model": "some-alias"},
    ]
    assert {key(v) for v in variants} == {key(base)}


@PROPERTY
@given(body=bodies())
def test_namespace_wire_operation_and_serving_model_are_part_of_the_key(body: dict[str, Any]) -> None:
    reference = cache_key("team:a", "openai", "chat", "gpt-4o", body)
    others = [
        cache_key("team:b", "openai", "chat", "gpt-4o", body),
        cache_key("group:a", "openai", "chat", "gpt-4o", body),
        cache_key("team:a", "anthropic", "chat", "gpt-4o", body),
        cache_key("team:a", "openai", "text_completion", "gpt-4o", body),
        cache_key("team:a", "openai", "embeddings", "gpt-4o", body),
        cache_key("team:a", "openai", "chat", "gpt-4o-mini", body),
    ]
    assert reference not in others
    assert len(set(others)) == len(others)


@PROPERTY
@given(a=st.text(max_size=6), b=st.text(max_size=6), c=st.text(max_size=6))
def test_key_parts_cannot_be_shifted_into_each_other(a: str, b: str, c: str) -> None:
    # the parts are encoded as a JSON array, so "team:x" + "ab" and "team:xa" + "b" never collide
    assume(a and b)
    assert cache_key("team:x", a + b, c, "m", {}) != cache_key("team:x" + a, b, c, "m", {})
    assert cache_key("team:x", a, b + c, "m", {}) != cache_key("team:x", a + b, c, "m", {})


def test_key_is_a_sha256_hex_digest_and_stable() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    first = key(body)
    assert len(first) == 64 and int(first, 16) >= 0
    assert key(dict(body)) == first


# ---------------------------------------------------------------- decide(): the truth table

MODES = ("auto", "always", "off")
TEMPERATURES: tuple[Any, ...] = ("absent", 0, 0.0, 0.7)
SEEDS: tuple[Any, ...] = ("absent", None, 42)
NS: tuple[Any, ...] = ("absent", 1, 2)
CONTROLS = ("", "no-cache", "no-store", "No-Cache", "no-cache, no-store", "max-age=0")
TTL_HEADERS: tuple[str | None, ...] = (None, "5", "0", " 7 ", "abc", "-3", "99999999999")
POLICY_TTL = 600
MAX_TTL = 86400


def _oracle(
    mode: str, operation: str, body: dict[str, Any], control: str, ttl_header: str | None
) -> tuple[bool, bool, int]:
    """The documented rules, written independently of the implementation: (read, write, ttl)."""
    control = control.lower()
    n = body.get("n")
    deterministic = operation == "embeddings" or body.get("temperature") == 0 or body.get("seed") is not None
    cacheable = (
        mode != "off"
        and "no-store" not in control
        and not (isinstance(n, int) and n > 1)
        and (mode == "always" or deterministic)
    )
    ttl = POLICY_TTL
    if ttl_header is not None and ttl_header.strip().isdigit():
        ttl = min(max(int(ttl_header.strip()), 1), MAX_TTL)
    return cacheable and "no-cache" not in control, cacheable, ttl


def _body(temperature: Any, seed: Any, n: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    for name, value in (("temperature", temperature), ("seed", seed), ("n", n)):
        if value != "absent":
            body[name] = value
    return body


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("operation", ["chat", "embeddings"])
def test_decide_matches_the_documented_table(mode: str, operation: str) -> None:
    policy = CachePolicy(mode=mode, ttl_s=POLICY_TTL, namespace="team:t")
    combos = itertools.product(TEMPERATURES, SEEDS, NS, CONTROLS, TTL_HEADERS)
    for temperature, seed, n, control, ttl_header in combos:
        body = _body(temperature, seed, n)
        headers = {"cache-control": control} if control else {}
        if ttl_header is not None:
            headers["x-gateway-cache-ttl"] = ttl_header
        got = decide(policy, None, body, operation, headers, max_ttl_s=MAX_TTL)
        read, write, ttl = _oracle(mode, operation, body, control, ttl_header)
        context = (mode, operation, temperature, seed, n, control, ttl_header)
        assert (got.read, got.write) == (read, write), context
        if write:
            assert got.ttl_s == ttl, context
        assert got.namespace == "team:t"
        assert bool(got.reason) == (not write), context  # a bypass always says why


@pytest.mark.parametrize(
    ("mode", "body", "headers", "expected"),
    [
        ("auto", {"temperature": 0}, {}, (True, True)),
        ("auto", {"temperature": 0.0}, {}, (True, True)),
        ("auto", {}, {}, (False, False)),  # the API default temperature is 1: not reproducible
        ("auto", {"temperature": 0.7}, {}, (False, False)),
        ("auto", {"temperature": 0.7, "seed": 1}, {}, (True, True)),
        ("auto", {"temperature": 0, "n": 2}, {}, (False, False)),
        ("auto", {"temperature": 0, "n": 1}, {}, (True, True)),
        ("auto", {"temperature": 0}, {"cache-control": "no-cache"}, (False, True)),
        ("auto", {"temperature": 0}, {"cache-control": "no-store"}, (False, False)),
        ("always", {"temperature": 1.3}, {}, (True, True)),
        ("always", {"n": 3}, {}, (False, False)),
        ("always", {}, {"cache-control": "no-cache"}, (False, True)),
        ("always", {}, {"cache-control": "no-store"}, (False, False)),
        ("off", {"temperature": 0, "seed": 1}, {}, (False, False)),
        ("off", {"temperature": 0}, {"x-gateway-cache-ttl": "60"}, (False, False)),
    ],
)
def test_decide_examples(
    mode: str, body: dict[str, Any], headers: dict[str, str], expected: tuple[bool, bool]
) -> None:
    decision = decide(CachePolicy(mode, POLICY_TTL, "team:t"), None, body, "chat", headers)
    assert (decision.read, decision.write) == expected


def test_embeddings_qualify_under_auto_whatever_the_body_says() -> None:
    policy = CachePolicy("auto", POLICY_TTL, "team:t")
    decision = decide(policy, None, {"model": "e", "input": "x"}, "embeddings", {})
    assert (decision.read, decision.write) == (True, True)


def test_ttl_header_is_clamped_to_the_maximum_and_to_one_second() -> None:
    policy = CachePolicy("always", POLICY_TTL, "team:t")
    assert decide(policy, None, {}, "chat", {"x-gateway-cache-ttl": "99999999"}).ttl_s == 30 * 86400
    assert decide(policy, None, {}, "chat", {"x-gateway-cache-ttl": "0"}).ttl_s == 1
    assert decide(policy, None, {}, "chat", {"x-gateway-cache-ttl": "1.5"}).ttl_s == POLICY_TTL
    assert decide(policy, None, {}, "chat", {}).ttl_s == POLICY_TTL


@PROPERTY
@given(
    team_mode=st.sampled_from(MODES),
    rule_mode=st.none() | st.sampled_from(MODES),
    rule_ttl=st.none() | st.integers(min_value=1, max_value=86400),
    rule_group=st.none() | st.sampled_from(["shared", "g-2"]),
)
def test_a_rule_override_wins_field_by_field(
    team_mode: str, rule_mode: str | None, rule_ttl: int | None, rule_group: str | None
) -> None:
    policy = CachePolicy(team_mode, POLICY_TTL, "team:t")
    override = CacheSettings(mode=rule_mode, ttl_s=rule_ttl, group=rule_group)
    decision = decide(policy, override, {"temperature": 0}, "chat", {})
    mode = rule_mode or team_mode
    assert decision.write == (mode != "off")
    assert decision.ttl_s == (rule_ttl or POLICY_TTL)
    assert decision.namespace == (f"group:{rule_group}" if rule_group else "team:t")


def test_a_team_group_and_a_rule_group_of_the_same_name_are_one_namespace() -> None:
    from gateway.config.load import cache_policy

    team_level = cache_policy("a", CacheSettings(mode="always", group="shared"))
    via_rule = decide(
        CachePolicy("always", POLICY_TTL, "team:b"), CacheSettings(group="shared"), {}, "chat", {}
    )
    assert team_level.namespace == via_rule.namespace == "group:shared"
    # and no team name can spell a group namespace (or another team's)
    assert cache_policy("group", CacheSettings()).namespace == "team:group"
    assert cache_policy("shared", CacheSettings()).namespace != team_level.namespace


def test_a_bypass_decision_is_a_plain_value() -> None:
    decision = decide(CachePolicy("off", 5, "team:t"), None, {}, "chat", {})
    assert decision == CacheDecision(False, False, 5, "team:t", "off")


# ---------------------------------------------------------------- stampede bookkeeping (ResponseCache)


def _cache(lock_wait_ms: int) -> tuple[ResponseCache, MemoryStore]:
    store = MemoryStore("unused-state-dir")  # the cache methods never touch the disk
    return ResponseCache(store, CacheConfig(lock_wait_ms=lock_wait_ms), Metrics()), store


def _entry() -> CacheEntry:
    return CacheEntry(kind="body", wire="openai", operation="chat", body=b"{}")


async def test_followers_get_the_leaders_entry() -> None:
    cache, _ = _cache(lock_wait_ms=1000)
    cache.lead("k")
    leader = cache.follower_of("k")
    assert leader is not None
    waiting = [asyncio.ensure_future(cache.follow(leader)) for _ in range(3)]
    await asyncio.sleep(0)
    entry = _entry()
    cache.finish("k", entry)
    assert await asyncio.gather(*waiting) == [entry] * 3
    assert cache.follower_of("k") is None


async def test_a_follower_gives_up_after_lock_wait_ms_without_cancelling_the_others() -> None:
    cache, _ = _cache(lock_wait_ms=50)
    cache.lead("k")  # a leader that never finishes (e.g. its stream was never started)
    leader = cache.follower_of("k")
    assert leader is not None
    started = time.monotonic()
    assert await cache.follow(leader) is None
    assert 0.04 <= time.monotonic() - started < 1.0
    assert not leader.cancelled()  # shielded: a late follower can still receive the entry
    late = asyncio.ensure_future(cache.follow(leader))
    await asyncio.sleep(0)
    cache.finish("k", _entry())
    assert await late == _entry()


async def test_lock_wait_zero_means_no_waiting() -> None:
    cache, _ = _cache(lock_wait_ms=0)
    cache.lead("k")
    leader = cache.follower_of("k")
    assert leader is not None
    assert await cache.follow(leader) is None
    assert cache.probe("team:t", "k", read=True).lock_ms == 0  # no fill lock, so no cross-replica wait


async def test_only_the_replica_that_took_the_lock_deletes_it() -> None:
    cache, store = _cache(lock_wait_ms=40)
    assert ResponseCache.slot("team:t") == "t" and ResponseCache.slot("group:g") == "group:g"
    assert await store.cache_lock("t", "k", 10_000)  # another replica leads this key
    probe = cache.probe("team:t", "k", read=True)
    await store.admit("t", None, probe)
    assert not probe.locked  # the admission saw the other replica's lock
    assert await cache.wait_for_entry("team:t", "k") is None  # polled, timed out, went upstream
    await cache.release("team:t", "k")
    assert not await store.cache_lock("t", "k", 10_000)  # the other replica's lock is intact

    mine = cache.probe("team:t", "mine", read=True)
    await store.admit("t", None, mine)
    assert mine.locked  # took the lock: leads
    cache.owns("mine")
    assert not await store.cache_lock("t", "mine", 10_000)
    await cache.release("team:t", "mine")
    assert await store.cache_lock("t", "mine", 10_000)  # released


async def test_a_poller_serves_the_entry_the_lock_holder_writes() -> None:
    cache, store = _cache(lock_wait_ms=2000)
    assert await store.cache_lock("t", "k", 10_000)
    poll = asyncio.ensure_future(cache.wait_for_entry("team:t", "k"))
    await asyncio.sleep(0.05)
    cache.queue_put("team:t", "k", _entry(), ttl_s=60)  # written in the background, in a batch
    assert await asyncio.wait_for(poll, 1) == _entry()


def test_a_huge_integral_float_is_keyed_as_a_float() -> None:
    # found by hypothesis: 1.8e19 is integral, but as an int it would exceed what orjson encodes
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert key({**base, "temperature": 1.8446744073709552e19}) != key({**base, "temperature": 0})
