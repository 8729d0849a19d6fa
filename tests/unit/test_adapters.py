"""Provider adapters: the edge's encoding of an unchanged body goes upstream as-is; any change
(another model name, another wire, the usage request on a stream, Azure's model-in-URL) re-encodes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway import jsonutil
from gateway.config.runtime import DeploymentSpec, ProviderSpec
from gateway.metering.pricing import Rates
from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.openai import OpenAIAdapter

RATES = Rates(input=1, cached_input=1, cache_write=1, output=1, reasoning=1, provider="p")


def deployment(provider_type: str, upstream_model: str) -> DeploymentSpec:
    provider = ProviderSpec(
        name="p",
        type=provider_type,
        base_url="http://upstream.test",
        api_key="sk-real",
        api_version="2024-10-21",
        system="openai" if provider_type != "anthropic" else "anthropic",
        headers={},
        max_connections=1,
    )
    return DeploymentSpec(
        id="m#0",
        logical="m",
        provider=provider,
        upstream_model=upstream_model,
        price_name=upstream_model,
        rates=RATES,
        weight=1.0,
        priority=0,
        region="",
        context_window=128_000,
        max_output_tokens=4096,
    )


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
MESSAGES = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
# A marker encoding: the adapter must send these exact bytes when it keeps the encoding.
MARKER = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5} '


def test_openai_unchanged_body_sends_the_edge_encoding() -> None:
    call = OpenAIAdapter().prepare(
        "openai", "chat", CHAT, deployment("openai", "gpt-4o-mini"), False, {}, MARKER
    )
    assert call.payload is MARKER
    assert call.headers["authorization"] == "Bearer sk-real"


def test_openai_stream_that_already_asks_for_usage_keeps_the_encoding() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    encoded = jsonutil.dumps(body)
    call = OpenAIAdapter().prepare(
        "openai", "chat", body, deployment("openai", "gpt-4o-mini"), True, {}, encoded
    )
    assert call.payload is encoded


@pytest.mark.parametrize(
    ("provider_type", "upstream_model", "body", "stream", "expected"),
    [
        # An alias: the upstream's model name differs.
        ("openai", "gpt-4o-mini-2024-07-18", CHAT, False, {**CHAT, "model": "gpt-4o-mini-2024-07-18"}),
        # A stream gets the usage request added.
        (
            "openai",
            "gpt-4o-mini",
            {**CHAT, "stream": True},
            True,
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ),
        # Azure: the model is in the URL, not the body.
        ("azure", "gpt-4o-mini", CHAT, False, {k: v for k, v in CHAT.items() if k != "model"}),
    ],
)
def test_openai_changed_body_is_reencoded(
    provider_type: str, upstream_model: str, body: dict[str, Any], stream: bool, expected: dict[str, Any]
) -> None:
    dep = deployment(provider_type, upstream_model)
    call = OpenAIAdapter().prepare("openai", "chat", body, dep, stream, {}, MARKER)
    assert call.payload != MARKER
    assert jsonutil.loads(call.payload) == expected


def test_openai_from_anthropic_wire_is_translated_not_passed_through() -> None:
    dep = deployment("openai", "claude-x")
    call = OpenAIAdapter().prepare("anthropic", "chat", MESSAGES, dep, False, {}, jsonutil.dumps(MESSAGES))
    assert jsonutil.loads(call.payload)["messages"] == [{"role": "user", "content": "hi"}]
    assert call.payload != jsonutil.dumps(MESSAGES)


def test_anthropic_unchanged_body_sends_the_edge_encoding() -> None:
    encoded = jsonutil.dumps(MESSAGES)
    call = AnthropicAdapter().prepare(
        "anthropic", "chat", MESSAGES, deployment("anthropic", "claude-x"), False, {}, encoded
    )
    assert call.payload is encoded
    assert call.headers["x-api-key"] == "sk-real"


def test_anthropic_changed_model_or_wire_is_reencoded() -> None:
    renamed = AnthropicAdapter().prepare(
        "anthropic", "chat", MESSAGES, deployment("anthropic", "claude-x-latest"), False, {}, MARKER
    )
    assert jsonutil.loads(renamed.payload) == {**MESSAGES, "model": "claude-x-latest"}
    translated = AnthropicAdapter().prepare(
        "openai", "chat", CHAT, replace(deployment("anthropic", "gpt-4o-mini")), False, {}, MARKER
    )
    assert translated.payload != MARKER
    assert jsonutil.loads(translated.payload)["max_tokens"] == 5


def test_without_an_encoding_the_body_is_encoded() -> None:
    call = OpenAIAdapter().prepare("openai", "chat", CHAT, deployment("openai", "gpt-4o-mini"), False, {})
    assert jsonutil.loads(call.payload) == CHAT
