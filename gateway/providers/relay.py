"""Relay an upstream answer to the client in the client's wire format, metering as it passes.

Usage is a by-product of relaying: each stream relay returns the bytes to write and keeps the
usage it saw, so a stream is metered chunk by chunk and never buffered. Same-format streams
are forwarded event by event as received (re-framed, not re-serialized); the final usage chunk
the gateway asked for is dropped for clients that did not ask for it themselves.
"""

from __future__ import annotations

import contextlib
from typing import Any

from gateway import jsonutil
from gateway.metering.usage import Usage, from_anthropic, from_openai
from gateway.providers.translate import (
    OPENAI_SSE_DONE,
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    UpstreamStreamError,
    anthropic_to_openai_chat_response,
    format_anthropic_sse,
    format_openai_sse,
    openai_chat_to_anthropic_response,
    parse_sse_events,
)


def convert_body(
    inbound: str, wire: str, raw: bytes, model: str
) -> tuple[bytes, dict[str, Any], Usage | None]:
    """(bytes for the client, the client-format dict, usage) of a non-streamed upstream body."""
    data = jsonutil.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("upstream body is not a JSON object")
    if wire == "openai":
        usage = from_openai(data.get("usage"))
        if inbound == "openai":
            return raw, data, usage
        out = openai_chat_to_anthropic_response(data, model)
    else:
        usage = from_anthropic(data.get("usage"))
        if inbound == "anthropic":
            return raw, data, usage
        out = anthropic_to_openai_chat_response(data, model)
    return jsonutil.dumps(out), out, usage


def error_event(inbound: str, message: str, kind: str = "api_error") -> bytes:
    """The in-band error that ends a broken stream, in the shape each SDK raises on."""
    if inbound == "anthropic":
        return format_anthropic_sse("error", {"type": "error", "error": {"type": kind, "message": message}})
    return format_openai_sse(
        {"error": {"message": message, "type": kind, "param": None, "code": "stream_error"}}
    )


class StreamRelay:
    """Base: SSE parsing, usage, completion state, and the delivered text (for cut-stream estimates)."""

    def __init__(self, client_wants_usage: bool, model: str) -> None:
        self.client_wants_usage = client_wants_usage
        self.model = model
        self.usage: Usage | None = None
        self.completed = False
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self._buffer = b""

    def delivered_text(self) -> str:
        """What the client received so far (content and tool arguments), for a cut stream's estimate."""
        return "".join(self.text)

    def feed(self, chunk: bytes) -> bytes:
        events, self._buffer = parse_sse_events(self._buffer + chunk)
        if not events:
            return b""
        return b"".join(self.on_event(name, data) for name, data in events)

    def on_event(self, name: str | None, data: bytes) -> bytes:
        raise NotImplementedError  # each relay below handles its own pair of formats

    def end(self) -> bytes:
        """Upstream closed cleanly. Raises if it never sent its terminal event (a cut stream)."""
        if not self.completed:
            raise UpstreamStreamError("upstream closed the stream before it finished", "api_error")
        return b""

    def _collect_openai(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if content is None:
                content = choice.get("text")
            if isinstance(content, str):
                self.text.append(content)
            if isinstance(delta, dict):
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        self.text.append(fn["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


def _load(data: bytes) -> dict[str, Any]:
    try:
        parsed = jsonutil.loads(data)
    except jsonutil.JSONDecodeError as exc:
        raise UpstreamStreamError("upstream sent malformed stream data", "api_error") from exc
    if not isinstance(parsed, dict):
        raise UpstreamStreamError("upstream sent malformed stream data", "api_error")
    return parsed


class OpenAIToOpenAI(StreamRelay):
    """Same format: chunks pass as they came. Only a chunk that can carry usage or an error is parsed;
    the rest are kept raw and parsed only if the stream is cut and its text must be estimated."""

    def __init__(self, client_wants_usage: bool, model: str) -> None:
        super().__init__(client_wants_usage, model)
        self._raw: list[bytes] = []

    def on_event(self, name: str | None, data: bytes) -> bytes:
        if data == b"[DONE]":
            self.completed = True
            return OPENAI_SSE_DONE
        if b'"usage":{' in data or b'"usage": {' in data or b'"error"' in data:
            chunk = _load(data)
            if chunk.get("error") is not None:
                err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
                raise UpstreamStreamError(
                    str(err.get("message", "upstream error")), str(err.get("type", "api_error"))
                )
            usage = from_openai(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
                if not chunk.get("choices") and not self.client_wants_usage:
                    return b""  # the usage chunk the gateway asked for on its own behalf
        self._raw.append(data)
        return b"data: " + data + b"\n\n"

    def delivered_text(self) -> str:
        for data in self._raw:
            with contextlib.suppress(UpstreamStreamError):
                self._collect_openai(_load(data))
        self._raw.clear()
        return "".join(self.text)


class AnthropicToAnthropic(StreamRelay):
    def __init__(self, client_wants_usage: bool, model: str) -> None:
        super().__init__(client_wants_usage, model)
        self._raw_usage: dict[str, Any] = {}

    def on_event(self, name: str | None, data: bytes) -> bytes:
        event = _load(data)
        kind = name or event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
            if isinstance(text, str):
                self.text.append(text)
        elif kind == "message_start":
            message = event.get("message") or {}
            self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._merge(event.get("usage"))
            delta = event.get("delta") or {}
            self.finish_reason = delta.get("stop_reason") or self.finish_reason
        elif kind == "message_stop":
            self.completed = True
        elif kind == "error":
            err = event.get("error") or {}
            raise UpstreamStreamError(
                str(err.get("message", "upstream error")), str(err.get("type", "api_error"))
            )
        return b"event: " + str(kind).encode() + b"\ndata: " + data + b"\n\n"

    def _merge(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._raw_usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = from_anthropic(self._raw_usage)


class AnthropicToOpenAI(StreamRelay):
    def __init__(self, client_wants_usage: bool, model: str) -> None:
        super().__init__(client_wants_usage, model)
        self._translator = AnthropicStreamToOpenAI(model, include_usage=client_wants_usage)

    def on_event(self, name: str | None, data: bytes) -> bytes:
        event = _load(data)
        kind = name or str(event.get("type"))
        chunks = self._translator.feed(kind, event)
        self.usage = self._translator.usage
        out = []
        for chunk in chunks:
            self._collect_openai(chunk)
            out.append(format_openai_sse(chunk))
        if kind == "message_stop":
            self.completed = True
            out.append(OPENAI_SSE_DONE)
        return b"".join(out)


class OpenAIToAnthropic(StreamRelay):
    def __init__(self, client_wants_usage: bool, model: str) -> None:
        super().__init__(client_wants_usage, model)
        self._translator = OpenAIStreamToAnthropic(model)

    def on_event(self, name: str | None, data: bytes) -> bytes:
        if data == b"[DONE]":
            self.completed = True
            events = self._translator.finish()
        else:
            chunk = _load(data)
            self._collect_openai(chunk)
            events = self._translator.feed(chunk)
        self.usage = self._translator.usage or self.usage
        return b"".join(format_anthropic_sse(kind, payload) for kind, payload in events)


_RELAYS: dict[tuple[str, str], type[StreamRelay]] = {
    ("openai", "openai"): OpenAIToOpenAI,
    ("anthropic", "anthropic"): AnthropicToAnthropic,
    ("openai", "anthropic"): AnthropicToOpenAI,  # (client, upstream)
    ("anthropic", "openai"): OpenAIToAnthropic,
}


def stream_relay(inbound: str, wire: str, client_wants_usage: bool, model: str) -> StreamRelay:
    return _RELAYS[(inbound, wire)](client_wants_usage, model)
