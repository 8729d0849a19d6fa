"""Mock LLM provider speaking the OpenAI, Azure OpenAI and Anthropic wire formats, for demos and tests.

JSON shapes follow the real APIs so the official SDKs parse every response. It must never be the
bottleneck of a load test: per-token stream frames are cached byte templates, bodies are encoded once
with orjson, and per-request state is a handful of counters. Content is a deterministic run of common
words that are each ONE token in cl100k/o200k, so a gateway-side tokenizer counts exactly what usage says.

Per-request control headers (deterministic tests without restarting the server):
  x-mock-status: N                       answer N with the provider's error body (429: retry-after: 1)
  x-mock-fail-times: K, x-mock-fail-key  the first K requests with that key fail (500 or x-mock-status)
  x-mock-latency-ms, x-mock-chunk-delay-ms   override the configured delays
  x-mock-cut-after: K                    stream: K content chunks, then abort; non-stream: abort, no reply
  x-mock-completion-tokens, x-mock-prompt-tokens             override token counts
  x-mock-cached-tokens, x-mock-reasoning-tokens              OpenAI usage details
  x-mock-cache-read-tokens, x-mock-cache-creation-tokens     Anthropic usage cache fields
  x-mock-context-window: N               context-length 400 when prompt tokens exceed N
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import random
import signal
import sys
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from aiohttp import web

from gateway.jsonutil import JSONDecodeError, dumps, dumps_str, loads
from gateway.metering.tokens import TokenCounter


@dataclass
class MockConfig:
    host: str = "127.0.0.1"
    port: int = 9100
    latency_ms: float = 0.0  # before the response, or before the first stream chunk
    chunk_delay_ms: float = 0.0  # between stream content chunks
    completion_tokens: int = 16
    error_rate: float = 0.0  # probability of an injected 429 or 500
    cut_rate: float = 0.0  # probability of a connection cut mid-response
    seed: int | None = None
    served_log: str | None = None  # a line per fully served 200: the request's x-request-id, or "-"


# Each is a single token in cl100k_base and o200k_base, with and without its leading space.
_WORD_TEXT = (
    "the of and to in is that for it with as on was be by at this are from or have an they which "
    "one you were all we can their has more will when there so about other time than some these "
    "into only new its our most also people may such like over first any after just made many each"
)
_WORDS = tuple(" " + w for w in _WORD_TEXT.split())
_OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o3-mini", "text-embedding-3-small")
_ANTHROPIC_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    529: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_OPENAI_HEADERS = {
    "Content-Type": "application/json",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
}
_ANTHROPIC_HEADERS = {
    "Content-Type": "application/json",
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
}
_DONE = b"data: [DONE]\n\n"
_IDS = random.Random()  # ids need no reproducibility; the seeded generator drives injected faults
_T0 = web.RequestKey("mock_t0", float)

Frames = tuple[list[bytes], list[bytes], list[bytes]]  # head, content chunks (what a cut counts), tail


def _hex(n: int) -> str:
    return f"{_IDS.getrandbits(n * 4):0{n}x}"


def _word(i: int) -> str:
    return _WORDS[0][1:] if i == 0 else _WORDS[i % len(_WORDS)]


@lru_cache(maxsize=512)
def _text(n: int) -> str:
    return "".join(_word(i) for i in range(n))


def _stop_cut(n: int, stops: list[str]) -> tuple[int, str]:
    """Tokens kept when stop sequences are given, and the one that "fired".

    A stop string found in the text cuts before it (on a word boundary, so the token count stays
    exact); otherwise the mock pretends the model emitted the first one halfway through.
    """
    text = _text(n)
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return (n + 1) // 2, stops[0]
    pos, stop = min(hits)
    kept, end = 0, 0
    while kept < n and end + len(_word(kept)) <= pos:
        end += len(_word(kept))
        kept += 1
    return kept, stop


def _stops(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return [s for s in value if isinstance(s, str) and s] if isinstance(value, list) else []


def _chars(value: Any) -> int:
    """Characters of text in a prompt, message list or content-block list (a cheap token estimate)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return _chars(value.get("text")) + _chars(value.get("content"))
    return 4 if isinstance(value, int) else 0  # a token id of a pre-tokenized prompt


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if auth.startswith("Bearer ") else ""


def _uint(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _hint(headers: Mapping[str, str], name: str, default: int = 0) -> int:
    try:
        return max(0, int(headers[name]))
    except (KeyError, ValueError):
        return default


def _hfloat(headers: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return default


def _json_text(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format")
    wants_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    return '{"mock": true}' if wants_json else None


@lru_cache(maxsize=4096)
def _embedding(key: str, dims: int) -> tuple[tuple[float, ...], str]:
    """A deterministic unit vector per input (equal inputs embed equally), as floats and as base64."""
    rng = random.Random(zlib.crc32(key.encode()))
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    vec = array("f", [v / norm for v in values])
    floats = tuple(vec)  # float32-rounded, so both encodings carry the same numbers
    if sys.byteorder == "big":
        vec.byteswap()
    return floats, base64.b64encode(vec.tobytes()).decode()


def _embedding_inputs(value: Any) -> list[tuple[str, int]] | None:
    """(cache key, token count) per input: a string, a token array, or a list of either."""
    if not isinstance(value, list) or (value and all(isinstance(v, int) for v in value)):
        value = [value]  # a single string or token array
    out: list[tuple[str, int]] = []
    for item in value:
        if isinstance(item, str):
            out.append((item, max(1, (len(item) + 3) // 4)))
        elif isinstance(item, list):
            out.append((dumps_str(item), len(item)))
        else:
            return None
    return out or None


def _tool_name(body: dict[str, Any], anthropic: bool) -> str | None:
    """The tool the mock "calls": the forced one, else the first; none when tool_choice says none."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    specs = tools if anthropic else [t.get("function") for t in tools if isinstance(t, dict)]
    names = [s["name"] for s in specs if isinstance(s, dict) and isinstance(s.get("name"), str)]
    forced = choice if isinstance(choice, dict) else {}
    name = forced.get("name") if anthropic else (forced.get("function") or {}).get("name")
    return name if isinstance(name, str) else (names[0] if names else None)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"


@lru_cache(maxsize=4096)
def _piece(chat: bool, index: int, word: str) -> bytes:
    """One choice of an OpenAI stream chunk carrying one word (cached: words repeat across requests)."""
    return dumps(_chunk_choice(chat, index, {"content": word} if chat else word, None))


def _chunk_choice(chat: bool, index: int, delta: Any, finish: str | None) -> dict[str, Any]:
    if chat:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"text": delta, "index": index, "logprobs": None, "finish_reason": finish}


@lru_cache(maxsize=512)
def _anthropic_delta(word: str) -> bytes:
    delta = {"type": "text_delta", "text": word}
    return _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})


def _models_body(anthropic: bool) -> bytes:
    if not anthropic:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"} for m in _OPENAI_MODELS
        ]
        return dumps({"object": "list", "data": data})
    models = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in _ANTHROPIC_MODELS
    ]
    return dumps(
        {"data": models, "has_more": False, "first_id": models[0]["id"], "last_id": models[-1]["id"]}
    )


_MODELS = {False: _models_body(False), True: _models_body(True)}


@dataclass(slots=True)
class _Plan:
    """What one completion request produces, independent of the wire format."""

    model: str
    choices: int
    tokens: int  # visible tokens per choice
    finish: str  # OpenAI vocabulary: stop | length | tool_calls
    stop_seq: str | None
    tool: str | None
    json_text: str | None
    prompt: int  # total, cache reads and writes included
    cached: int
    cache_creation: int
    reasoning: int
    include_usage: bool

    @property
    def completion(self) -> int:
        return self.tokens * self.choices + self.reasoning

    @property
    def stop_reason(self) -> str:
        if self.finish == "stop":
            return "end_turn" if self.stop_seq is None else "stop_sequence"
        return "tool_use" if self.finish == "tool_calls" else "max_tokens"

    def openai_usage(self, chat: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }
        if chat:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached, "audio_tokens": 0}
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        return usage

    def anthropic_usage(self, output_tokens: int) -> dict[str, int]:
        return {  # Anthropic's input_tokens excludes both cache fields
            "input_tokens": max(0, self.prompt - self.cached - self.cache_creation),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cached,
        }


class MockProvider:
    """The handlers, plus the little state tests inspect through /_mock/stats."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        self._log_fd: int | None = None
        # OpenAI-format prompts are counted with the gateway's own tokenizer (cl100k), as a real
        # provider counts with its own: the gateway's exact counts then match the usage reported here.
        self.counter = TokenCounter()
        self._clear()

    def _clear(self) -> None:
        self.rng = random.Random(self.cfg.seed)
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.fail_counts: dict[str, int] = {}
        self.last_auth: str | None = None
        self.last_headers: Mapping[str, str] = {}
        self.last_body: Any = None
        self.in_flight = 0
        self.peak_in_flight = 0  # the most model calls open at once (streams until their last byte)

    @web.middleware
    async def count_in_flight(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_mock/"):
            return await handler(request)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def open(self, _app: web.Application) -> None:
        if self.cfg.served_log:  # O_APPEND and one os.write per line: unbuffered, never interleaved
            self._log_fd = os.open(self.cfg.served_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def close(self, _app: web.Application) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def _served(self, request: web.Request) -> None:
        if self._log_fd is not None:
            os.write(self._log_fd, request.headers.get("x-request-id", "-").encode() + b"\n")

    async def stats(self, _request: web.Request) -> web.Response:
        stats = {
            "requests": self.requests,
            "by_path": self.by_path,
            "last_auth": self.last_auth,
            "last_headers": {k.lower(): v for k, v in self.last_headers.items()},
            "last_body": self.last_body,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }
        return web.json_response(stats, dumps=dumps_str)

    async def reset(self, _request: web.Request) -> web.Response:
        self._clear()
        return web.json_response({"ok": True}, dumps=dumps_str)

    async def _begin(self, request: web.Request) -> Any:
        """Read and record the request; returns the parsed body (None if it is not JSON)."""
        request[_T0] = time.perf_counter()
        raw = await request.read()
        try:
            body = loads(raw) if raw else None
        except JSONDecodeError:
            body = None
        headers = request.headers
        self.requests += 1
        self.by_path[request.path] = self.by_path.get(request.path, 0) + 1
        self.last_auth = headers.get("Authorization") or headers.get("api-key") or headers.get("x-api-key")
        self.last_headers = headers
        self.last_body = body
        return body

    # ---- responses -------------------------------------------------------------------------------

    def _headers(self, request: web.Request, anthropic: bool) -> dict[str, str]:
        if anthropic:
            return {**_ANTHROPIC_HEADERS, "request-id": "req_01" + _hex(22)}
        elapsed = str(int((time.perf_counter() - request.get(_T0, time.perf_counter())) * 1000))
        return {**_OPENAI_HEADERS, "x-request-id": "req_" + _hex(32), "openai-processing-ms": elapsed}

    def _error(
        self, request: web.Request, anthropic: bool, status: int, message: str = "", **extra: str
    ) -> web.Response:
        """The provider's own error body; ``extra`` overrides OpenAI's ``code``/``param``."""
        if anthropic:
            kind, default = _ANTHROPIC_ERRORS.get(status, ("api_error", "Error"))
            obj: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message or default}}
        else:
            kind, code, default = _OPENAI_ERRORS.get(status, ("server_error", None, "Error"))
            error = {"message": message or default, "type": kind, "param": None, "code": code}
            obj = {"error": {**error, **extra}}
        headers = self._headers(request, anthropic)
        if status == 429:
            headers["retry-after"] = "1"
        return web.Response(body=dumps(obj), status=status, headers=headers)

    async def _send(self, request: web.Request, body: bytes, anthropic: bool) -> web.StreamResponse:
        resp = web.Response(body=body, headers=self._headers(request, anthropic))
        try:  # sent here rather than by aiohttp, so "served" is logged only once it is written
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            return resp
        self._served(request)
        return resp

    async def _stream(self, request: web.Request, frames: Frames, anthropic: bool) -> web.StreamResponse:
        headers = self._headers(request, anthropic)
        headers.update({"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
        resp = web.StreamResponse(headers=headers)
        head, content, tail = frames
        delay = _hfloat(request.headers, "x-mock-chunk-delay-ms", self.cfg.chunk_delay_ms) / 1000
        cut = self._cut(request, len(content))
        try:
            await resp.prepare(request)
            if cut is not None:
                await _write_paced(resp, head, content[:cut], [], delay)
                await _abort(request)
                return resp
            await _write_paced(resp, head, content, tail, delay)
            await resp.write_eof()
        except ConnectionError:
            return resp
        self._served(request)
        return resp

    # ---- gatekeeping shared by every provider endpoint --------------------------------------------

    def _injected_status(self, request: web.Request) -> int | None:
        headers = request.headers
        forced = _hint(headers, "x-mock-status")
        if "x-mock-fail-times" in headers:
            key = headers.get("x-mock-fail-key", "")
            seen = self.fail_counts.get(key, 0)
            self.fail_counts[key] = seen + 1
            return (forced or 500) if seen < _hint(headers, "x-mock-fail-times") else None
        if forced >= 400:
            return forced
        if self.cfg.error_rate > 0 and self.rng.random() < self.cfg.error_rate:
            return 429 if self.rng.random() < 0.5 else 500
        return None

    def _cut(self, request: web.Request, chunks: int) -> int | None:
        if "x-mock-cut-after" in request.headers:
            return _hint(request.headers, "x-mock-cut-after")
        if self.cfg.cut_rate > 0 and self.rng.random() < self.cfg.cut_rate:
            return self.rng.randrange(max(1, chunks))
        return None

    async def _prelude(self, request: web.Request, body: Any, anthropic: bool) -> web.Response | None:
        """After auth: a parse error, else the latency, then any injected fault."""
        if not isinstance(body, dict):
            return self._error(request, anthropic, 400, "We could not parse the JSON body of your request.")
        latency = _hfloat(request.headers, "x-mock-latency-ms", self.cfg.latency_ms)
        if latency > 0:
            await asyncio.sleep(latency / 1000)
        status = self._injected_status(request)
        return None if status is None else self._error(request, anthropic, status)

    def _plan(self, request: web.Request, body: dict[str, Any], prompt: int, anthropic: bool) -> _Plan:
        headers = request.headers
        configured = _hint(headers, "x-mock-completion-tokens", self.cfg.completion_tokens)
        limit = _uint(body.get("max_tokens"))
        if not anthropic:
            limit = _uint(body.get("max_completion_tokens")) or limit
        tokens = configured if limit is None else min(limit, configured)
        finish = "length" if tokens < configured else "stop"
        stops = _stops(body.get("stop_sequences" if anthropic else "stop"))
        stop_seq = None
        if stops and tokens:
            (tokens, stop_seq), finish = _stop_cut(tokens, stops), "stop"
        tool = _tool_name(body, anthropic)
        stream_options = body.get("stream_options")
        return _Plan(
            model=str(body.get("model") or request.match_info.get("deployment", "")),
            choices=1 if anthropic else min(_uint(body.get("n")) or 1, 128),
            tokens=tokens,
            finish="tool_calls" if tool else finish,
            stop_seq=stop_seq,
            tool=tool,
            json_text=None if anthropic else _json_text(body),
            prompt=_hint(headers, "x-mock-prompt-tokens", prompt),
            cached=_hint(headers, "x-mock-cache-read-tokens" if anthropic else "x-mock-cached-tokens"),
            cache_creation=_hint(headers, "x-mock-cache-creation-tokens") if anthropic else 0,
            reasoning=_hint(headers, "x-mock-reasoning-tokens"),
            include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        )

    def _too_long(self, request: web.Request, plan: _Plan, anthropic: bool) -> web.Response | None:
        window = _hint(request.headers, "x-mock-context-window", -1)
        if window < 0 or plan.prompt <= window:
            return None
        if anthropic:
            return self._error(
                request, True, 400, f"prompt is too long: {plan.prompt} tokens > {window} maximum"
            )
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages resulted "
            f"in {plan.prompt} tokens. Please reduce the length of the messages."
        )
        return self._error(request, False, 400, message, code="context_length_exceeded", param="messages")

    # ---- OpenAI and Azure OpenAI -----------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    def _openai_auth(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if "deployment" in request.match_info:  # Azure
            if not headers.get("api-key"):
                return self._error(request, False, 401, "Access denied due to missing subscription key.")
            if not request.query.get("api-version"):
                return self._error(request, False, 400, "Missing required query parameter: api-version.")
            return None
        if not _bearer(headers):
            return self._error(request, False, 401, "You didn't provide an API key.")
        return None

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._begin(request)
        failed = self._openai_auth(request) or await self._prelude(request, body, False)
        if failed is not None:
            return failed
        field = "messages" if chat else "prompt"
        if field not in body:
            return self._error(request, False, 400, f"Missing required parameter: '{field}'.", param=field)
        messages = body[field]
        model = str(body.get("model") or "mock-gpt")
        if chat:
            prompt = self.counter.count_chat(messages, model, body.get("tools"))
        else:
            prompt = self.counter.count_input(messages, model)
        plan = self._plan(request, body, prompt, anthropic=False)
        if (too_long := self._too_long(request, plan, False)) is not None:
            return too_long
        oid = ("chatcmpl-" if chat else "cmpl-") + _hex(24)
        if body.get("stream") is True:
            return await self._stream(request, _openai_frames(plan, chat, oid, int(time.time())), False)
        if self._cut(request, plan.tokens) is not None:
            return await _abort_without_response(request)
        return await self._send(request, dumps(_openai_body(plan, chat, oid, int(time.time()))), False)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        failed = self._openai_auth(request) or await self._prelude(request, body, False)
        if failed is not None:
            return failed
        inputs = _embedding_inputs(body.get("input"))
        if inputs is None:
            return self._error(request, False, 400, "'input' is a required property.", param="input")
        if self._cut(request, 1) is not None:
            return await _abort_without_response(request)
        dims = min(_uint(body.get("dimensions")) or 8, 4096)
        encoding = 1 if body.get("encoding_format") == "base64" else 0
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(key, dims)[encoding]}
            for i, (key, _) in enumerate(inputs)
        ]
        counted = self.counter.count_input(body.get("input"), str(body.get("model") or "mock-embed"))
        prompt = _hint(request.headers, "x-mock-prompt-tokens", counted)
        obj = {
            "object": "list",
            "data": data,
            "model": str(body.get("model") or request.match_info.get("deployment", "")),
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return await self._send(request, dumps(obj), False)

    async def models(self, request: web.Request) -> web.StreamResponse:
        await self._begin(request)
        anthropic = "anthropic-version" in request.headers
        denied = self._anthropic_auth(request) if anthropic else self._openai_auth(request)
        return denied or await self._send(request, _MODELS[anthropic], anthropic)

    # ---- Anthropic -------------------------------------------------------------------------------

    def _anthropic_auth(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        # x-api-key is the classic scheme; recent SDKs send the key as a Bearer token instead.
        if not (headers.get("x-api-key") or _bearer(headers)):
            return self._error(request, True, 401, "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return self._error(request, True, 400, "anthropic-version: header is required")
        return None

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        failed = self._anthropic_auth(request) or await self._prelude(request, body, True)
        if failed is not None:
            return failed
        for field in ("model", "messages", "max_tokens"):
            if field not in body:
                return self._error(request, True, 400, f"{field}: Field required")
        messages = body["messages"]
        count = len(messages) if isinstance(messages, list) else 1
        prompt = (_chars(messages) + _chars(body.get("system"))) // 4 + 4 * count + 3
        plan = self._plan(request, body, prompt, anthropic=True)
        if (too_long := self._too_long(request, plan, True)) is not None:
            return too_long
        msg_id = "msg_01" + _hex(22)
        if body.get("stream") is True:
            return await self._stream(request, _anthropic_frames(plan, msg_id), True)
        if self._cut(request, plan.tokens) is not None:
            return await _abort_without_response(request)
        return await self._send(
            request, dumps(_anthropic_message(plan, msg_id, [_anthropic_block(plan)])), True
        )

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        await self._begin(request)
        message = f"Invalid URL ({request.method} {request.path})"
        return self._error(request, False, 404, message, code="unknown_url")


# ---- wire bodies ---------------------------------------------------------------------------------


def _openai_body(plan: _Plan, chat: bool, oid: str, created: int) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for i in range(plan.choices):
        if not chat:
            choices.append(_chunk_choice(False, i, _text(plan.tokens), plan.finish))
            continue
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if plan.tool:
            function = {"name": plan.tool, "arguments": "{}"}
            message["tool_calls"] = [{"id": "call_" + _hex(24), "type": "function", "function": function}]
        else:
            message["content"] = plan.json_text if plan.json_text is not None else _text(plan.tokens)
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": plan.finish})
    return {
        "id": oid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.openai_usage(chat),
        "system_fingerprint": "fp_mock",
    }


def _openai_frames(plan: _Plan, chat: bool, oid: str, created: int) -> Frames:
    """Chat or legacy-completion stream: per-word frames are a cached piece between two byte templates."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    header = {
        "id": oid,
        "object": kind,
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
    }
    prefix = b"data: " + dumps(header)[:-1] + b',"choices":['  # the object without its closing brace
    suffix = b'],"usage":null}\n\n' if plan.include_usage else b"]}\n\n"
    choices = range(plan.choices)
    head: list[bytes] = []
    if chat:
        for i in choices:
            delta: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
            if plan.tool:
                call = {"index": 0, "id": "call_" + _hex(24), "type": "function"}
                delta["content"] = None
                delta["tool_calls"] = [{**call, "function": {"name": plan.tool, "arguments": ""}}]
            head.append(prefix + dumps(_chunk_choice(True, i, delta, None)) + suffix)
    if chat and plan.tool:
        args = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        content = [prefix + dumps(_chunk_choice(True, i, args, None)) + suffix for i in choices]
    elif chat and plan.json_text is not None:
        content = [prefix + _piece(True, i, plan.json_text) + suffix for i in choices]
    else:
        content = [prefix + _piece(chat, i, _word(t)) + suffix for t in range(plan.tokens) for i in choices]
    end: Any = {} if chat else ""
    tail = [prefix + dumps(_chunk_choice(chat, i, end, plan.finish)) + suffix for i in choices]
    if plan.include_usage:
        tail.append(b"data: " + dumps({**header, "choices": [], "usage": plan.openai_usage(chat)}) + b"\n\n")
    tail.append(_DONE)
    return head, content, tail


def _anthropic_block(plan: _Plan) -> dict[str, Any]:
    if plan.tool:
        return {"type": "tool_use", "id": "toolu_01" + _hex(22), "name": plan.tool, "input": {}}
    return {"type": "text", "text": _text(plan.tokens)}


def _anthropic_message(plan: _Plan, msg_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    done = bool(content)  # message_start carries an empty, unfinished message
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": plan.stop_reason if done else None,
        "stop_sequence": plan.stop_seq if done else None,
        "usage": plan.anthropic_usage(plan.completion if done else 1),
    }


def _anthropic_frames(plan: _Plan, msg_id: str) -> Frames:
    block = _anthropic_block(plan)
    if block["type"] == "text":
        block["text"] = ""
        content = [_anthropic_delta(_word(t)) for t in range(plan.tokens)]
    else:
        delta = {"type": "input_json_delta", "partial_json": "{}"}
        content = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})]
    head = [
        _sse("message_start", {"type": "message_start", "message": _anthropic_message(plan, msg_id, [])}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        _sse("ping", {"type": "ping"}),
    ]
    stop = {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_seq}
    usage = {"output_tokens": plan.completion}
    tail = [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "delta": stop, "usage": usage}),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return head, content, tail


# ---- transport -----------------------------------------------------------------------------------


async def _write_paced(
    resp: web.StreamResponse, head: list[bytes], content: list[bytes], tail: list[bytes], delay: float
) -> None:
    """Head rides with the first content chunk and tail with the last; ``delay`` separates chunks."""
    if delay <= 0 or len(content) <= 1:
        data = b"".join([*head, *content, *tail])
        if data:
            await resp.write(data)
        return
    await resp.write(b"".join([*head, content[0]]))
    for chunk in content[1:]:
        await asyncio.sleep(delay)
        await resp.write(chunk)
    if tail:
        await resp.write(b"".join(tail))


async def _abort(request: web.Request) -> None:
    """Drop the connection abruptly (no terminating chunk) once what was written reached the socket."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(100):  # abort() discards the user-space write buffer, so let it drain first
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    transport.abort()


async def _abort_without_response(request: web.Request) -> web.StreamResponse:
    await _abort(request)
    return web.Response()  # never sent: aiohttp swallows the write to the closed transport


# ---- app, runner, CLI ----------------------------------------------------------------------------

PROVIDER = web.AppKey("mock_provider", MockProvider)


def create_app(cfg: MockConfig) -> web.Application:
    provider = MockProvider(cfg)
    app = web.Application(  # long-context tests send big prompts
        client_max_size=64 * 1024 * 1024, middlewares=[provider.count_in_flight]
    )
    app[PROVIDER] = provider
    app.on_startup.append(provider.open)
    app.on_cleanup.append(provider.close)
    for prefix in ("/v1", "/openai/deployments/{deployment}"):
        app.router.add_post(prefix + "/chat/completions", provider.chat)
        app.router.add_post(prefix + "/completions", provider.completions)
        app.router.add_post(prefix + "/embeddings", provider.embeddings)
    app.router.add_get("/v1/models", provider.models)
    app.router.add_post("/v1/messages", provider.messages)
    app.router.add_get("/_mock/stats", provider.stats)
    app.router.add_post("/_mock/reset", provider.reset)
    app.router.add_route("*", "/{tail:.*}", provider.not_found)
    return app


async def start_mock(cfg: MockConfig) -> tuple[web.AppRunner, int]:
    """Bind and serve; returns the runner (call ``cleanup()``) and the bound port (cfg.port 0: a free one)."""
    runner = web.AppRunner(create_app(cfg), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.host, cfg.port, backlog=4096).start()
    except BaseException:  # e.g. the port is taken: do not leak the runner
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def _parse_args(argv: list[str] | None) -> MockConfig:
    parser = argparse.ArgumentParser(
        prog="gateway mock-upstream", description="Mock OpenAI / Azure OpenAI / Anthropic provider."
    )
    types = {"str": str, "int": int, "float": float, "int | None": int, "str | None": str}
    for f in fields(MockConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=types[str(f.type)], default=f.default)
    return MockConfig(**vars(parser.parse_args(argv)))


async def _serve(cfg: MockConfig) -> None:
    runner, port = await start_mock(cfg)
    sys.stdout.write(f"mock upstream listening on http://{cfg.host}:{port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    cfg = _parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
