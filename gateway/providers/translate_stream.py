"""Streaming OpenAI <-> Anthropic translation and the SSE framing both wire formats use.

The translators are small state machines fed one parsed event at a time; they never buffer the stream,
so the first token reaches the client as soon as the upstream sends it.
"""

from __future__ import annotations

import time
from typing import Any

from gateway import jsonutil
from gateway.metering.usage import Usage, from_anthropic, from_openai, to_anthropic, to_openai
from gateway.providers.translate_request import (
    JSONDict,
    anthropic_message_id,
    anthropic_tool_id,
    as_dict,
    finish_reason_from_anthropic,
    openai_completion_id,
    stop_reason_from_openai,
)

SSEEvent = tuple[str | None, bytes]
AnthropicEvent = tuple[str, JSONDict]

OPENAI_SSE_DONE = b"data: [DONE]\n\n"


class UpstreamStreamError(Exception):
    """The upstream reported an error mid-stream; the caller turns it into its client's error event."""

    def __init__(self, message: str, type: str = "api_error") -> None:
        super().__init__(message)
        self.message = message
        self.type = type


def _stream_error(error: Any) -> UpstreamStreamError:
    """Both formats nest the details under ``error``: {"error": {"type"/"code", "message"}}."""
    details = error if isinstance(error, dict) else {"message": str(error)}
    kind = details.get("type") or details.get("code") or "api_error"
    return UpstreamStreamError(str(details.get("message") or "upstream stream error"), str(kind))


# ---------------------------------------------------------------- SSE framing


def parse_sse_events(buffer: bytes) -> tuple[list[SSEEvent], bytes]:
    """Split accumulated bytes into complete SSE events; returns (events, unconsumed remainder).

    Events are ``(event name or None, data)``, multi-line data joined with ``\\n``; comments and blocks
    without data are skipped (as the SSE spec says). CRLF and lone CR line ends are normalized to LF, and a
    trailing CR is held back because the next chunk may start with its LF. Feed ``remainder + new bytes``.
    """
    held = b""
    if b"\r" in buffer:
        if buffer.endswith(b"\r"):
            buffer, held = buffer[:-1], b"\r"
        buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    events: list[SSEEvent] = []
    start = 0
    end = buffer.find(b"\n\n")
    while end != -1:
        event = _parse_sse_block(buffer[start:end])
        if event is not None:
            events.append(event)
        start = end + 2
        end = buffer.find(b"\n\n", start)
    return events, buffer[start:] + held


def _parse_sse_block(block: bytes) -> SSEEvent | None:
    # Fast paths for the two shapes real upstreams send: OpenAI's lone data line, Anthropic's event+data.
    if block.startswith(b"data: ") and b"\n" not in block:
        return None, block[6:]
    if block.startswith(b"event: "):
        newline = block.find(b"\n")
        if block.startswith(b"data: ", newline + 1) and block.find(b"\n", newline + 1) == -1:
            return block[7:newline].decode("utf-8", "replace") or None, block[newline + 7 :]
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace") or None
    if not data:
        return None
    return name, data[0] if len(data) == 1 else b"\n".join(data)


def format_openai_sse(chunk: JSONDict) -> bytes:
    return b"data: " + jsonutil.dumps(chunk) + b"\n\n"


def format_anthropic_sse(event: str, data: JSONDict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + jsonutil.dumps(data) + b"\n\n"


# ---------------------------------------------------------------- Anthropic stream -> OpenAI chunks


class AnthropicStreamToOpenAI:
    """Feeds Anthropic stream events, returns OpenAI ``chat.completion.chunk`` dicts.

    Thinking deltas become ``reasoning_content`` deltas, matching the non-streamed translation.
    """

    def __init__(self, model: str, include_usage: bool, *, created: int | None = None) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = created if created is not None else int(time.time())
        self._id = openai_completion_id(None)
        self._started = False
        self._tool_index: dict[Any, int] = {}  # Anthropic content block index -> OpenAI tool_calls index
        self._raw_usage: JSONDict | None = None
        self.finish_reason: str | None = None

    @property
    def usage(self) -> Usage | None:
        """Normalized usage so far (input from message_start, cumulative output from message_delta)."""
        return from_anthropic(self._raw_usage)

    def feed(self, event_type: str, data: JSONDict) -> list[JSONDict]:
        kind = event_type or data.get("type")
        if kind == "content_block_delta":  # the hot path, checked first
            return self._on_block_delta(data)
        if kind == "content_block_start":
            return self._on_block_start(data)
        if kind == "message_start":
            return self._on_message_start(data)
        if kind == "message_delta":
            return self._on_message_delta(data)
        if kind == "message_stop":
            return [self._usage_chunk()] if self._include_usage else []
        if kind == "error":
            raise _stream_error(data.get("error"))
        return []  # ping, content_block_stop, and event types added after this was written

    def _chunk(self, delta: JSONDict, finish_reason: str | None = None) -> JSONDict:
        chunk: JSONDict = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self._include_usage:  # OpenAI sends usage: null on every chunk but the last when asked
            chunk["usage"] = None
        return chunk

    def _usage_chunk(self) -> JSONDict:
        usage = to_openai(self.usage or Usage())
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": usage,
        }

    def _start(self) -> list[JSONDict]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _merge_usage(self, usage: Any) -> None:
        """Anthropic's streamed counts are cumulative, so later values replace earlier ones."""
        if isinstance(usage, dict):
            merged = dict(self._raw_usage or {})
            merged.update((key, value) for key, value in usage.items() if value is not None)
            self._raw_usage = merged

    def _on_message_start(self, data: JSONDict) -> list[JSONDict]:
        message = data.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("id"), str):
                self._id = openai_completion_id(message["id"])
            self._merge_usage(message.get("usage"))
        return self._start()

    def _on_block_start(self, data: JSONDict) -> list[JSONDict]:
        out = self._start()
        block = as_dict(data.get("content_block"))
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            out.append(self._chunk({"content": block["text"]}))
        elif kind == "thinking" and block.get("thinking"):
            out.append(self._chunk({"reasoning_content": block["thinking"]}))
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[data.get("index")] = index
            arguments = jsonutil.dumps_str(block["input"]) if block.get("input") else ""
            function = {"name": block.get("name"), "arguments": arguments}
            call = {"index": index, "id": block.get("id"), "type": "function", "function": function}
            out.append(self._chunk({"tool_calls": [call]}))
        return out

    def _on_block_delta(self, data: JSONDict) -> list[JSONDict]:
        delta = as_dict(data.get("delta"))
        kind = delta.get("type")
        chunk: JSONDict | None = None
        if kind == "text_delta" and delta.get("text"):
            chunk = self._chunk({"content": delta["text"]})
        elif kind == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_index.get(data.get("index"))
            if index is not None:
                call = {"index": index, "function": {"arguments": delta["partial_json"]}}
                chunk = self._chunk({"tool_calls": [call]})
        elif kind == "thinking_delta" and delta.get("thinking"):
            chunk = self._chunk({"reasoning_content": delta["thinking"]})
        if chunk is None:
            return []
        return [chunk] if self._started else [*self._start(), chunk]

    def _on_message_delta(self, data: JSONDict) -> list[JSONDict]:
        self._merge_usage(data.get("usage"))
        stop_reason = as_dict(data.get("delta")).get("stop_reason")
        if stop_reason is None:
            return []
        self.finish_reason = finish_reason_from_anthropic(stop_reason)
        return [*self._start(), self._chunk({}, self.finish_reason)]


# ---------------------------------------------------------------- OpenAI chunks -> Anthropic stream


class OpenAIStreamToAnthropic:
    """Feeds OpenAI ``chat.completion.chunk`` dicts, returns Anthropic ``(event type, data)`` pairs.

    Text is block 0 when it comes first; each tool call gets its own block, and the open block is closed
    before the next one starts. OpenAI reports usage in a later ``choices: []`` chunk, so message_delta
    waits for that chunk or for ``finish()``. If a server interleaves argument deltas of parallel tool calls,
    late deltas still name their own (already closed) block index, which the Anthropic SDKs accumulate.
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._done = False
        self._open: int | None = None  # index of the open content block
        self._open_is_text = False
        self._next_block = 0
        self._tool_blocks: dict[Any, int] = {}  # OpenAI tool_calls index -> Anthropic content block index
        self._stop_reason: str | None = None
        self._finished_choice = False
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def feed(self, chunk: JSONDict) -> list[AnthropicEvent]:
        if chunk.get("error") is not None:
            raise _stream_error(chunk["error"])
        if self._done:
            return []
        out = self._start(chunk)
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self._on_choice(choices[0], out)
        usage = from_openai(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
            if self._finished_choice:  # usage at or after finish_reason is the final count
                out.extend(self._end())
        return out

    def finish(self, usage: Usage | None = None) -> list[AnthropicEvent]:
        """End of upstream stream: emit what remains. ``usage`` is a fallback (e.g. estimated) used only
        if the upstream never reported any. stop_reason stays null if no finish_reason ever arrived."""
        if self._done:
            return []
        out = self._start({})
        self._close_open(out)
        if self._usage is None:
            self._usage = usage
        out.extend(self._end())
        return out

    def _start(self, chunk: JSONDict) -> list[AnthropicEvent]:
        if self._started:
            return []
        self._started = True
        self._usage = from_openai(chunk.get("usage"))
        message: JSONDict = {
            "id": anthropic_message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": to_anthropic(self._usage or Usage()),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _end(self) -> list[AnthropicEvent]:
        self._done = True
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason, "stop_sequence": None}}
        delta["usage"] = to_anthropic(self._usage or Usage())
        return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]

    def _on_choice(self, choice: JSONDict, out: list[AnthropicEvent]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                self._text(text, out)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    self._tool_call(call, out)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None and not self._finished_choice:
            self._finished_choice = True
            self._close_open(out)
            self._stop_reason = stop_reason_from_openai(finish_reason, bool(self._tool_blocks))

    def _text(self, text: str, out: list[AnthropicEvent]) -> None:
        if not self._open_is_text:
            self._open_block({"type": "text", "text": ""}, out)
            self._open_is_text = True
        delta = {"type": "text_delta", "text": text}
        out.append(
            ("content_block_delta", {"type": "content_block_delta", "index": self._open, "delta": delta})
        )

    def _tool_call(self, call: JSONDict, out: list[AnthropicEvent]) -> None:
        key = call.get("index", 0)
        function = as_dict(call.get("function"))
        block = self._tool_blocks.get(key)
        if block is None:
            tool_use: JSONDict = {
                "type": "tool_use",
                "id": anthropic_tool_id(call.get("id")),
                "name": function.get("name") or "",
                "input": {},
            }
            block = self._tool_blocks[key] = self._open_block(tool_use, out)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(
                ("content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta})
            )

    def _open_block(self, block: JSONDict, out: list[AnthropicEvent]) -> int:
        self._close_open(out)
        index = self._next_block
        self._next_block += 1
        self._open = index
        out.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        return index

    def _close_open(self, out: list[AnthropicEvent]) -> None:
        if self._open is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self._open}))
            self._open = None
            self._open_is_text = False
