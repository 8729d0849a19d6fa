"""OpenAI Chat Completions <-> Anthropic Messages translation (gateway.providers.translate).

Outputs are also validated against the official SDKs' response models and stream accumulators, so a
shape the real clients cannot parse fails here rather than in production.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from gateway import jsonutil
from gateway.metering.usage import Usage
from gateway.providers.translate import (
    OPENAI_SSE_DONE,
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    TranslationError,
    UpstreamStreamError,
    anthropic_messages_to_openai_request,
    anthropic_to_openai_chat_response,
    format_anthropic_sse,
    format_openai_sse,
    openai_chat_to_anthropic_request,
    openai_chat_to_anthropic_response,
    parse_sse_events,
    parse_tool_arguments,
)

MODEL = "claude-upstream"
PNG_URL = "data:image/png;base64,iVBORw0KGgo="
PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def to_anthropic(body: dict[str, Any], default_max_tokens: int = 1024) -> dict[str, Any]:
    return openai_chat_to_anthropic_request(body, MODEL, default_max_tokens)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_use(tool_id: str, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


# ---------------------------------------------------------------- OpenAI request -> Anthropic request


MESSAGE_CASES: list[tuple[str, list[dict[str, Any]], Any, list[dict[str, Any]]]] = [
    ("plain user", [user("hi")], None, [user("hi")]),
    (
        "system and developer become top-level system",
        [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            user("hi"),
        ],
        "be brief\n\na\n\nb",
        [user("hi")],
    ),
    (
        "system cache_control keeps the block form",
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}],
            },
            user("hi"),
        ],
        [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}],
        [user("hi")],
    ),
    (
        "consecutive same-role messages merge",
        [user("a"), user([{"type": "text", "text": "b"}]), {"role": "assistant", "content": "c"}],
        None,
        [
            user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
            {"role": "assistant", "content": "c"},
        ],
    ),
    (
        "image parts: data URL -> base64 source, http URL -> url source",
        [
            user(
                [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                ]
            )
        ],
        None,
        [
            user(
                [
                    {"type": "text", "text": "what is this"},
                    {"type": "image", "source": PNG_SOURCE},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                ]
            )
        ],
    ),
    (
        "pdf file part -> document block",
        [
            user(
                [
                    {
                        "type": "file",
                        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                    }
                ]
            )
        ],
        None,
        [
            user(
                [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                    }
                ]
            )
        ],
    ),
    (
        "tool calls -> tool_use; consecutive tool results merge into one user turn with the next user text",
        [
            user("weather?"),
            {
                "role": "assistant",
                "content": "checking",
                "tool_calls": [
                    call("call_1", "get_weather", '{"city": "Paris"}'),
                    call("call_2", "get_weather", "not json"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
            user("thanks"),
        ],
        None,
        [
            user("weather?"),
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "checking"},
                    tool_use("call_1", "get_weather", {"city": "Paris"}),
                    tool_use("call_2", "get_weather", {}),
                ],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
                    {"type": "text", "text": "thanks"},
                ]
            ),
        ],
    ),
    (
        "tool ids are made Anthropic-safe consistently; empty tool content omitted; null content skipped",
        [
            user("go"),
            {"role": "assistant", "content": None, "tool_calls": [call("fc.1:a", "f", "")]},
            {"role": "tool", "tool_call_id": "fc.1:a", "content": ""},
        ],
        None,
        [
            user("go"),
            {"role": "assistant", "content": [tool_use("fc_1_a", "f", {})]},
            user([{"type": "tool_result", "tool_use_id": "fc_1_a"}]),
        ],
    ),
    (
        "final assistant prefill loses trailing whitespace; empty text dropped",
        [
            user([{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]),
            {"role": "assistant", "content": "{ \n"},
        ],
        None,
        [user("hi"), {"role": "assistant", "content": "{"}],
    ),
    (
        "assistant refusal part becomes text; name field dropped",
        [
            {"role": "user", "name": "bob", "content": "x"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            user("ok"),
        ],
        None,
        [user("x"), {"role": "assistant", "content": "no"}, user("ok")],
    ),
]


@pytest.mark.parametrize(
    ("messages", "system", "expected"), [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES]
)
def test_openai_messages_to_anthropic(messages: list[dict[str, Any]], system: Any, expected: Any) -> None:
    out = to_anthropic({"model": "gpt-4o", "messages": messages})
    assert out["messages"] == expected
    assert out.get("system") == system


def test_content_part_cache_control_passes_through() -> None:
    part = {"type": "text", "text": "big doc", "cache_control": {"type": "ephemeral"}}
    out = to_anthropic({"messages": [user([part])]})
    assert out["messages"] == [user([part])]


BASE = [user("hi")]
PARAM_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("default max_tokens", {}, {"max_tokens": 1024}),
    ("max_tokens", {"max_tokens": 50}, {"max_tokens": 50}),
    ("max_completion_tokens wins", {"max_tokens": 50, "max_completion_tokens": 70}, {"max_tokens": 70}),
    ("stop string", {"stop": "END"}, {"stop_sequences": ["END"]}),
    ("stop list", {"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
    ("empty stop", {"stop": []}, {}),
    ("temperature in range", {"temperature": 0.3}, {"temperature": 0.3}),
    ("temperature clamped", {"temperature": 1.7}, {"temperature": 1}),
    ("top_p", {"top_p": 0.9}, {"top_p": 0.9}),
    ("stream", {"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
    ("stream false omitted", {"stream": False}, {}),
    ("user -> metadata.user_id", {"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ("safety_identifier -> metadata.user_id", {"safety_identifier": "s-1"}, {"metadata": {"user_id": "s-1"}}),
    (
        "OpenAI-only fields dropped",
        {
            "n": 1,
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "logit_bias": {"50256": -100},
            "stream_options": {"include_usage": True},
            "store": True,
            "metadata": {"k": "v"},
            "service_tier": "auto",
            "reasoning_effort": "low",
            "prompt_cache_key": "k",
        },
        {},
    ),
    ("tool_choice without tools is dropped", {"tool_choice": "required"}, {}),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES])
def test_openai_params_to_anthropic(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_anthropic({"model": "gpt-4o", "messages": BASE, **extra})
    assert out == {"model": MODEL, "max_tokens": 1024, "messages": BASE, **expected}


TOOL_CHOICE_CASES: list[tuple[Any, bool | None, Any]] = [
    (None, None, None),
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    (
        {"type": "function", "function": {"name": "get_weather"}},
        None,
        {"type": "tool", "name": "get_weather"},
    ),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (
        {"type": "function", "function": {"name": "get_weather"}},
        False,
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ),
    ("none", False, {"type": "none"}),
    ("auto", True, {"type": "auto"}),
]


@pytest.mark.parametrize(("choice", "parallel", "expected"), TOOL_CHOICE_CASES)
def test_tools_and_tool_choice_to_anthropic(choice: Any, parallel: bool | None, expected: Any) -> None:
    body: dict[str, Any] = {"messages": BASE, "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = to_anthropic(body)
    assert out["tools"] == [ANTHROPIC_WEATHER_TOOL]
    assert out.get("tool_choice") == expected


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    tool = {"type": "function", "function": {"name": "ping"}, "cache_control": {"type": "ephemeral"}}
    out = to_anthropic({"messages": BASE, "tools": [tool]})
    assert out["tools"] == [
        {
            "name": "ping",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        }
    ]


@pytest.mark.parametrize(
    ("response_format", "system", "must_contain"),
    [
        ({"type": "text"}, None, None),
        ({"type": "json_object"}, "be terse", "valid JSON object"),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "required": ["a"]}},
            },
            None,
            '{"type":"object","required":["a"]}',
        ),
    ],
)
def test_response_format_is_a_best_effort_system_instruction(
    response_format: dict[str, Any], system: str | None, must_contain: str | None
) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + BASE
    out = to_anthropic({"messages": messages, "response_format": response_format})
    if must_contain is None:
        assert "system" not in out
        return
    assert must_contain in out["system"]
    if system:
        assert out["system"].startswith(system + "\n\n")


def test_response_format_appends_a_block_when_system_is_in_block_form() -> None:
    part = {"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}
    out = to_anthropic(
        {
            "messages": [{"role": "system", "content": [part]}, *BASE],
            "response_format": {"type": "json_object"},
        }
    )
    assert out["system"][0] == part
    assert out["system"][1]["type"] == "text"
    assert "JSON" in out["system"][1]["text"]


REQUEST_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("n > 1", {"messages": BASE, "n": 2}, "n"),
    ("no messages", {}, "messages"),
    ("only system", {"messages": [{"role": "system", "content": "s"}]}, "messages"),
    (
        "legacy function role",
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "messages[0].role",
    ),
    ("legacy functions", {"messages": BASE, "functions": [{"name": "f"}]}, "functions"),
    ("audio output", {"messages": BASE, "audio": {"voice": "alloy"}}, "audio"),
    (
        "audio input part",
        {"messages": [user([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}])]},
        "messages[0].content[0].type",
    ),
    (
        "non-base64 data URL",
        {"messages": [user([{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}])]},
        "messages[0].content[0].image_url.url",
    ),
    (
        "ftp image",
        {"messages": [user([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])]},
        "messages[0].content[0].image_url.url",
    ),
    (
        "uploaded file id",
        {"messages": [user([{"type": "file", "file": {"file_id": "file-1"}}])]},
        "messages[0].content[0].file",
    ),
    (
        "image in system",
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": PNG_URL}]}, *BASE]},
        "messages[0].content",
    ),
    (
        "tool call without id",
        {
            "messages": [
                *BASE,
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
            ]
        },
        "messages[1].tool_calls[0].id",
    ),
    (
        "tool message without tool_call_id",
        {"messages": [*BASE, {"role": "tool", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
    (
        "non-function tool",
        {"messages": BASE, "tools": [{"type": "custom", "custom": {"name": "x"}}]},
        "tools[0].type",
    ),
    ("unknown tool_choice", {"messages": BASE, "tools": [WEATHER_TOOL], "tool_choice": "any"}, "tool_choice"),
    ("zero max_tokens", {"messages": BASE, "max_tokens": 0}, "max_tokens"),
    (
        "string max_completion_tokens",
        {"messages": BASE, "max_completion_tokens": "9"},
        "max_completion_tokens",
    ),
    ("string temperature", {"messages": BASE, "temperature": "hot"}, "temperature"),
    ("bad stop", {"messages": BASE, "stop": [1]}, "stop"),
    (
        "unknown response_format",
        {"messages": BASE, "response_format": {"type": "xml"}},
        "response_format.type",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in REQUEST_ERRORS], ids=[c[0] for c in REQUEST_ERRORS]
)
def test_untranslatable_openai_requests_raise_with_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        to_anthropic(body)
    assert info.value.param == param
    assert info.value.message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("", {}),
        ("   ", {}),
        ("{broken", {}),
        ("[1, 2]", {}),
        ('"str"', {}),
        (None, {}),
        ({"already": "dict"}, {"already": "dict"}),
    ],
)
def test_parse_tool_arguments_is_object_safe(arguments: Any, expected: dict[str, Any]) -> None:
    assert parse_tool_arguments(arguments) == expected


# ---------------------------------------------------------------- Anthropic request -> OpenAI request


def to_openai(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return anthropic_messages_to_openai_request(body, "gpt-upstream", **kwargs)


REVERSE_MESSAGE_CASES: list[tuple[str, Any, list[dict[str, Any]], list[dict[str, Any]]]] = [
    ("string system", "be brief", [user("hi")], [{"role": "system", "content": "be brief"}, user("hi")]),
    (
        "block system joined, cache_control dropped",
        [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b"},
        ],
        [user("hi")],
        [{"role": "system", "content": "a\n\nb"}, user("hi")],
    ),
    (
        "images become image_url parts",
        None,
        [
            user(
                [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": PNG_SOURCE},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ]
            )
        ],
        [
            user(
                [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": PNG_URL}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                ]
            )
        ],
    ),
    (
        "tool_use -> tool_calls; tool_result -> tool messages before the user's text; thinking dropped",
        None,
        [
            user("weather?"),
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "checking"},
                    tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                    tool_use("toolu_2", "get_weather", {}),
                ],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                    {"type": "text", "text": "thanks"},
                ]
            ),
        ],
        [
            user("weather?"),
            {
                "role": "assistant",
                "content": "checking",
                "tool_calls": [
                    call("toolu_1", "get_weather", '{"city":"Paris"}'),
                    call("toolu_2", "get_weather", "{}"),
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "a\nb"},
            user("thanks"),
        ],
    ),
    (
        "images inside a tool_result spill into a following user message",
        None,
        [
            user(
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "shot"},
                            {"type": "image", "source": PNG_SOURCE},
                        ],
                    }
                ]
            )
        ],
        [
            {"role": "tool", "tool_call_id": "t1", "content": "shot"},
            user([{"type": "image_url", "image_url": {"url": PNG_URL}}]),
        ],
    ),
    (
        "assistant with only tool_use has null content; empty tool_result content is an empty string",
        None,
        [
            {"role": "assistant", "content": [tool_use("t1", "f", {"x": [1, 2]})]},
            user([{"type": "tool_result", "tool_use_id": "t1"}]),
        ],
        [
            {"role": "assistant", "content": None, "tool_calls": [call("t1", "f", '{"x":[1,2]}')]},
            {"role": "tool", "tool_call_id": "t1", "content": ""},
        ],
    ),
    (
        "pdf document -> file part",
        None,
        [
            user(
                [
                    {
                        "type": "document",
                        "title": "spec.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                    }
                ]
            )
        ],
        [
            user(
                [
                    {
                        "type": "file",
                        "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                    }
                ]
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("system", "messages", "expected"),
    [c[1:] for c in REVERSE_MESSAGE_CASES],
    ids=[c[0] for c in REVERSE_MESSAGE_CASES],
)
def test_anthropic_messages_to_openai(system: Any, messages: list[dict[str, Any]], expected: Any) -> None:
    body: dict[str, Any] = {"model": "claude", "max_tokens": 10, "messages": messages}
    if system is not None:
        body["system"] = system
    assert to_openai(body)["messages"] == expected


REVERSE_PARAM_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("max_tokens", {"max_tokens": 77}, {"max_tokens": 77}),
    ("stop_sequences", {"stop_sequences": ["a"]}, {"stop": ["a"]}),
    ("temperature and top_p", {"temperature": 0.2, "top_p": 0.8}, {"temperature": 0.2, "top_p": 0.8}),
    ("stream asks for usage", {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    ("metadata.user_id -> user", {"metadata": {"user_id": "u"}}, {"user": "u"}),
    (
        "Anthropic-only fields dropped",
        {"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        {},
    ),
]


@pytest.mark.parametrize(
    ("extra", "expected"), [c[1:] for c in REVERSE_PARAM_CASES], ids=[c[0] for c in REVERSE_PARAM_CASES]
)
def test_anthropic_params_to_openai(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_openai({"messages": BASE, **extra}) == {"model": "gpt-upstream", "messages": BASE, **expected}


def test_max_tokens_field_can_target_reasoning_models() -> None:
    out = to_openai({"messages": BASE, "max_tokens": 9}, max_tokens_field="max_completion_tokens")
    assert out["max_completion_tokens"] == 9
    assert "max_tokens" not in out


@pytest.mark.parametrize(
    ("choice", "expected_choice", "expected_parallel"),
    [
        (None, None, None),
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_tools_and_tool_choice_to_openai(choice: Any, expected_choice: Any, expected_parallel: Any) -> None:
    body: dict[str, Any] = {"messages": BASE, "tools": [ANTHROPIC_WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    out = to_openai(body)
    assert out["tools"] == [WEATHER_TOOL]
    assert out.get("tool_choice") == expected_choice
    assert out.get("parallel_tool_calls") == expected_parallel


REVERSE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("no messages", {"messages": []}, "messages"),
    ("system role inside messages", {"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    (
        "server tool",
        {"messages": BASE, "tools": [{"type": "web_search_20250305", "name": "web"}]},
        "tools[0].type",
    ),
    ("tool without name", {"messages": BASE, "tools": [{"input_schema": {}}]}, "tools[0].name"),
    (
        "bad tool_choice",
        {"messages": BASE, "tools": [ANTHROPIC_WEATHER_TOOL], "tool_choice": {"type": "x"}},
        "tool_choice.type",
    ),
    (
        "unknown block",
        {"messages": [user([{"type": "search_result", "source": "x"}])]},
        "messages[0].content[0].type",
    ),
    (
        "url document",
        {"messages": [user([{"type": "document", "source": {"type": "url", "url": "u"}}])]},
        "messages[0].content[0].source",
    ),
    (
        "image system block",
        {"system": [{"type": "image", "source": PNG_SOURCE}], "messages": BASE},
        "system[0]",
    ),
    ("bad max_tokens", {"messages": BASE, "max_tokens": -1}, "max_tokens"),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in REVERSE_ERRORS], ids=[c[0] for c in REVERSE_ERRORS]
)
def test_untranslatable_anthropic_requests_raise_with_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        to_openai(body)
    assert info.value.param == param


# ---------------------------------------------------------------- request round trips


OPENAI_CONVERSATION: dict[str, Any] = {
    "model": "gpt-upstream",
    "messages": [
        {"role": "system", "content": "be brief"},
        user(
            [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG_URL}}]
        ),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_1", "get_weather", '{"city":"Paris"}'),
                call("call_2", "get_weather", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        user("thanks"),
        {"role": "assistant", "content": "You're welcome"},
        user("bye"),
    ],
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "max_tokens": 100,
    "stop": ["STOP"],
    "temperature": 0.5,
    "top_p": 0.9,
    "user": "u-1",
}


def test_openai_request_round_trip_keeps_semantics() -> None:
    back = to_openai(to_anthropic(OPENAI_CONVERSATION))
    assert back == OPENAI_CONVERSATION


def test_openai_request_round_trip_streaming_adds_only_usage_option() -> None:
    back = to_openai(to_anthropic({**OPENAI_CONVERSATION, "stream": True}))
    assert back == {**OPENAI_CONVERSATION, "stream": True, "stream_options": {"include_usage": True}}


def test_anthropic_request_round_trip_keeps_semantics() -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1024,
        "system": "be brief",
        "messages": [
            user("weather?"),
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "ok"}, tool_use("t1", "get_weather", {"city": "Oslo"})],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                    {"type": "text", "text": "and?"},
                ]
            ),
        ],
        "tools": [ANTHROPIC_WEATHER_TOOL],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["x"],
        "temperature": 0.7,
        "metadata": {"user_id": "u"},
    }
    assert openai_chat_to_anthropic_request(to_openai(body), MODEL, 1) == body


# ---------------------------------------------------------------- whole responses


ANTHROPIC_USAGE = {
    "input_tokens": 10,
    "output_tokens": 20,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 50,
}
OPENAI_USAGE = {
    "prompt_tokens": 160,
    "completion_tokens": 20,
    "total_tokens": 180,
    "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 50},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "let me think", "signature": "sig"},
        {"type": "text", "text": "Paris is "},
        {"type": "text", "text": "sunny."},
        tool_use("toolu_1", "get_weather", {"city": "Paris", "units": ["c"]}),
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": ANTHROPIC_USAGE,
}


def test_anthropic_response_to_openai() -> None:
    out = anthropic_to_openai_chat_response(ANTHROPIC_MESSAGE, "alias", created=123)
    ChatCompletion.model_validate(out)
    assert out["id"] == "chatcmpl-msg_01"
    assert (out["object"], out["created"], out["model"]) == ("chat.completion", 123, "alias")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Paris is sunny."
    assert choice["message"]["reasoning_content"] == "let me think"
    assert choice["message"]["tool_calls"] == [
        call("toolu_1", "get_weather", '{"city":"Paris","units":["c"]}')
    ]
    assert out["usage"] == OPENAI_USAGE


def test_usage_normalization_counts_cache_inside_prompt_tokens() -> None:
    out = anthropic_to_openai_chat_response({"content": [], "usage": ANTHROPIC_USAGE}, "m")
    assert out["usage"]["prompt_tokens"] == 160
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
    assert out["usage"]["total_tokens"] == 180


def test_tool_only_anthropic_response_has_null_content() -> None:
    resp = {"content": [tool_use("t", "f", {})], "stop_reason": "tool_use"}
    message = anthropic_to_openai_chat_response(resp, "m")["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
        ("brand_new_reason", "stop"),
    ],
)
def test_anthropic_stop_reason_maps_to_finish_reason(stop_reason: Any, finish_reason: str) -> None:
    resp = {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    assert anthropic_to_openai_chat_response(resp, "m")["choices"][0]["finish_reason"] == finish_reason


OPENAI_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "refusal": None,
                "tool_calls": [
                    call("call_a", "get_weather", '{"city": "Rome"}'),
                    call("call_b", "get_weather", "{oops"),
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": OPENAI_USAGE,
}


def test_openai_response_to_anthropic() -> None:
    out = openai_chat_to_anthropic_response(OPENAI_COMPLETION, "alias")
    Message.model_validate(out)
    assert out["id"] == "msg_chatcmpl-9"
    assert (out["type"], out["role"], out["model"]) == ("message", "assistant", "alias")
    assert out["content"] == [
        {"type": "text", "text": "Checking."},
        tool_use("call_a", "get_weather", {"city": "Rome"}),
        tool_use("call_b", "get_weather", {}),
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == ANTHROPIC_USAGE


@pytest.mark.parametrize(
    ("finish_reason", "has_tools", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),  # OpenAI's forced named tool_choice reports "stop"
        ("length", True, "max_tokens"),
        (None, False, "end_turn"),
    ],
)
def test_openai_finish_reason_maps_to_stop_reason(
    finish_reason: Any, has_tools: bool, stop_reason: str
) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if has_tools:
        message["tool_calls"] = [call("c", "f", "{}")]
    resp = {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    assert openai_chat_to_anthropic_response(resp, "m")["stop_reason"] == stop_reason


def test_openai_response_without_choices_raises() -> None:
    with pytest.raises(TranslationError) as info:
        openai_chat_to_anthropic_response({"choices": []}, "m")
    assert info.value.param == "choices"


def test_response_round_trips() -> None:
    plain = {**ANTHROPIC_MESSAGE, "content": ANTHROPIC_MESSAGE["content"][1:]}  # thinking is one-way
    there = anthropic_to_openai_chat_response(plain, "claude-x")
    back = openai_chat_to_anthropic_response(there, "claude-x")
    assert back["content"] == [{"type": "text", "text": "Paris is sunny."}, plain["content"][2]]
    assert (back["stop_reason"], back["usage"]) == ("tool_use", ANTHROPIC_USAGE)

    again = anthropic_to_openai_chat_response(openai_chat_to_anthropic_response(OPENAI_COMPLETION, "m"), "m")
    assert again["usage"] == OPENAI_USAGE
    assert again["choices"][0]["finish_reason"] == "tool_calls"
    assert again["choices"][0]["message"]["tool_calls"][0] == call("call_a", "get_weather", '{"city":"Rome"}')


# ---------------------------------------------------------------- Anthropic stream -> OpenAI chunks


def anthropic_stream_events() -> list[tuple[str, dict[str, Any]]]:
    """A recorded-shape stream: text, then two tool calls with split argument JSON."""
    start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
    message = {**ANTHROPIC_MESSAGE, "content": [], "stop_reason": None, "usage": start_usage}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for text in ("Let me ", "check."):
        delta = {"type": "text_delta", "text": text}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    for index, (tool_id, pieces) in enumerate(
        [("toolu_a", ['{"city"', ': "Paris"}']), ("toolu_b", ["", '{"city": "Rome"}'])], 1
    ):
        block = tool_use(tool_id, "get_weather", {})
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        for piece in pieces:
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 20},
    }
    events += [("message_delta", message_delta), ("message_stop", {"type": "message_stop"})]
    return events


def run_anthropic_stream(include_usage: bool) -> tuple[AnthropicStreamToOpenAI, list[dict[str, Any]]]:
    translator = AnthropicStreamToOpenAI("alias", include_usage, created=5)
    chunks: list[dict[str, Any]] = []
    for event_type, data in anthropic_stream_events():
        chunks.extend(translator.feed(event_type, data))
    return translator, chunks


def test_anthropic_stream_to_openai_chunks_with_two_tools() -> None:
    translator, chunks = run_anthropic_stream(include_usage=True)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_01"}
    tool_deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert tool_deltas == [
        {
            "index": 0,
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"city"'}},
        {"index": 0, "function": {"arguments": ': "Paris"}'}},
        {
            "index": 1,
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 1, "function": {"arguments": '{"city": "Rome"}'}},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == OPENAI_USAGE
    assert all(c["usage"] is None for c in chunks[:-1])  # OpenAI's include_usage shape

    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me check."
    assert [(t.id, t.function.arguments) for t in message.tool_calls or []] == [
        ("toolu_a", '{"city": "Paris"}'),
        ("toolu_b", '{"city": "Rome"}'),
    ]
    assert translator.usage == Usage(
        input_tokens=160, cached_input_tokens=100, cache_creation_input_tokens=50, output_tokens=20
    )
    assert translator.finish_reason == "tool_calls"


def test_anthropic_stream_without_include_usage_sends_no_usage_chunk_but_tracks_usage() -> None:
    translator, chunks = run_anthropic_stream(include_usage=False)
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert translator.usage is not None
    assert translator.usage.output_tokens == 20


def test_anthropic_stream_usage_before_start_is_none_and_ping_is_silent() -> None:
    translator = AnthropicStreamToOpenAI("m", include_usage=True)
    assert translator.usage is None
    assert translator.feed("ping", {"type": "ping"}) == []
    assert translator.feed("some_future_event", {}) == []


def test_anthropic_stream_thinking_becomes_reasoning_content() -> None:
    translator = AnthropicStreamToOpenAI("m", include_usage=False)
    translator.feed(
        "message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3}}}
    )
    translator.feed(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    )
    delta = {"type": "thinking_delta", "thinking": "hmm"}
    chunks = translator.feed(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    )
    assert chunks[0]["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    signature = {"type": "signature_delta", "signature": "s"}
    assert (
        translator.feed(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": signature}
        )
        == []
    )


def test_anthropic_stream_error_event_raises() -> None:
    translator = AnthropicStreamToOpenAI("m", include_usage=True)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamStreamError) as info:
        translator.feed("error", error)
    assert (info.value.message, info.value.type) == ("Overloaded", "overloaded_error")


# ---------------------------------------------------------------- OpenAI chunks -> Anthropic stream


def openai_chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-7",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt",
        "choices": choices,
        **extra,
    }


def openai_tool_stream() -> list[dict[str, Any]]:
    return [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"content": "Let me "}),
        openai_chunk({"content": "check."}),
        openai_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Paris"}'}}]}),
        openai_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":'},
                    }
                ]
            }
        ),
        openai_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"Rome"}'}}]}),
        openai_chunk({}, "tool_calls"),
        openai_chunk(None, usage=OPENAI_USAGE),
    ]


def accumulate(events: list[tuple[str, dict[str, Any]]]) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event_type, data in events:
        assert data["type"] == event_type
        event = EVENT_ADAPTER.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


def test_openai_stream_to_anthropic_events_with_two_tools() -> None:
    translator = OpenAIStreamToAnthropic("alias")
    events: list[tuple[str, dict[str, Any]]] = []
    for chunk in openai_tool_stream():
        events.extend(translator.feed(chunk))
    assert translator.finish() == []  # the usage chunk already closed the message
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    starts = [data for name, data in events if name == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
    ]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 0
    assert events[0][1]["message"]["id"] == "msg_chatcmpl-7"

    message = accumulate(events)
    assert message.model == "alias"
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Let me check."
    assert [(b.id, b.input) for b in message.content[1:]] == [
        ("call_a", {"city": "Paris"}),
        ("call_b", {"city": "Rome"}),
    ]
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (10, 100, 20)
    assert translator.usage == Usage(
        input_tokens=160, cached_input_tokens=100, cache_creation_input_tokens=50, output_tokens=20
    )


def test_openai_stream_holds_message_delta_until_usage_or_finish() -> None:
    translator = OpenAIStreamToAnthropic("m")
    translator.feed(openai_chunk({"content": "hi"}))
    held = translator.feed(openai_chunk({}, "stop"))
    assert [name for name, _ in held] == ["content_block_stop"]
    fallback = Usage(input_tokens=4, output_tokens=2, estimated=True)
    tail = translator.finish(fallback)
    assert [name for name, _ in tail] == ["message_delta", "message_stop"]
    assert tail[0][1]["delta"]["stop_reason"] == "end_turn"
    assert tail[0][1]["usage"] == {
        "input_tokens": 4,
        "output_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert translator.usage == fallback
    assert translator.finish() == []
    assert translator.feed(openai_chunk(None, usage=OPENAI_USAGE)) == []


def test_openai_stream_text_after_tool_opens_a_new_block_and_forced_tool_stop_is_tool_use() -> None:
    translator = OpenAIStreamToAnthropic("m")
    events = translator.feed(
        openai_chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]})
    )
    events += translator.feed(openai_chunk({"content": "done"}, "stop"))
    events += translator.finish()
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    message = accumulate(events)
    assert message.stop_reason == "tool_use"


def test_openai_stream_finish_on_empty_or_truncated_stream_is_well_formed() -> None:
    events = OpenAIStreamToAnthropic("m").finish()
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    accumulate(events)

    translator = OpenAIStreamToAnthropic("m")
    events = translator.feed(openai_chunk({"content": "partial"})) + translator.finish()
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert accumulate(events).stop_reason is None


def test_openai_stream_usage_in_the_finish_chunk_closes_immediately() -> None:
    translator = OpenAIStreamToAnthropic("m")
    events = translator.feed(openai_chunk({"content": "x"}, "length", usage=OPENAI_USAGE))
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_openai_stream_error_chunk_raises() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        OpenAIStreamToAnthropic("m").feed({"error": {"message": "boom", "type": "server_error"}})
    assert (info.value.message, info.value.type) == ("boom", "server_error")


def test_stream_round_trip_anthropic_to_openai_to_anthropic() -> None:
    original = accumulate([(name, data) for name, data in anthropic_stream_events() if name != "ping"])
    there = AnthropicStreamToOpenAI("claude-x", include_usage=True)
    back = OpenAIStreamToAnthropic("claude-x")
    events: list[tuple[str, dict[str, Any]]] = []
    for event_type, data in anthropic_stream_events():
        for chunk in there.feed(event_type, data):
            events.extend(back.feed(jsonutil.loads(jsonutil.dumps(chunk))))
    events.extend(back.finish())
    result = accumulate(events)
    assert result.content == original.content
    assert (result.stop_reason, result.usage) == (original.stop_reason, original.usage)


# ---------------------------------------------------------------- SSE framing


SSE_CASES: list[tuple[str, bytes, list[tuple[str | None, bytes]], bytes]] = [
    ("openai data lines", b"data: {}\n\ndata: [DONE]\n\n", [(None, b"{}"), (None, b"[DONE]")], b""),
    (
        "anthropic named events",
        b'event: ping\ndata: {"type":"ping"}\n\n',
        [("ping", b'{"type":"ping"}')],
        b"",
    ),
    ("crlf", b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n", [("a", b"1"), (None, b"2")], b""),
    ("multi-line data", b"data: a\ndata: b\ndata:c\n\n", [(None, b"a\nb\nc")], b""),
    (
        "comments and unknown fields ignored",
        b": keepalive\n\nid: 1\nretry: 5\ndata: x\n\n",
        [(None, b"x")],
        b"",
    ),
    ("block without data is not an event", b"event: lonely\n\n", [], b""),
    ("incomplete tail kept", b"data: 1\n\ndata: 2\n", [(None, b"1")], b"data: 2\n"),
    ("trailing CR held back", b"data: 1\r", [], b"data: 1\r"),
    ("lone CR line ends", b"data: 1\r\rdata: 2\r\rx", [(None, b"1"), (None, b"2")], b"x"),
    ("empty data line", b"data:\n\n", [(None, b"")], b""),
]


@pytest.mark.parametrize(("raw", "events", "rest"), [c[1:] for c in SSE_CASES], ids=[c[0] for c in SSE_CASES])
def test_parse_sse_events(raw: bytes, events: list[tuple[str | None, bytes]], rest: bytes) -> None:
    assert parse_sse_events(raw) == (events, rest)


def parse_in_chunks(raw: bytes, cuts: list[int]) -> tuple[list[tuple[str | None, bytes]], bytes]:
    events: list[tuple[str | None, bytes]] = []
    buffer = b""
    previous = 0
    for cut in [*sorted(cuts), len(raw)]:
        parsed, buffer = parse_sse_events(buffer + raw[previous:cut])
        events.extend(parsed)
        previous = cut
    return events, buffer


SSE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
SSE_EVENT = st.tuples(
    st.one_of(st.none(), st.sampled_from(["message_start", "ping", "x"])),
    st.lists(SSE_TEXT, min_size=1, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(SSE_EVENT, max_size=6), comments=st.booleans(), data=st.data())
def test_parse_sse_events_is_independent_of_chunking(
    events: list[tuple[str | None, list[str]]], comments: bool, data: st.DataObject
) -> None:
    newline = st.sampled_from([b"\n", b"\r\n"])  # mixed per line, as a proxy might re-frame
    raw = b""
    for name, lines in events:
        if comments:
            raw += b": comment" + data.draw(newline)
        if name is not None:
            raw += b"event: " + name.encode() + data.draw(newline)
        raw += b"".join(b"data: " + line.encode() + data.draw(newline) for line in lines) + data.draw(newline)
    expected = [(name, "\n".join(lines).encode()) for name, lines in events]
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert parse_sse_events(raw) == (expected, b"")
    assert parse_in_chunks(raw, cuts) == (expected, b"")


def test_sse_formatters_round_trip_through_the_parser() -> None:
    chunk = {"id": "c", "choices": [{"delta": {"content": "hé\nllo"}}]}
    framed = (
        format_openai_sse(chunk)
        + format_anthropic_sse("message_stop", {"type": "message_stop"})
        + OPENAI_SSE_DONE
    )
    assert framed.startswith(b"data: {")
    events, rest = parse_sse_events(framed)
    assert rest == b""
    assert [(name, jsonutil.loads(body) if body != b"[DONE]" else body) for name, body in events] == [
        (None, chunk),
        ("message_stop", {"type": "message_stop"}),
        (None, b"[DONE]"),
    ]


def test_translators_do_not_mutate_their_input() -> None:
    body = copy.deepcopy(OPENAI_CONVERSATION)
    to_anthropic(body)
    assert body == OPENAI_CONVERSATION
    message = copy.deepcopy(ANTHROPIC_MESSAGE)
    anthropic_to_openai_chat_response(message, "m")
    assert message == ANTHROPIC_MESSAGE
