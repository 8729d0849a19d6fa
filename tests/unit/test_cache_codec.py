"""Response-cache codec (gateway.cache_codec): entry encoding, and replay of either entry kind in either mode.

Replayed bodies and streams are checked against the official SDKs' models and stream accumulators, so a
shape the real clients cannot parse fails here.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageFunctionToolCall
from pydantic import TypeAdapter

from gateway.cache_codec import (
    MAGIC,
    CacheEntry,
    decode_entry,
    encode_entry,
    is_openai_usage_chunk,
    replay_body,
    replay_stream,
)
from gateway.metering.usage import Usage, to_anthropic, to_openai
from gateway.providers.translate_stream import OPENAI_SSE_DONE, parse_sse_events

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
USAGE = Usage(input_tokens=120, cached_input_tokens=100, output_tokens=30, reasoning_tokens=4)
ANTHROPIC_USAGE = Usage(
    input_tokens=160, cached_input_tokens=100, cache_creation_input_tokens=50, output_tokens=42
)
CHUNK_HEAD = {
    "id": "chatcmpl-abc",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_123",
}


# ---------------------------------------------------------------- helpers


def sse(data: dict[str, Any]) -> bytes:
    """Stdlib json (spaces after separators) so byte-for-byte replay cannot come from re-serialization."""
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def anthropic_sse(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def decode_events(events: list[bytes]) -> list[tuple[str | None, Any]]:
    parsed, rest = parse_sse_events(b"".join(events))
    assert rest == b""
    return [(name, data if data == b"[DONE]" else orjson.loads(data)) for name, data in parsed]


def chat_chunk(delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**CHUNK_HEAD, "choices": [choice], "usage": None}


def chat_stream_events() -> list[bytes]:
    """A streamed chat answer with text and two parallel tool calls whose arguments arrive in pieces."""
    call_a = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    call_b = {
        "index": 1,
        "id": "call_b",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    chunks = [
        chat_chunk({"role": "assistant", "content": "", "refusal": None}),
        chat_chunk({"content": "Let me "}),
        chat_chunk({"content": "check the weather."}),
        chat_chunk({"tool_calls": [call_a]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_chunk({"tool_calls": [call_b]}),
        chat_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}),
        chat_chunk({}, "tool_calls"),
    ]
    return [sse(chunk) for chunk in chunks]


def chat_stream_entry(events: list[bytes] | None = None, usage: Usage = USAGE) -> CacheEntry:
    return CacheEntry(
        kind="stream",
        wire="openai",
        operation="chat",
        events=chat_stream_events() if events is None else events,
        usage=usage.as_dict(),
        served_model="gpt-4o",
        created_ms=1_700_000_000_123,
        cost_nano=1234,
    )


def chat_body() -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": "Sure thing.  Here is   a fairly long answer\nwith newlines, tabs\tand ünïcödé text 🚀!",
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": '{"tz": "CET"}'}},
        ],
    }
    return {
        "id": "chatcmpl-body",
        "object": "chat.completion",
        "created": 1_700_000_111,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_body",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": to_openai(USAGE),
    }


def body_entry(
    body: dict[str, Any], wire: str = "openai", operation: str = "chat", usage: Usage = USAGE
) -> CacheEntry:
    return CacheEntry(
        kind="body",
        wire=wire,  # type: ignore[arg-type]
        operation=operation,
        body=orjson.dumps(body),
        usage=usage.as_dict(),
        served_model="served",
        created_ms=1_700_000_000_000,
    )


def stream_entry_from_replay(entry: CacheEntry, events: list[bytes]) -> CacheEntry:
    """What the cache would store had the client received ``events``: no usage chunk, no [DONE]."""
    kept = [
        event
        for event in events
        if event != OPENAI_SSE_DONE
        and not is_openai_usage_chunk(orjson.loads(parse_sse_events(event)[0][0][1]))
    ]
    return CacheEntry(
        kind="stream", wire=entry.wire, operation=entry.operation, events=kept, usage=entry.usage
    )


def body_tool_calls(completion: ChatCompletion) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = completion.choices[0].message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def accumulate_anthropic(events: list[bytes]) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, data in decode_events(events):
        assert data["type"] == name
        event = EVENT_ADAPTER.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


# ---------------------------------------------------------------- OpenAI chat


def test_openai_stream_entry_replays_stored_events_byte_for_byte_without_usage() -> None:
    entry = chat_stream_entry()
    assert replay_stream(entry, include_usage=False) == [*entry.events, OPENAI_SSE_DONE]


def test_openai_stream_entry_with_include_usage_inserts_usage_chunk_before_done() -> None:
    entry = chat_stream_entry()
    out = replay_stream(entry, include_usage=True, request_id="ignored-because-chunks-have-an-id")
    assert out[: len(entry.events)] == entry.events
    assert out[-1] == OPENAI_SSE_DONE
    assert len(out) == len(entry.events) + 2
    [(_, usage_chunk)] = decode_events([out[-2]])
    assert usage_chunk == {**CHUNK_HEAD, "choices": [], "usage": to_openai(USAGE)}
    assert is_openai_usage_chunk(usage_chunk)
    ChatCompletionChunk.model_validate(usage_chunk)


def test_openai_stream_entry_assembles_into_a_chat_completion_body() -> None:
    body = orjson.loads(replay_body(chat_stream_entry()))
    completion = ChatCompletion.model_validate(body)
    assert (completion.id, completion.created, completion.model) == (
        "chatcmpl-abc",
        1_700_000_000,
        "gpt-4o-2024-08-06",
    )
    assert completion.object == "chat.completion"
    assert completion.system_fingerprint == "fp_123"
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Let me check the weather."
    calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in body_tool_calls(completion)]
    assert calls == [
        ("call_a", "function", "weather", '{"city": "Paris"}'),
        ("call_b", "function", "weather", '{"city": "Rome"}'),
    ]
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"] == to_openai(USAGE)


def test_tool_only_stream_assembles_with_null_content() -> None:
    events = [sse(chat_chunk({"role": "assistant", "content": None})), *chat_stream_events()[3:]]
    message = orjson.loads(replay_body(chat_stream_entry(events)))["choices"][0]["message"]
    assert message["content"] is None
    assert len(message["tool_calls"]) == 2


def test_openai_body_entry_synthesizes_a_stream_the_sdk_accumulates() -> None:
    source = chat_body()
    entry = body_entry(source)
    out = replay_stream(entry, include_usage=True)
    assert out[-1] == OPENAI_SSE_DONE
    chunks = [data for _, data in decode_events(out[:-1])]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) > 3  # split up
    assert all(c["usage"] is None for c in chunks[:-1])  # OpenAI's include_usage shape
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == to_openai(USAGE)
    for chunk in chunks:
        for field in ("id", "created", "model", "system_fingerprint"):
            assert chunk[field] == source[field]
        assert chunk["object"] == "chat.completion.chunk"

    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert message.content == source["choices"][0]["message"]["content"]
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(t.id, t.function.name, t.function.arguments) for t in message.tool_calls or []] == [
        ("call_1", "weather", '{"city": "Paris"}'),
        ("call_2", "time", '{"tz": "CET"}'),
    ]


def test_openai_body_entry_stream_assembles_back_to_the_same_answer() -> None:
    source = chat_body()
    entry = body_entry(source)
    events = replay_stream(entry, include_usage=False)
    assert all(b'"usage"' not in event for event in events)
    rebuilt = orjson.loads(replay_body(stream_entry_from_replay(entry, events)))
    ChatCompletion.model_validate(rebuilt)
    assert rebuilt["choices"][0]["message"]["content"] == source["choices"][0]["message"]["content"]
    assert rebuilt["choices"][0]["message"]["tool_calls"] == source["choices"][0]["message"]["tool_calls"]
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"
    assert {k: rebuilt[k] for k in ("id", "created", "model", "system_fingerprint")} == {
        k: source[k] for k in ("id", "created", "model", "system_fingerprint")
    }


def test_multiple_choices_replay_per_index() -> None:
    source = chat_body()
    second = {"role": "assistant", "content": "Second answer.", "refusal": None}
    source["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "First."},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {"index": 1, "message": second, "logprobs": None, "finish_reason": "length"},
    ]
    entry = body_entry(source)
    rebuilt = orjson.loads(replay_body(stream_entry_from_replay(entry, replay_stream(entry, False))))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in rebuilt["choices"]] == [
        (0, "First.", "stop"),
        (1, "Second answer.", "length"),
    ]


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_synthesized_stream_content_concatenates_exactly(text: str) -> None:
    source = chat_body()
    source["choices"][0]["message"] = {"role": "assistant", "content": text}
    entry = body_entry(source)
    rebuilt = orjson.loads(replay_body(stream_entry_from_replay(entry, replay_stream(entry, False))))
    assert rebuilt["choices"][0]["message"]["content"] == (text or None)


def test_openai_body_without_id_takes_the_request_id() -> None:
    source = chat_body()
    del source["id"]
    chunks = [
        data for _, data in decode_events(replay_stream(body_entry(source), True, request_id="req42")[:-1])
    ]
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-req42"}


def test_body_entry_replays_its_body_verbatim() -> None:
    raw = b'{"id": "chatcmpl-x",  "choices": []}'
    entry = CacheEntry(kind="body", wire="openai", operation="chat", body=raw)
    assert replay_body(entry) is raw


def test_is_openai_usage_chunk() -> None:
    assert is_openai_usage_chunk({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not is_openai_usage_chunk({"choices": [], "prompt_filter_results": []})  # Azure's first chunk
    assert not is_openai_usage_chunk(chat_chunk({"content": "x"}))
    assert not is_openai_usage_chunk({**chat_chunk({}, "stop"), "usage": {"prompt_tokens": 1}})


# ---------------------------------------------------------------- OpenAI text completions


def completion_chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [choice],
    }


def test_text_completion_stream_entry_replays_and_assembles() -> None:
    events = [
        sse(completion_chunk("Once upon")),
        sse(completion_chunk(" a time")),
        sse(completion_chunk("", "length")),
    ]
    entry = CacheEntry(
        kind="stream", wire="openai", operation="text_completion", events=events, usage=USAGE.as_dict()
    )
    out = replay_stream(entry, include_usage=True)
    assert out[:3] == events and out[-1] == OPENAI_SSE_DONE
    [(_, usage_chunk)] = decode_events([out[3]])
    assert usage_chunk["object"] == "text_completion" and usage_chunk["id"] == "cmpl-1"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == to_openai(USAGE)

    body = orjson.loads(replay_body(entry))
    completion = Completion.model_validate(body)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Once upon a time"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.prompt_tokens == 120


def test_text_completion_body_entry_streams_and_assembles_back() -> None:
    source = {
        "id": "cmpl-2",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {
                "index": 0,
                "text": "The quick brown fox jumps over the lazy dog.",
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": to_openai(USAGE),
    }
    entry = body_entry(source, operation="text_completion")
    out = replay_stream(entry, include_usage=False)
    chunks = [data for _, data in decode_events(out[:-1])]
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-2" for c in chunks)
    assert len(chunks) > 2
    rebuilt = Completion.model_validate(orjson.loads(replay_body(stream_entry_from_replay(entry, out))))
    assert rebuilt.choices[0].text == source["choices"][0]["text"]  # type: ignore[index]
    assert rebuilt.choices[0].finish_reason == "stop"


def test_embeddings_have_no_stream_mode() -> None:
    entry = body_entry({"object": "list", "data": [], "model": "e"}, operation="embeddings")
    with pytest.raises(ValueError, match="embeddings"):
        replay_stream(entry, include_usage=False)
    assert replay_body(entry) == entry.body


# ---------------------------------------------------------------- Anthropic


def anthropic_stream_events() -> list[bytes]:
    start_usage = {**to_anthropic(ANTHROPIC_USAGE), "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    tool = {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "ping"},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "User wants "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "weather."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig=="},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking "}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "now."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": tool},
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": 'ris", "days": 2}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        },
        {"type": "message_stop"},
    ]
    return [anthropic_sse(event) for event in events]


def anthropic_body() -> dict[str, Any]:
    return {
        "id": "msg_body",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Let me think about this carefully.", "signature": "c2ln"},
            {"type": "text", "text": "I will look up the weather in Paris for you, one moment please."},
            {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "weather",
                "input": {"city": "Paris", "units": ["C", "F"]},
            },
            {"type": "tool_use", "id": "toolu_10", "name": "now", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": to_anthropic(ANTHROPIC_USAGE),
    }


def anthropic_stream_entry() -> CacheEntry:
    return CacheEntry(
        kind="stream",
        wire="anthropic",
        operation="chat",
        events=anthropic_stream_events(),
        usage=ANTHROPIC_USAGE.as_dict(),
    )


@pytest.mark.parametrize("include_usage", [False, True])
def test_anthropic_stream_entry_replays_as_stored(include_usage: bool) -> None:
    entry = anthropic_stream_entry()
    assert replay_stream(entry, include_usage=include_usage) == entry.events


def test_anthropic_stream_entry_assembles_into_a_message() -> None:
    body = orjson.loads(replay_body(anthropic_stream_entry()))
    message = Message.model_validate(body)
    assert (message.id, message.model, message.role) == ("msg_01", "claude-sonnet-4-5", "assistant")
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert body["content"] == [
        {"type": "thinking", "thinking": "User wants weather.", "signature": "sig=="},
        {"type": "text", "text": "Checking now."},
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Paris", "days": 2}},
    ]
    assert body["usage"] == to_anthropic(ANTHROPIC_USAGE)
    assert message.usage.input_tokens == 10 and message.usage.cache_read_input_tokens == 100


def test_anthropic_body_entry_synthesizes_a_stream_the_sdk_accumulates() -> None:
    source = anthropic_body()
    entry = body_entry(source, wire="anthropic", usage=ANTHROPIC_USAGE)
    events = replay_stream(entry, include_usage=True)
    assert OPENAI_SSE_DONE not in events
    names = [name for name, _ in decode_events(events)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 4
    snapshot = accumulate_anthropic(events)
    assert snapshot.id == "msg_body" and snapshot.stop_reason == "tool_use"
    assert [block.to_dict() for block in snapshot.content] == source["content"]
    assert snapshot.usage.output_tokens == 42
    assert snapshot.usage.input_tokens == to_anthropic(ANTHROPIC_USAGE)["input_tokens"]


def test_anthropic_body_entry_stream_assembles_back_to_the_same_message() -> None:
    source = anthropic_body()
    entry = body_entry(source, wire="anthropic", usage=ANTHROPIC_USAGE)
    rebuilt = orjson.loads(replay_body(stream_entry_from_replay(entry, replay_stream(entry, False))))
    Message.model_validate(rebuilt)
    assert rebuilt == source


def test_anthropic_passthrough_blocks_replay_whole() -> None:
    source = anthropic_body()
    source["content"] = [{"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "Hi"}]
    source["stop_reason"] = "end_turn"
    entry = body_entry(source, wire="anthropic", usage=ANTHROPIC_USAGE)
    rebuilt = orjson.loads(replay_body(stream_entry_from_replay(entry, replay_stream(entry, False))))
    assert rebuilt["content"] == source["content"]


# ---------------------------------------------------------------- encoding


def test_encode_decode_round_trip_raw_and_compressed() -> None:
    entry = chat_stream_entry()
    raw = encode_entry(entry, compress_min_bytes=10**9)
    packed = encode_entry(entry, compress_min_bytes=0)
    assert raw[:4] == MAGIC == packed[:4]
    assert raw[4] == 0 and packed[4] == 1
    assert len(packed) < len(raw)
    assert orjson.loads(zlib.decompress(packed[5:])) == orjson.loads(raw[5:])
    assert decode_entry(raw) == entry
    assert decode_entry(packed) == entry
    body = body_entry(chat_body())
    assert decode_entry(encode_entry(body, 64)) == body


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=2048),
    events=st.lists(st.binary(max_size=512), max_size=8),
    kind=st.sampled_from(["body", "stream"]),
    wire=st.sampled_from(["openai", "anthropic"]),
    threshold=st.sampled_from([0, 64, 10**9]),
    cost=st.integers(min_value=0, max_value=2**62),
)
def test_random_bytes_round_trip_exactly(
    body: bytes, events: list[bytes], kind: str, wire: str, threshold: int, cost: int
) -> None:
    entry = CacheEntry(
        kind=kind,  # type: ignore[arg-type]
        wire=wire,  # type: ignore[arg-type]
        operation="chat",
        body=body,
        events=events,
        usage=USAGE.as_dict(),
        served_model="m\u00e9\U0001f680",
        created_ms=1_700_000_000_000,
        cost_nano=cost,
    )
    decoded = decode_entry(encode_entry(entry, threshold))
    assert decoded == entry
    assert decoded.body == body and decoded.events == events


def valid_fields() -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(encode_entry(chat_stream_entry(), 10**9)[5:])
    return fields


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GWC",
        b"GWC1",
        b"GWC2\x00{}",
        b"XXXX\x00" + orjson.dumps(valid_fields()),
        b"GWC1\x07" + orjson.dumps(valid_fields()),
        b"GWC1\x01not zlib at all",
        b"GWC1\x00not json",
        b"GWC1\x00[1, 2]",
        b"GWC1\x00{}",
        b"GWC1\x01" + zlib.compress(b"\xff\xfe"),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "kind": "nope"}),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "wire": "gemini"}),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "events": [1]}),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "events": "x"}),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "body": "\u0100"}),  # not a latin-1 code point
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "cost_nano": 1.5}),
        b"GWC1\x00" + orjson.dumps({**valid_fields(), "created_ms": True}),
        b"GWC1\x00" + orjson.dumps({k: v for k, v in valid_fields().items() if k != "usage"}),
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_decode_random_bytes_only_raises_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_entry(data)
