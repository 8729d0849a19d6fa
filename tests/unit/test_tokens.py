from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import jsonutil
from gateway.metering import tokens
from gateway.metering.tokens import (
    FALLBACK_ENCODING,
    IMAGE_WORST_CASE_TOKENS,
    EncodingRegistry,
    TokenCounter,
    byte_upper_bound_chat,
    byte_upper_bound_text,
    chat_prompt_bound,
    encoding_name_for_model,
    image_tokens,
)

OFFLINE = tiktoken.get_encoding(FALLBACK_ENCODING)


def _offline_only(name: str) -> tiktoken.Encoding:
    """A loader on a machine without network or tiktoken cache."""
    if name == FALLBACK_ENCODING:
        return OFFLINE
    raise ConnectionError(f"no network for {name}")


class CountingLoader:
    def __init__(self, proper: tiktoken.Encoding | None = None, gate: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self._proper = proper
        self._gate = gate

    def __call__(self, name: str) -> tiktoken.Encoding:
        self.calls.append(name)
        if name == FALLBACK_ENCODING:
            return OFFLINE
        if self._gate is not None:
            self._gate.wait(10)
        if self._proper is None:
            raise OSError("download failed")
        return self._proper


@pytest.fixture
def offline_counter() -> TokenCounter:
    return TokenCounter(EncodingRegistry(loader=_offline_only))


# --- model -> encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:org::abc", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-3-5-sonnet-20241022", "cl100k_base"),
        ("gemini-1.5-pro", "cl100k_base"),
        ("llama-3.1-70b", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_encoding_name_for_model(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


# --- loading and fallback ------------------------------------------------------------------------


def test_failing_loader_falls_back_and_reports_name() -> None:
    loader = CountingLoader()
    registry = EncodingRegistry(loader=loader)
    assert registry.preload(["gpt-4o", "claude-3-haiku"], timeout=5) == {
        "gpt-4o": FALLBACK_ENCODING,
        # cl100k_base is served from the offline package's identical copy, under its own name.
        "claude-3-haiku": "cl100k_base",
    }
    enc, name = registry.get("gpt-4o")
    assert name == FALLBACK_ENCODING
    assert enc is OFFLINE
    counter = TokenCounter(registry)
    assert counter.count_text("hello world", "gpt-4o") == len(OFFLINE.encode_ordinary("hello world"))


def test_failed_load_is_not_retried_per_request() -> None:
    loader = CountingLoader()
    registry = EncodingRegistry(loader=loader)
    registry.preload(["gpt-4o"], timeout=5)
    for _ in range(50):
        registry.get("gpt-4o")
    assert loader.calls.count("o200k_base") == 1
    assert loader.calls.count(FALLBACK_ENCODING) == 1


def test_failed_load_is_retried_after_the_retry_period(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = CountingLoader()
    registry = EncodingRegistry(loader=loader)
    registry.preload(["gpt-4o"], timeout=5)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + tokens.RETRY_AFTER_S + 1)
    registry.preload(["gpt-4o"], timeout=5)
    assert loader.calls.count("o200k_base") == 2


def test_successful_load_is_used_after_preload() -> None:
    proper = OFFLINE  # stands in for o200k_base: we only check which object is handed out
    registry = EncodingRegistry(loader=CountingLoader(proper=proper))
    assert registry.preload(["gpt-4o"], timeout=5) == {"gpt-4o": "o200k_base"}
    assert registry.get("gpt-4o") == (proper, "o200k_base")


def test_hanging_load_never_blocks_the_request_path() -> None:
    gate = threading.Event()
    loader = CountingLoader(proper=OFFLINE, gate=gate)
    registry = EncodingRegistry(loader=loader)
    started = time.perf_counter()
    assert registry.preload(["gpt-4o"], timeout=0.05) == {"gpt-4o": FALLBACK_ENCODING}
    for _ in range(100):
        assert registry.get("gpt-4o")[1] == FALLBACK_ENCODING
    assert time.perf_counter() - started < 2
    assert loader.calls.count("o200k_base") == 1
    gate.set()  # the download finally completes: later requests use it
    deadline = time.monotonic() + 5
    while registry.get("gpt-4o")[1] != "o200k_base" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.get("gpt-4o")[1] == "o200k_base"


def test_no_encoding_at_all_counts_bytes() -> None:
    def broken(name: str) -> tiktoken.Encoding:
        raise RuntimeError("tiktoken is broken")

    registry = EncodingRegistry(loader=broken)
    assert registry.preload(["gpt-4o"], timeout=1) == {"gpt-4o": "bytes"}
    counter = TokenCounter(registry)
    assert counter.count_text("héllo", "gpt-4o") == 6
    messages = [{"role": "user", "content": "hi there"}]
    assert counter.count_chat(messages, "gpt-4o") == byte_upper_bound_chat(messages)


def test_broken_fallback_is_retried_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def flaky(name: str) -> tiktoken.Encoding:
        attempts.append(name)
        if name == FALLBACK_ENCODING and attempts.count(name) == 1:
            raise OSError("disk hiccup")
        return _offline_only(name)

    registry = EncodingRegistry(loader=flaky)
    assert registry.preload(["claude-3-haiku"], timeout=5) == {"claude-3-haiku": "bytes"}
    with pytest.raises(tokens.EncodingUnavailable):
        registry.get("claude-3-haiku")  # within the retry period: no new attempt
    assert attempts.count(FALLBACK_ENCODING) == 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + tokens.RETRY_AFTER_S + 1)
    assert registry.preload(["claude-3-haiku"], timeout=5) == {"claude-3-haiku": "cl100k_base"}
    assert attempts.count(FALLBACK_ENCODING) == 2


def test_module_level_get_encoding_works_offline() -> None:
    enc, name = tokens.get_encoding("claude-3-5-sonnet")
    assert name in {"cl100k_base", FALLBACK_ENCODING}
    assert len(enc.encode_ordinary("hello")) == 1


# --- counting ------------------------------------------------------------------------------------


def test_count_chat_cookbook_framing(offline_counter: TokenCounter) -> None:
    # 3 per message + "user" (1) + "hello" (1) + 3 reply priming: the 8 OpenAI reports for "hello".
    assert offline_counter.count_chat([{"role": "user", "content": "hello"}], "gpt-4") == 8
    named = [{"role": "user", "content": "hello", "name": "bob"}]
    assert offline_counter.count_chat(named, "gpt-4") == 8 + 1 + len(OFFLINE.encode_ordinary("bob"))


def test_count_chat_tool_calls_and_tools(offline_counter: TokenCounter) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    expected = 3 + sum(
        len(OFFLINE.encode_ordinary(s)) for s in ("assistant", "get_weather", '{"city":"Oslo"}')
    )
    assert offline_counter.count_chat([message], "gpt-4o") == expected + 3
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with_tools = offline_counter.count_chat([message], "gpt-4o", tools=tools)
    tools_json = jsonutil.dumps(tools).decode()
    assert (
        with_tools == expected + 3 + len(OFFLINE.encode_ordinary(tools_json)) + tokens.TOOLS_OVERHEAD_TOKENS
    )


def test_count_chat_content_parts(offline_counter: TokenCounter) -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    count = offline_counter.count_chat([{"role": "user", "content": parts}], "gpt-4o")
    text = len(OFFLINE.encode_ordinary("user")) + len(OFFLINE.encode_ordinary("what is this?"))
    assert count == 3 + text + 85 + IMAGE_WORST_CASE_TOKENS + 3


def test_count_input_shapes(offline_counter: TokenCounter) -> None:
    assert offline_counter.count_input("hello world", "text-embedding-3-small") == 2
    assert offline_counter.count_input(["hello", "world"], "text-embedding-3-small") == 2
    assert offline_counter.count_input([1, 2, 3], "text-embedding-3-small") == 3
    assert offline_counter.count_input([[1, 2], [3]], "text-embedding-3-small") == 3


# --- per-message cache ---------------------------------------------------------------------------


def _history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: why is the sky blue? " * 5})
        messages.append({"role": "assistant", "content": f"answer {i}: Rayleigh scattering. " * 8})
    return messages


def test_cache_hits_on_resent_history() -> None:
    registry = EncodingRegistry(loader=_offline_only)
    cached, uncached = TokenCounter(registry), TokenCounter(registry, cache_size=0)
    history = _history(10)
    for end in range(1, len(history) + 1):
        assert cached.count_chat(history[:end], "gpt-4o") == uncached.count_chat(history[:end], "gpt-4o")
    assert cached.misses == len(history)  # each message tokenized once
    assert cached.hits == sum(range(len(history)))
    assert uncached.hits == uncached.misses == 0


def test_cache_key_ignores_dict_order_and_includes_encoding() -> None:
    counter = TokenCounter(EncodingRegistry(loader=_offline_only))
    counter.count_chat([{"role": "user", "content": "x"}], "gpt-4o")
    counter.count_chat([{"content": "x", "role": "user"}], "gpt-4o")
    assert counter.hits == 1
    changed = TokenCounter(EncodingRegistry(loader=_offline_only))
    changed.count_chat([{"role": "user", "content": "x"}], "gpt-4o")
    changed.count_chat([{"role": "user", "content": "y"}], "gpt-4o")
    assert changed.hits == 0


def test_cache_is_bounded() -> None:
    counter = TokenCounter(EncodingRegistry(loader=_offline_only), cache_size=4)
    counter.count_chat(_history(10), "gpt-4o")
    assert counter.cache_len() == 4


# --- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        (1024, 1024, "high", 765),
        (1024, 1024, "low", 85),
        (1024, 1024, "auto", 765),
        (2048, 4096, "high", 1105),
        (4096, 8192, "high", 1105),
        (512, 512, "high", 255),
        (100, 100, "high", 255),
        (2048, 768, "high", 1445),
        (None, None, "high", 1445),
        (None, 300, "auto", 1445),
        (0, 0, "high", 1445),
        (None, None, "low", 85),
    ],
)
def test_image_tokens(width: int | None, height: int | None, detail: str, expected: int) -> None:
    assert image_tokens(width, height, detail) == expected


def test_unknown_size_is_the_worst_case() -> None:
    sizes = [1, 100, 511, 512, 513, 767, 768, 769, 1024, 1536, 2047, 2048, 2049, 4096, 10_000]
    assert IMAGE_WORST_CASE_TOKENS == max(image_tokens(w, h, "high") for w in sizes for h in sizes) == 1445


# --- never raises --------------------------------------------------------------------------------

WEIRD: list[Any] = [
    None,
    [],
    [None],
    "just a string",
    42,
    [1, 2.5, "x", True],
    [{"role": "user", "content": None}],
    [{"role": 5, "content": {"a": [1, {"b": None}]}, "name": 7}],
    [{"role": "user", "content": [None, 3, "raw", {"type": "text", "text": 5}, {"type": "image_url"}]}],
    [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}],
    [{"role": "assistant", "tool_calls": "junk"}],
    [{"role": "assistant", "tool_calls": [None, 1, {"function": None}, {"function": {"arguments": {}}}]}],
    [{"role": "user", "content": "\ud800 lone surrogate", "name": "\udfff"}],
    [{1: "non-str key", "content": "x"}],
    [{"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "ok"}]}]}],
    [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {"q": 1}}]}],
    [{"role": "user", "content": "<|endoftext|> special tokens are plain text here"}],
    [{"role": "user", "content": {"deep": [[[[[[["nested"]]]]]]]}}],
    [{"role": "user", "content": float("nan")}],
    [{"role": "user", "content": 10**40}],
]


@pytest.mark.parametrize("messages", WEIRD)
def test_weird_inputs_never_raise(offline_counter: TokenCounter, messages: Any) -> None:
    tools: Any = [{"x": {1, 2}}]  # a set is not JSON-serializable
    count = offline_counter.count_chat(messages, "gpt-4o", tools=tools)
    assert 0 <= count <= byte_upper_bound_chat(messages, tools)
    assert offline_counter.count_input(messages, "gpt-4o") <= byte_upper_bound_text(messages)


def test_count_text_never_raises(offline_counter: TokenCounter) -> None:
    assert offline_counter.count_text("\ud83d\ude00", "gpt-4o") <= 6
    assert offline_counter.count_text(None, "gpt-4o") == 1  # type: ignore[arg-type]
    assert offline_counter.count_text("x", None) == 1  # type: ignore[arg-type]


def test_encode_failure_falls_back_to_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding:
        name = "exploding"

        def encode_ordinary(self, text: str) -> list[int]:
            raise ValueError("boom")

    registry = EncodingRegistry(loader=lambda name: Exploding())  # type: ignore[arg-type,return-value]
    counter = TokenCounter(registry)
    assert counter.count_text("héllo", "gpt-4o") == 6


def test_deep_nesting_falls_back_to_the_bound(offline_counter: TokenCounter) -> None:
    content: Any = "leaf"
    for _ in range(5000):
        content = [{"type": "tool_result", "content": content}]
    messages = [{"role": "user", "content": content}]
    assert offline_counter.count_chat(messages, "gpt-4o") <= byte_upper_bound_chat(messages)


# --- the byte bound ------------------------------------------------------------------------------


def test_byte_upper_bound_text() -> None:
    assert byte_upper_bound_text("héllo") == 6
    assert byte_upper_bound_text(["ab", "c😀"]) == 2 + 5
    assert byte_upper_bound_text([5, 6, 7]) == 3
    assert byte_upper_bound_text([[5, 6], [7]]) == 3
    assert byte_upper_bound_text(None) == 0
    assert byte_upper_bound_text([]) == 0


_FRAGMENT = st.one_of(
    st.characters(),
    st.sampled_from(["\ud800", "\udfff", "\ud83d"]),  # lone surrogates
    st.sampled_from(list(" \t\n\r\u00a0\u3000")),
    st.sampled_from(list("中文日本語한국어")),
    st.sampled_from(["😀", "👍🏽", "🇳🇴", "👨‍👩‍👧", "\u200d", "é", "e\u0301", "\ud83d\ude00"]),
)
_TEXT = st.one_of(
    st.lists(_FRAGMENT, max_size=120).map("".join),
    st.text(st.sampled_from(list(" \n\t")), min_size=1, max_size=300),  # whitespace runs
    st.sampled_from(["", "<|endoftext|>", "hello world", "a" * 500, "1234567890" * 20]),
)
_PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.builds(
        lambda d: {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": d}},
        st.sampled_from(["low", "high", "auto", None]),
    ),
)
_CALL = st.builds(
    lambda n, a: {"id": "call_1", "type": "function", "function": {"name": n, "arguments": a}}, _TEXT, _TEXT
)


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(["system", "user", "assistant", "tool"]))}
    message["content"] = draw(st.one_of(st.none(), _TEXT, st.lists(_PART, max_size=4)))
    if draw(st.booleans()):
        message["name"] = draw(_TEXT)
    if draw(st.booleans()):
        message["tool_calls"] = draw(st.lists(_CALL, max_size=3))
    return message


_TOOLS = st.one_of(
    st.none(),
    st.lists(
        st.builds(lambda n, d: {"type": "function", "function": {"name": n, "description": d}}, _TEXT, _TEXT)
    ),
)


_SHARED = TokenCounter(EncodingRegistry(loader=_offline_only))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_message(), max_size=12), tools=_TOOLS)
def test_byte_bound_is_an_upper_bound(messages: list[dict[str, Any]], tools: Any) -> None:
    counter = _SHARED  # shared across examples, so cached counts are checked too
    bound = byte_upper_bound_chat(messages, tools)
    assert counter.count_chat(messages, "gpt-4o", tools=tools) <= bound
    assert counter.count_chat(messages, "claude-3-5-sonnet", tools=tools) <= bound


@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_text_bound_is_an_upper_bound(text: str) -> None:
    counter = _SHARED
    assert counter.count_text(text, "gpt-4o") <= byte_upper_bound_text(text)
    assert counter.count_input([text, text], "gpt-4o") <= byte_upper_bound_text([text, text])


def test_chat_prompt_bound_adds_what_the_walk_does_not_see() -> None:
    messages = [{"role": "user", "content": "héllo"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    plain = {"model": "gpt-4o", "messages": messages, "tools": tools, "max_tokens": 5}
    assert chat_prompt_bound(plain) == byte_upper_bound_chat(messages, tools)  # a plain chat: unchanged
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    functions = [{"name": "lookup", "parameters": {"type": "object"}}]
    system = [{"type": "text", "text": "Be brief. ✓"}]
    full = {**plain, "response_format": schema, "functions": functions, "system": system}
    extra = sum(len(jsonutil.dumps(v)) for v in (schema, functions, system)) + 4
    assert chat_prompt_bound(full) == byte_upper_bound_chat(messages, tools) + extra
