"""Response-cache entries: the stored shape, its byte encoding, and replay in either mode (pure, no I/O).

Entries are kept in the client's wire format, so a hit needs no translation; a hit in the other mode turns a
body into a synthesized stream or assembles a stream into a body. Stored streams replay byte-for-byte. Only
OpenAI's usage chunk and ``[DONE]`` vary per request, because whether usage is wanted does: a stored stream
ends with the upstream's usage chunk if its first client asked for one; it is replayed verbatim to a client
that wants usage, dropped for one that does not, and synthesized from the entry's usage when none was stored.
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from gateway import jsonutil
from gateway.metering.usage import Usage, to_anthropic, to_openai
from gateway.providers.translate_request import (
    JSONDict,
    anthropic_message_id,
    as_dict,
    openai_completion_id,
    parse_tool_arguments,
)
from gateway.providers.translate_stream import (
    OPENAI_SSE_DONE,
    format_anthropic_sse,
    format_openai_sse,
    parse_sse_events,
)

EntryKind = Literal["body", "stream"]
Wire = Literal["openai", "anthropic"]

MAGIC = b"GWC1"  # bump the digit when the payload layout changes; old entries then read as misses
_FLAG_RAW = 0
_FLAG_ZLIB = 1
_ZLIB_LEVEL = 3  # entries are written on the response path: favour speed over the last few percent
_KINDS = ("body", "stream")
_WIRES = ("openai", "anthropic")
_FIELD_TYPES: dict[str, type] = {  # the payload's other fields; bytes travel as latin-1 strings
    "operation": str,
    "body": str,
    "events": list,
    "usage": dict,
    "served_model": str,
    "created_ms": int,
    "cost_nano": int,
}
_PIECE_CHARS = 24  # synthesized deltas carry a few words each, like a real token stream but fewer events
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_OPENAI_TEXT_FIELDS = ("content", "reasoning_content", "refusal")  # delta fields that concatenate
_OPENAI_HEAD_FIELDS = ("system_fingerprint", "service_tier")  # copied from body/chunks when present
_ANTHROPIC_TOOL_BLOCKS = ("tool_use", "server_tool_use")  # blocks whose input streams as JSON
_CONCAT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking"}  # delta type -> block field it extends


@dataclass(slots=True)
class CacheEntry:
    kind: EntryKind
    wire: Wire
    operation: str  # "chat" | "text_completion" | "embeddings"
    body: bytes = b""  # kind "body": the response body exactly as the client received it
    # kind "stream": complete SSE events as sent to the client; for OpenAI without the [DONE] terminator and
    # possibly ending with the usage-only chunk (replay_stream adds or drops both per request)
    events: list[bytes] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)  # Usage.as_dict()
    served_model: str = ""
    created_ms: int = 0
    cost_nano: int = 0


# ---------------------------------------------------------------- encoding

# Once, not per entry: dataclasses.fields() rebuilds its tuple on every call.
_ENTRY_FIELDS = tuple(f.name for f in fields(CacheEntry))
_USAGE_FIELDS = frozenset(f.name for f in fields(Usage))


def encode_entry(entry: CacheEntry, compress_min_bytes: int) -> bytes:
    """MAGIC + flag byte + orjson payload, zlib-compressed when at least ``compress_min_bytes`` long.

    Bytes travel as latin-1 strings: a lossless byte <-> code point mapping that keeps mostly-ASCII JSON
    nearly 1:1 and compressible, where base64 would add a third and scramble what zlib can match.
    """
    record = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    record["body"] = entry.body.decode("latin-1")
    record["events"] = [event.decode("latin-1") for event in entry.events]
    payload = jsonutil.dumps(record)
    if len(payload) >= compress_min_bytes:
        return MAGIC + bytes((_FLAG_ZLIB,)) + zlib.compress(payload, _ZLIB_LEVEL)
    return MAGIC + bytes((_FLAG_RAW,)) + payload


def decode_entry(data: bytes) -> CacheEntry:
    """Inverse of ``encode_entry``; raises ValueError for anything else (the caller treats it as a miss)."""
    if len(data) < len(MAGIC) + 1 or bytes(data[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a cache entry or unknown version")
    flag = data[len(MAGIC)]
    payload = bytes(data[len(MAGIC) + 1 :])
    if flag == _FLAG_ZLIB:
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise ValueError(f"corrupt compressed cache entry: {exc}") from exc
    elif flag != _FLAG_RAW:
        raise ValueError(f"unknown cache entry flag {flag}")
    return _entry_from_fields(jsonutil.loads(payload))  # orjson.JSONDecodeError is a ValueError


def _entry_from_fields(raw: Any) -> CacheEntry:
    if not isinstance(raw, dict):
        raise ValueError("cache entry payload is not an object")
    if raw.get("kind") not in _KINDS or raw.get("wire") not in _WIRES:
        raise ValueError(f"cache entry has unknown kind {raw.get('kind')!r} or wire {raw.get('wire')!r}")
    for name, expected in _FIELD_TYPES.items():
        if not isinstance(raw.get(name), expected) or isinstance(raw.get(name), bool):
            raise ValueError(f"cache entry field {name!r} is not a {expected.__name__}")
    if not all(isinstance(event, str) for event in raw["events"]):
        raise ValueError("cache entry events must be strings")
    values = {name: raw[name] for name in _ENTRY_FIELDS}
    # str.encode raises UnicodeEncodeError (a ValueError) for code points a latin-1 string cannot hold
    values["body"] = raw["body"].encode("latin-1")
    values["events"] = [event.encode("latin-1") for event in raw["events"]]
    return CacheEntry(**values)


# ---------------------------------------------------------------- shared helpers


def is_openai_usage_chunk(data: JSONDict) -> bool:
    """The final ``include_usage`` chunk: no choices, a usage object. (Azure's first chunk also has empty
    choices, but carries prompt_filter_results and no usage, so it is content and stays.)"""
    return data.get("choices") == [] and isinstance(data.get("usage"), dict)


def _usage(entry: CacheEntry) -> Usage:
    return Usage(**{key: value for key, value in entry.usage.items() if key in _USAGE_FIELDS})


def _parse_events(events: Iterable[bytes]) -> Iterator[tuple[str | None, JSONDict]]:
    """Stored SSE events -> (event name, JSON object), lazily; [DONE] and non-objects are skipped."""
    for event in events:
        for name, data in parse_sse_events(event)[0]:
            if data.strip() == b"[DONE]":
                continue
            try:
                obj = jsonutil.loads(data)
            except jsonutil.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield name, obj


def _pieces(text: str) -> list[str]:
    """Split text into a few word-aligned pieces that concatenate back to exactly ``text``."""
    pieces: list[str] = []
    for word in _WORD_BOUNDARY.split(text):
        if pieces and len(pieces[-1]) < _PIECE_CHARS:
            pieces[-1] += word
        else:
            pieces.append(word)
    return [piece for piece in pieces if piece]


def _load_body(entry: CacheEntry) -> JSONDict:
    body = jsonutil.loads(entry.body)
    if not isinstance(body, dict):
        raise ValueError("cached body is not a JSON object")
    return body


# ---------------------------------------------------------------- replay as a stream


def replay_stream(entry: CacheEntry, include_usage: bool, request_id: str | None = None) -> list[bytes]:
    """The SSE events for a streaming client. ``request_id`` names the response only if it has no id."""
    if entry.operation == "embeddings":
        raise ValueError("embeddings have no stream mode")
    if entry.wire == "anthropic":
        if entry.kind == "stream":
            return list(entry.events)  # message_start / message_delta already carry usage
        events = _anthropic_events(_load_body(entry), entry, request_id)
        return [format_anthropic_sse(name, data) for name, data in events]
    chat = entry.operation == "chat"
    stored_usage: bytes | None = None
    if entry.kind == "stream":
        source = _first_chunk(data for _, data in _parse_events(entry.events))
        out, stored_usage = _split_usage_chunk(entry.events)
    else:
        source = _load_body(entry)
    head = _openai_head(source, entry, "chat.completion.chunk" if chat else "text_completion", request_id)
    if entry.kind == "body":
        chunk_head = {**head, "usage": None} if include_usage else head  # OpenAI's include_usage shape
        chunks = _chat_chunks(source, chunk_head) if chat else _completion_chunks(source, chunk_head)
        out = [format_openai_sse(chunk) for chunk in chunks]
    if include_usage:
        usage_chunk = {**head, "choices": [], "usage": to_openai(_usage(entry))}
        out.append(stored_usage or format_openai_sse(usage_chunk))
    out.append(OPENAI_SSE_DONE)
    return out


def _split_usage_chunk(events: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """(the content events, the trailing usage-only chunk or None): OpenAI sends usage last, before [DONE]."""
    if events and any(is_openai_usage_chunk(data) for _, data in _parse_events(events[-1:])):
        return list(events[:-1]), events[-1]
    return list(events), None


def _first_chunk(chunks: Iterable[JSONDict]) -> JSONDict:
    """OpenAI repeats id/created/model/system_fingerprint on every chunk, so the first one suffices.
    (Azure's leading prompt_filter_results chunk has an empty id and model, hence the id test.)"""
    return next((chunk for chunk in chunks if chunk.get("id")), {})


def _openai_head(source: JSONDict, entry: CacheEntry, obj: str, request_id: str | None = None) -> JSONDict:
    """The response-level fields of an OpenAI body or chunk, taken from a body or a stored chunk."""
    response_id = source.get("id")
    if not isinstance(response_id, str) or not response_id:
        raw = request_id or uuid.uuid4().hex[:24]
        response_id = openai_completion_id(raw) if entry.operation == "chat" else f"cmpl-{raw}"
    head: JSONDict = {
        "id": response_id,
        "object": obj,
        "created": source.get("created", entry.created_ms // 1000),
        "model": source.get("model") or entry.served_model,
    }
    for name in _OPENAI_HEAD_FIELDS:
        if source.get(name) is not None:
            head[name] = source[name]
    return head


def _chunk(head: JSONDict, index: Any, payload: JSONDict, finish_reason: Any = None) -> JSONDict:
    choice = {"index": index, **payload, "logprobs": None, "finish_reason": finish_reason}
    return {**head, "choices": [choice]}


def _chat_chunks(body: JSONDict, head: JSONDict) -> list[JSONDict]:
    chunks: list[JSONDict] = []
    for position, raw_choice in enumerate(_dicts(body.get("choices"))):
        index = raw_choice.get("index", position)
        message = as_dict(raw_choice.get("message"))
        chunks.append(_chunk(head, index, {"delta": {"role": "assistant", "content": ""}}))
        for name in _OPENAI_TEXT_FIELDS:
            text = message.get(name)
            if isinstance(text, str):
                chunks.extend(_chunk(head, index, {"delta": {name: piece}}) for piece in _pieces(text))
        for call_index, call in enumerate(_dicts(message.get("tool_calls"))):
            delta_call = {"index": call_index, **call}  # the whole call in one delta: id, type, function
            chunks.append(_chunk(head, index, {"delta": {"tool_calls": [delta_call]}}))
        chunks.append(_chunk(head, index, {"delta": {}}, raw_choice.get("finish_reason") or "stop"))
    return chunks


def _completion_chunks(body: JSONDict, head: JSONDict) -> list[JSONDict]:
    chunks: list[JSONDict] = []
    for position, raw_choice in enumerate(_dicts(body.get("choices"))):
        index = raw_choice.get("index", position)
        text = raw_choice.get("text")
        pieces = _pieces(text) if isinstance(text, str) else []
        chunks.extend(_chunk(head, index, {"text": piece}) for piece in pieces)
        chunks.append(_chunk(head, index, {"text": ""}, raw_choice.get("finish_reason") or "stop"))
    return chunks


def _dicts(value: Any) -> list[JSONDict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _anthropic_events(
    message: JSONDict, entry: CacheEntry, request_id: str | None
) -> list[tuple[str, JSONDict]]:
    usage = _usage(entry)
    start: JSONDict = {
        "id": message.get("id") or anthropic_message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": message.get("model") or entry.served_model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**to_anthropic(usage), "output_tokens": 0},  # output is counted in message_delta
    }
    events: list[tuple[str, JSONDict]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(_dicts(message.get("content"))):
        events.extend(_anthropic_block_events(index, block))
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    usage_delta = {"output_tokens": usage.output_tokens}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_delta}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _anthropic_block_events(index: int, block: JSONDict) -> list[tuple[str, JSONDict]]:
    """content_block_start / deltas / stop for one block; blocks without a delta form go whole in start."""
    kind = block.get("type")
    deltas: list[JSONDict] = []
    start: JSONDict
    if kind == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(str(block.get("text", "")))]
    elif kind in _ANTHROPIC_TOOL_BLOCKS:
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": jsonutil.dumps_str(block.get("input") or {})}]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(str(block.get("thinking", "")))]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # redacted_thinking, server tool results, ...: the API itself sends these whole
        start = dict(block)
    events: list[tuple[str, JSONDict]] = [
        ("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
    ]
    events.extend(
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        for delta in deltas
    )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


# ---------------------------------------------------------------- replay as a body


def replay_body(entry: CacheEntry) -> bytes:
    """A non-streamed response body: the stored one, or one assembled from the stored stream."""
    if entry.kind == "body":
        return entry.body
    if entry.operation == "embeddings":
        raise ValueError("embeddings have no stream mode")
    parsed = _parse_events(entry.events)
    if entry.wire == "anthropic":
        return jsonutil.dumps(_assemble_anthropic(parsed, entry))
    chunks = [data for _, data in parsed if not is_openai_usage_chunk(data)]
    if entry.operation == "chat":
        return jsonutil.dumps(_assemble_chat(chunks, entry))
    return jsonutil.dumps(_assemble_completion(chunks, entry))


@dataclass(slots=True)
class _ChoiceState:
    # content / reasoning_content / refusal / text pieces, joined once: long streams stay linear
    parts: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[Any, JSONDict] = field(default_factory=dict)  # by the delta's tool_calls index
    finish_reason: Any = None

    def text(self, name: str) -> str:
        return "".join(self.parts.get(name, ()))


def _fold_choices(chunks: list[JSONDict], text_fields: tuple[str, ...]) -> dict[Any, _ChoiceState]:
    """Merge every chunk's choices by index: text fields concatenate, tool calls merge by their index."""
    states: dict[Any, _ChoiceState] = {}
    for chunk in chunks:
        for choice in _dicts(chunk.get("choices")):
            state = states.setdefault(choice.get("index", 0), _ChoiceState())
            source = as_dict(choice.get("delta")) if "delta" in choice else choice
            for name in text_fields:
                if isinstance(source.get(name), str):
                    state.parts.setdefault(name, []).append(source[name])
            for call in _dicts(source.get("tool_calls")):
                _merge_tool_call(state, call)
            if choice.get("finish_reason") is not None:
                state.finish_reason = choice["finish_reason"]
    return states


def _merge_tool_call(state: _ChoiceState, call: JSONDict) -> None:
    function = as_dict(call.get("function"))
    merged = state.tool_calls.setdefault(
        call.get("index", 0),
        {
            "id": call.get("id"),
            "type": "function",
            "function": {"name": function.get("name"), "arguments": ""},
        },
    )
    if isinstance(function.get("arguments"), str):
        merged["function"]["arguments"] += function["arguments"]


def _assemble_chat(chunks: list[JSONDict], entry: CacheEntry) -> JSONDict:
    choices = []
    for index, state in sorted(_fold_choices(chunks, _OPENAI_TEXT_FIELDS).items()):
        message: JSONDict = {
            "role": "assistant",
            "content": state.text("content") or None,
            "refusal": state.text("refusal") or None,
        }
        if reasoning := state.text("reasoning_content"):
            message["reasoning_content"] = reasoning
        if state.tool_calls:
            message["tool_calls"] = [call for _, call in sorted(state.tool_calls.items())]
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": state.finish_reason}
        )
    body = _openai_head(_first_chunk(chunks), entry, "chat.completion")
    return {**body, "choices": choices, "usage": to_openai(_usage(entry))}


def _assemble_completion(chunks: list[JSONDict], entry: CacheEntry) -> JSONDict:
    choices = []
    for index, state in sorted(_fold_choices(chunks, ("text",)).items()):
        text = state.text("text")
        choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": state.finish_reason})
    body = _openai_head(_first_chunk(chunks), entry, "text_completion")
    return {**body, "choices": choices, "usage": to_openai(_usage(entry))}


def _assemble_anthropic(events: Iterable[tuple[str | None, JSONDict]], entry: CacheEntry) -> JSONDict:
    start: JSONDict = {}
    stop: JSONDict = {}
    blocks: dict[int, JSONDict] = {}
    json_bufs: dict[int, str] = {}  # tool input arrives as JSON text fragments, parsed once at the end
    for name, data in events:
        kind = data.get("type") or name
        if kind == "message_start":
            start = as_dict(data.get("message"))
        elif kind == "content_block_start" and isinstance(index := data.get("index"), int):
            blocks[index] = dict(as_dict(data.get("content_block")))
        elif kind == "content_block_delta" and isinstance(index := data.get("index"), int):
            block = blocks.setdefault(index, {"type": "text", "text": ""})
            _apply_block_delta(block, as_dict(data.get("delta")), json_bufs, index)
        elif kind == "message_delta":
            stop = as_dict(data.get("delta"))
    for index, buf in json_bufs.items():
        blocks[index]["input"] = parse_tool_arguments(buf)
    return {
        "id": start.get("id") or anthropic_message_id(None),
        "type": "message",
        "role": "assistant",
        "model": start.get("model") or entry.served_model,
        "content": [blocks[index] for index in sorted(blocks)],
        "stop_reason": stop.get("stop_reason"),
        "stop_sequence": stop.get("stop_sequence"),
        "usage": to_anthropic(_usage(entry)),
    }


def _apply_block_delta(block: JSONDict, delta: JSONDict, json_bufs: dict[int, str], index: int) -> None:
    kind = delta.get("type")
    if kind in _CONCAT_DELTAS:
        name = _CONCAT_DELTAS[kind]
        block[name] = str(block.get(name, "")) + str(delta.get(name, ""))
    elif kind == "input_json_delta":
        json_bufs[index] = json_bufs.get(index, "") + str(delta.get("partial_json", ""))
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
