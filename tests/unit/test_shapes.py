"""Every check in ``gateway.shapes``: what passes, what fails, and the ``param`` each failure names.

The param is what OpenAI SDK users see in ``error.param``; it must name the field the caller got
wrong (``messages[2].role``, not ``messages``). Unknown fields always pass through untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.shapes import (
    CHECKS,
    MAX_N,
    MAX_TOKENS,
    check_anthropic_messages,
    check_openai_chat,
    check_openai_completion,
    check_openai_embeddings,
)

Check = Callable[[dict[str, Any]], None]
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES}
COMPLETION: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}
EMBEDDINGS: dict[str, Any] = {"model": "text-embedding-3-small", "input": "hello"}
ANTHROPIC: dict[str, Any] = {"model": "claude-sonnet", "max_tokens": 64, "messages": MESSAGES}
MISSING = object()


def with_field(base: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    if value is MISSING:
        body.pop(name, None)
    else:
        body[name] = value
    return body


def param_of(check: Check, body: dict[str, Any]) -> str | None:
    with pytest.raises(InvalidRequest) as info:
        check(body)
    assert info.value.status == 400
    assert info.value.message
    return info.value.param


def test_the_check_table_covers_every_endpoint() -> None:
    assert {
        ("openai", "chat"): check_openai_chat,
        ("openai", "text_completion"): check_openai_completion,
        ("openai", "embeddings"): check_openai_embeddings,
        ("anthropic", "chat"): check_anthropic_messages,
    } == CHECKS


@pytest.mark.parametrize(
    ("check", "body"),
    [
        (check_openai_chat, CHAT),
        (check_openai_completion, COMPLETION),
        (check_openai_embeddings, EMBEDDINGS),
        (check_anthropic_messages, ANTHROPIC),
    ],
)
def test_minimal_valid_bodies_pass(check: Check, body: dict[str, Any]) -> None:
    check(copy.deepcopy(body))


def test_a_full_valid_chat_body_passes() -> None:
    check_openai_chat(
        {
            **CHAT,
            "temperature": 0,
            "top_p": 0.5,
            "presence_penalty": -1.5,
            "frequency_penalty": 2,
            "n": MAX_N,
            "seed": -(2**63),
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [],
            "stop": ["\n", "END"],
            "metadata": {"a": "b"},
            "user": "u-1",
            "max_tokens": MAX_TOKENS,
            "max_completion_tokens": 1,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
        }
    )


def test_unknown_fields_pass_through_untouched() -> None:
    body = {**CHAT, "reasoning_effort": "high", "x_vendor": {"deep": [1, 2, 3]}, "logit_bias": {"1": 5}}
    before = copy.deepcopy(body)
    check_openai_chat(body)
    assert body == before  # a check never rewrites the body


def test_null_optional_fields_are_absent_fields() -> None:
    nulls = dict.fromkeys(
        (
            "temperature",
            "top_p",
            "n",
            "seed",
            "stream",
            "tools",
            "stop",
            "stream_options",
            "metadata",
            "user",
        ),
    )
    check_openai_chat({**CHAT, **nulls, "max_tokens": None, "response_format": None})
    check_anthropic_messages(
        {**ANTHROPIC, "temperature": None, "stream": None, "system": None, "tools": None}
    )


# ---------------------------------------------------------------- the OpenAI chat surface

CHAT_FAILURES: list[tuple[str, Any, str]] = [
    # (field, bad value, param the error names)
    ("model", MISSING, "model"),
    ("model", None, "model"),
    ("model", "", "model"),
    ("model", 4, "model"),
    ("model", ["gpt-4o"], "model"),
    ("messages", MISSING, "messages"),
    ("messages", [], "messages"),
    ("messages", "hi", "messages"),
    ("messages", {"role": "user"}, "messages"),
    ("messages", ["hi"], "messages[0]"),
    ("messages", [{"role": "user", "content": "a"}, None], "messages[1]"),
    ("messages", [{"content": "no role"}], "messages[0].role"),
    ("messages", [{"role": 1, "content": "a"}], "messages[0].role"),
    ("messages", [*MESSAGES, *MESSAGES, {"role": None}], "messages[2].role"),
    ("temperature", "hot", "temperature"),
    ("temperature", True, "temperature"),
    ("temperature", [1], "temperature"),
    ("top_p", "0.5", "top_p"),
    ("presence_penalty", False, "presence_penalty"),
    ("frequency_penalty", {}, "frequency_penalty"),
    ("n", 0, "n"),
    ("n", -1, "n"),
    ("n", 1.5, "n"),
    ("n", "2", "n"),
    ("n", True, "n"),
    ("n", MAX_N + 1, "n"),
    ("seed", "42", "seed"),
    ("seed", 2**63, "seed"),
    ("seed", -(2**63) - 1, "seed"),
    ("seed", 4.2, "seed"),
    ("stream", "true", "stream"),
    ("stream", 1, "stream"),
    ("tools", {}, "tools"),
    ("tools", "search", "tools"),
    ("stop", 5, "stop"),
    ("stop", {"a": "b"}, "stop"),
    ("stop", ["ok", 5], "stop"),
    ("stream_options", [], "stream_options"),
    ("stream_options", True, "stream_options"),
    ("metadata", "x", "metadata"),
    ("metadata", [], "metadata"),
    ("user", 5, "user"),
    ("user", {}, "user"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", -5, "max_tokens"),
    ("max_tokens", "10", "max_tokens"),
    ("max_tokens", 10.0, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("max_tokens", MAX_TOKENS + 1, "max_tokens"),
    ("max_tokens", 2**64 - 1, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("max_completion_tokens", "1", "max_completion_tokens"),
    ("max_completion_tokens", 2**63 - 1, "max_completion_tokens"),
    ("response_format", "json", "response_format"),
    ("response_format", ["json_object"], "response_format"),
]


@pytest.mark.parametrize(("field", "value", "param"), CHAT_FAILURES)
def test_openai_chat_rejects(field: str, value: Any, param: str) -> None:
    assert param_of(check_openai_chat, with_field(CHAT, field, value)) == param


def test_missing_model_is_reported_before_missing_messages() -> None:
    assert param_of(check_openai_chat, {}) == "model"
    assert param_of(check_openai_chat, {"model": "gpt-4o"}) == "messages"


def test_messages_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(InvalidRequest, match="you must provide a `messages` parameter"):
        check_openai_chat({"model": "gpt-4o"})
    with pytest.raises(InvalidRequest, match="non-empty array"):
        check_openai_chat({"model": "gpt-4o", "messages": []})
    with pytest.raises(InvalidRequest, match=r"`max_tokens` must be an integer from 1 to 2147483647"):
        check_openai_chat({**CHAT, "max_tokens": 0})


@pytest.mark.parametrize("value", [1, MAX_TOKENS])
def test_max_tokens_bounds_are_inclusive(value: int) -> None:
    check_openai_chat({**CHAT, "max_tokens": value, "max_completion_tokens": value})


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_max_tokens_accepts_exactly_the_int32_range_from_one(value: int) -> None:
    body = {**CHAT, "max_tokens": value}
    if 1 <= value <= MAX_TOKENS:
        check_openai_chat(body)
    else:
        assert param_of(check_openai_chat, body) == "max_tokens"


@given(st.one_of(st.floats(allow_nan=False), st.integers(min_value=-(2**63), max_value=2**63)))
def test_temperature_accepts_any_number(value: float) -> None:
    check_openai_chat({**CHAT, "temperature": value})


# ---------------------------------------------------------------- legacy completions

COMPLETION_FAILURES: list[tuple[str, Any, str]] = [
    ("model", MISSING, "model"),
    ("model", 3, "model"),
    ("prompt", MISSING, "prompt"),
    ("prompt", 5, "prompt"),
    ("prompt", {"text": "x"}, "prompt"),
    ("max_tokens", -1, "max_tokens"),
    ("max_tokens", "16", "max_tokens"),
    ("max_tokens", MAX_TOKENS + 1, "max_tokens"),
    ("temperature", "x", "temperature"),
    ("n", 0, "n"),
    ("stream", "yes", "stream"),
    ("stop", 1, "stop"),
    ("user", 1, "user"),
]


@pytest.mark.parametrize(("field", "value", "param"), COMPLETION_FAILURES)
def test_openai_completion_rejects(field: str, value: Any, param: str) -> None:
    assert param_of(check_openai_completion, with_field(COMPLETION, field, value)) == param


@pytest.mark.parametrize("prompt", ["", "text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompt_forms(prompt: Any) -> None:
    check_openai_completion({**COMPLETION, "prompt": prompt})


def test_completion_max_tokens_may_be_zero() -> None:
    # The legacy API accepts 0 (echo-only scoring requests).
    check_openai_completion({**COMPLETION, "max_tokens": 0})


# ---------------------------------------------------------------- embeddings

EMBEDDINGS_FAILURES: list[tuple[str, Any, str]] = [
    ("model", MISSING, "model"),
    ("model", "", "model"),
    ("input", MISSING, "input"),
    ("input", "", "input"),
    ("input", [], "input"),
    ("input", 5, "input"),
    ("input", {"text": "a"}, "input"),
    ("dimensions", 0, "dimensions"),
    ("dimensions", "256", "dimensions"),
    ("dimensions", MAX_TOKENS + 1, "dimensions"),
]


@pytest.mark.parametrize(("field", "value", "param"), EMBEDDINGS_FAILURES)
def test_openai_embeddings_rejects(field: str, value: Any, param: str) -> None:
    assert param_of(check_openai_embeddings, with_field(EMBEDDINGS, field, value)) == param


@pytest.mark.parametrize("value", ["a", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_embeddings_input_forms(value: Any) -> None:
    check_openai_embeddings({**EMBEDDINGS, "input": value, "dimensions": 256})


def test_embeddings_do_not_run_the_chat_checks() -> None:
    # Embeddings have no sampling parameters: a stray `temperature` is the provider's business.
    check_openai_embeddings({**EMBEDDINGS, "temperature": "n/a"})


# ---------------------------------------------------------------- Anthropic messages

ANTHROPIC_FAILURES: list[tuple[str, Any, str]] = [
    ("model", MISSING, "model"),
    ("model", 7, "model"),
    ("messages", MISSING, "messages"),
    ("messages", [], "messages"),
    ("messages", [1], "messages[0]"),
    ("messages", [{"content": "x"}], "messages[0].role"),
    ("max_tokens", MISSING, "max_tokens"),
    ("max_tokens", None, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", "64", "max_tokens"),
    ("max_tokens", 64.5, "max_tokens"),
    ("max_tokens", MAX_TOKENS + 1, "max_tokens"),
    ("temperature", "warm", "temperature"),
    ("stream", "true", "stream"),
    ("system", 5, "system"),
    ("system", {"text": "x"}, "system"),
    ("tools", {}, "tools"),
]


@pytest.mark.parametrize(("field", "value", "param"), ANTHROPIC_FAILURES)
def test_anthropic_messages_rejects(field: str, value: Any, param: str) -> None:
    assert param_of(check_anthropic_messages, with_field(ANTHROPIC, field, value)) == param


def test_anthropic_missing_max_tokens_reads_like_anthropic() -> None:
    with pytest.raises(InvalidRequest, match="max_tokens: Field required"):
        check_anthropic_messages({"model": "claude-sonnet", "messages": MESSAGES})


@pytest.mark.parametrize("system", ["be brief", [{"type": "text", "text": "be brief"}]])
def test_anthropic_system_forms(system: Any) -> None:
    check_anthropic_messages({**ANTHROPIC, "system": system, "tools": [], "temperature": 1})


def test_anthropic_does_not_apply_openai_only_checks() -> None:
    # `n`, `user` and `stop` are not Anthropic fields; they pass through to the provider untouched.
    check_anthropic_messages({**ANTHROPIC, "n": "x", "user": 5, "stop": 1, "stop_sequences": ["\n"]})
