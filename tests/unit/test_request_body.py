"""The output cap the budget reserves for must be the one the upstream will honour."""

from __future__ import annotations

from gateway.request_body import choices, client_max_tokens, output_cap_fields


def test_anthropic_reads_max_tokens_only() -> None:
    # max_completion_tokens is not an Anthropic field; a translation to OpenAI keeps max_tokens.
    body = {"max_tokens": 64_000, "max_completion_tokens": 1}
    assert client_max_tokens(body, "anthropic") == 64_000
    assert output_cap_fields(body, "anthropic") == ("max_tokens",)


def test_openai_with_both_fields_reserves_the_larger_and_rewrites_both() -> None:
    body = {"max_tokens": 64_000, "max_completion_tokens": 1}
    assert client_max_tokens(body, "openai") == 64_000
    assert set(output_cap_fields(body, "openai")) == {"max_tokens", "max_completion_tokens"}
    assert client_max_tokens({"max_completion_tokens": 7}, "openai") == 7
    assert client_max_tokens({}, "openai") is None
    assert output_cap_fields({}, "openai") == ("max_tokens",)
    assert client_max_tokens({"max_tokens": True}, "openai") is None  # a bool is not a count


def test_every_choice_is_reserved() -> None:
    assert choices({"n": 3}, "openai") == 3
    assert choices({"n": 2, "best_of": 5}, "openai") == 5
    assert choices({"n": 3}, "anthropic") == 1
