"""Which request heads the lean front serves itself, and which it leaves to aiohttp's parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.front import PlainHead, parse_plain_head

MAX_BODY = 1000


def head(*lines: str, request_line: str = "POST /v1/chat/completions HTTP/1.1") -> bytes:
    return ("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("latin-1")


def parse(raw: bytes, max_body: int = MAX_BODY) -> PlainHead | None:
    return parse_plain_head(raw, raw.index(b"\r\n\r\n"), max_body)


def test_a_plain_request_is_parsed() -> None:
    raw = head("Host: gw", "Authorization:  Bearer sk-x ", "Content-Length: 12", "X-Tag: a", "x-tag: b")
    plain = parse(raw)
    assert plain is not None
    assert plain.route == ("openai", "chat")
    assert plain.length == 12 and plain.body_start == len(raw) and plain.keep_alive
    assert plain.headers["authorization"] == "Bearer sk-x"  # optional whitespace trimmed
    assert plain.headers.getall("X-TAG") == ["a", "b"]


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/chat/completions", ("openai", "chat")),
        ("/v1/completions", ("openai", "text_completion")),
        ("/v1/embeddings", ("openai", "embeddings")),
        ("/v1/messages", ("anthropic", "chat")),
    ],
)
def test_every_llm_path_is_plain(path: str, route: tuple[str, str]) -> None:
    plain = parse(head("Content-Length: 2", request_line=f"POST {path} HTTP/1.1"))
    assert plain is not None and plain.route == route


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive, close", "CLOSE , foo"])
def test_connection_close_ends_keep_alive(value: str) -> None:
    plain = parse(head("Content-Length: 2", f"Connection: {value}"))
    assert plain is not None and not plain.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(head("Content-Length: 2", request_line="GET /v1/chat/completions HTTP/1.1"), id="get"),
        pytest.param(
            head("Content-Length: 2", request_line="post /v1/chat/completions HTTP/1.1"), id="lowercase"
        ),
        pytest.param(
            head("Content-Length: 2", request_line="POST /v1/chat/completions HTTP/1.0"), id="http-1.0"
        ),
        pytest.param(
            head("Content-Length: 2", request_line="POST /v1/chat/completions?x=1 HTTP/1.1"), id="query"
        ),
        pytest.param(head("Content-Length: 2", request_line="POST /v1/models HTTP/1.1"), id="other-path"),
        pytest.param(head("Content-Length: 2", request_line="POST  /v1/messages HTTP/1.1"), id="two-spaces"),
        pytest.param(
            head("Content-Length: 2", request_line="POST http://gw/v1/messages HTTP/1.1"), id="absolute"
        ),
        pytest.param(head("Host: gw"), id="no-length"),
        pytest.param(head("Content-Length: 2", "Content-Length: 2"), id="two-lengths"),
        pytest.param(head("Content-Length: -2"), id="negative-length"),
        pytest.param(head("Content-Length: 0x10"), id="hex-length"),
        pytest.param(head("Content-Length: 1 2"), id="spaced-length"),
        pytest.param(head("Content-Length: " + "9" * 5000), id="length-past-int-digit-limit"),
        pytest.param(head(f"Content-Length: {MAX_BODY + 1}"), id="over-the-limit"),
        pytest.param(head("Content-Length: 2", "Transfer-Encoding: chunked"), id="smuggling"),
        pytest.param(head("Transfer-Encoding: chunked"), id="chunked"),
        pytest.param(head("Content-Length: 2", "Content-Encoding: gzip"), id="gzip"),
        pytest.param(head("Content-Length: 2", "Expect: 100-continue"), id="expect"),
        pytest.param(head("Content-Length: 2", "Upgrade: websocket"), id="upgrade"),
        pytest.param(head("Content-Length: 2", "Connection: Upgrade"), id="connection-upgrade"),
        pytest.param(head("Content-Length: 2", "X-A: 1", " folded"), id="obs-fold"),
        pytest.param(head("Content-Length: 2", "X-A : 1"), id="space-before-colon"),
        pytest.param(head("Content-Length: 2", "X(A): 1"), id="separator-in-name"),
        pytest.param(head("Content-Length: 2", ": 1"), id="empty-name"),
        pytest.param(head("Content-Length: 2", "X-A 1"), id="no-colon"),
        pytest.param(head("Content-Length: 2", "X-A: a\x00b"), id="nul-in-value"),
        pytest.param(head("Content-Length: 2", "X-A: a\x7fb"), id="del-in-value"),
        pytest.param(head("Content-Length: 2", "X-A: a\nb"), id="bare-lf"),
        pytest.param(head("Content-Length: 2", "X-A: caf\xe9"), id="not-ascii"),
        pytest.param(head("Content-Length: 2", *[f"X-{i}: v" for i in range(100)]), id="too-many-headers"),
        pytest.param(head("Content-Length: 2", "X-Big: " + "a" * 8200), id="head-too-large"),
    ],
)
def test_anything_not_plain_goes_to_aiohttp(raw: bytes) -> None:
    assert parse(raw) is None


def test_a_body_exactly_at_the_limit_is_plain() -> None:
    plain = parse(head(f"Content-Length: {MAX_BODY}"))
    assert plain is not None and plain.length == MAX_BODY


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(noise: bytes) -> None:
    raw = b"POST /v1/chat/completions HTTP/1.1\r\n" + noise + b"\r\n\r\n"
    plain = parse_plain_head(raw, raw.index(b"\r\n\r\n"), MAX_BODY)
    if plain is not None:  # whatever passed is a clean head with one decimal length
        assert 0 <= plain.length <= MAX_BODY
        for name, value in plain.headers.items():
            assert name.isascii() and ":" not in name and value == value.strip(" \t")
            assert not any(ord(c) < 0x20 and c != "\t" for c in value)
