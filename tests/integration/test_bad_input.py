"""Bad input at the edge, over real sockets: one gateway process, the session's mock provider.

Every malformed, oversized, mistyped, unauthenticated or misrouted request must get a clear 4xx
in the caller's own wire format (OpenAI ``{"error": {...}}`` or Anthropic ``{"type": "error",
...}`` with a ``request-id`` header), never a 500 and never a traceback; and after each test the
gateway still serves a normal request and has logged no unexpected error.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import (
    ADMIN_TOKEN,
    MOCK_CONTROL,
    PROVIDER_SECRET,
    GatewayProc,
    MockProvider,
    base_config,
    http_json,
    write_config,
)

MAX_BODY = 4096
OK_CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
OK_MESSAGES: dict[str, Any] = {
    "model": "claude-sonnet",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
OK_COMPLETION: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
OK_EMBEDDINGS: dict[str, Any] = {"model": "text-embedding-3-small", "input": "hi"}
DEMO = {"authorization": "Bearer sk-demo"}
ANTHROPIC = {"x-api-key": "sk-demo", "anthropic-version": "2023-06-01"}
# Headers a client may send that must never reach the provider, even when the allow-list names them.
NEVER_FORWARDED = ["te", "keep-alive", "proxy-authorization", "authorization", "x-api-key", "cookie"]


@dataclass
class Resp:
    status: int
    raw: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


@dataclass
class Edge:
    gw: GatewayProc
    mock: MockProvider
    log_mark: int = 0

    def send(
        self,
        method: str,
        path: str,
        body: bytes | Any = None,
        headers: dict[str, str] | None = None,
        chunks: list[bytes] | None = None,
    ) -> Resp:
        """One request on a fresh connection (http.client: it sends any header verbatim)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
        data: Any = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        if chunks is not None:
            data = iter(chunks)  # no Content-Length: http.client sends Transfer-Encoding: chunked
        try:
            conn.request(method, path, body=data, headers=headers or {}, encode_chunked=chunks is not None)
            resp = conn.getresponse()
            raw = resp.read()
            return Resp(resp.status, raw, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def chat(self, body: bytes | Any, headers: dict[str, str] | None = None) -> Resp:
        return self.send("POST", "/v1/chat/completions", body, {**DEMO, **(headers or {})})

    def messages(self, body: bytes | Any, headers: dict[str, str] | None = None) -> Resp:
        return self.send("POST", "/v1/messages", body, {**ANTHROPIC, **(headers or {})})

    def mock_stats(self) -> dict[str, Any]:
        status, stats, _ = http_json("GET", self.mock.url + "/_mock/stats")
        assert status == 200
        return dict(stats)

    def new_log(self) -> str:
        text = self.gw.proc.log()
        fresh, self.log_mark = text[self.log_mark :], len(text)
        return fresh


@pytest.fixture(scope="module")
def edge(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp: Path = tmp_path_factory.mktemp("bad-input")
    cfg = base_config(mock.url)
    cfg["server"]["max_body_bytes"] = MAX_BODY
    # The allow-list names hop-by-hop and credential headers on purpose: they must be dropped anyway.
    forward = [*MOCK_CONTROL, "x-hop-*", "connection", "upgrade", *NEVER_FORWARDED]
    for provider in cfg["providers"].values():
        provider["forward_headers"] = forward
    gw = GatewayProc(write_config(tmp, cfg))
    try:
        yield Edge(gw, mock)
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def still_serving(edge: Edge) -> Iterator[None]:
    """After every test: a normal request works and the gateway logged no unexpected error."""
    edge.new_log()
    yield
    ok = edge.chat(OK_CHAT)
    assert ok.status == 200, ok.raw
    assert ok.json["choices"][0]["message"]["content"]
    log = edge.new_log()
    bad = [line for line in log.splitlines() if '"level":"error"' in line or "Traceback" in line]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- assertions on error bodies


def assert_clean(resp: Resp) -> None:
    assert 400 <= resp.status < 500, (resp.status, resp.raw)
    assert resp.headers["content-type"].startswith("application/json")
    for marker in (b"Traceback", b'File "', b"/gateway/", b".py"):
        assert marker not in resp.raw, resp.raw


def openai_error(
    resp: Resp, status: int, *, param: str | None = None, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}`` and x-request-id."""
    assert_clean(resp)
    assert resp.status == status, resp.raw
    body = resp.json
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == type_, err
    assert err["param"] == param, err
    assert resp.headers.get("x-request-id")
    return dict(err)


def anthropic_error(resp: Resp, status: int, type_: str) -> dict[str, Any]:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}`` plus a request-id header."""
    assert_clean(resp)
    assert resp.status == status, resp.raw
    body = resp.json
    assert body["type"] == "error", body
    assert body["error"]["type"] == type_, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "choices" not in body and "param" not in body["error"]
    assert resp.headers.get("request-id")
    assert body.get("request_id") == resp.headers["request-id"]
    return dict(body["error"])


# ---------------------------------------------------------------- bodies that are not JSON objects

MALFORMED = [
    pytest.param(b'{"model":', id="truncated"),
    pytest.param(b"{'model': 'gpt-4o'}", id="single-quotes"),
    pytest.param(b'{"model": "gpt-4o",}', id="trailing-comma"),
    pytest.param(b'{"model": "gpt-4o"}}', id="trailing-brace"),
    pytest.param(b'{"model": "gpt-4o"} {"again": 1}', id="two-documents"),
    pytest.param(b"model=gpt-4o&messages=hi", id="form-encoded"),
    pytest.param(b'{"temperature": NaN}', id="nan"),
    pytest.param(b'{"temperature": Infinity}', id="infinity"),
    pytest.param(b'{"temperature": -Infinity}', id="minus-infinity"),
    pytest.param(b'{"temperature": 1e999}', id="overflowing-float"),
    pytest.param(b'{"max_tokens": ' + b"9" * 3000 + b"}", id="3000-digit-integer"),
    pytest.param(b'{"model": "\xff\xfe\xc3"}', id="invalid-utf8"),
    pytest.param(b'{"model": "\\ud800"}', id="lone-surrogate"),
    pytest.param(b'{"model": "a\x00b"}', id="raw-nul-in-string"),
    pytest.param(b"\xef\xbb\xbf" + orjson.dumps(OK_CHAT), id="utf8-bom"),
    pytest.param(b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}", id="nested-past-the-parser-limit"),
    pytest.param(b"\x00" * 64, id="binary-zeros"),
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_json_is_a_400_in_openai_format(edge: Edge, body: bytes) -> None:
    err = openai_error(edge.chat(body), 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("body", MALFORMED[:4] + MALFORMED[6:8])
def test_malformed_json_is_a_400_in_anthropic_format(edge: Edge, body: bytes) -> None:
    err = anthropic_error(edge.messages(body), 400, "invalid_request_error")
    assert "JSON" in err["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_an_empty_body_is_a_400(edge: Edge, path: str) -> None:
    err = openai_error(edge.send("POST", path, b"", DEMO), 400)
    assert "empty" in err["message"]
    err = openai_error(edge.send("POST", path, None, DEMO), 400)  # no body, no Content-Length
    assert "empty" in err["message"]


def test_an_empty_body_on_messages_is_an_anthropic_400(edge: Edge) -> None:
    assert "empty" in anthropic_error(edge.messages(b""), 400, "invalid_request_error")["message"]


@pytest.mark.parametrize("body", [b"[]", b'[{"model": "gpt-4o"}]', b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_a_400(edge: Edge, body: bytes) -> None:
    assert "JSON object" in openai_error(edge.chat(body), 400)["message"]
    assert "JSON object" in anthropic_error(edge.messages(body), 400, "invalid_request_error")["message"]


def test_whitespace_around_the_object_is_fine(edge: Edge) -> None:
    resp = edge.chat(b"\n\t  " + orjson.dumps(OK_CHAT) + b"\r\n  ")
    assert resp.status == 200, resp.raw


# ---------------------------------------------------------------- oversized bodies


def big_chat(size: int) -> bytes:
    """A valid chat body of exactly ``size`` bytes."""
    shell = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": ""}]})
    body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (size - len(shell))}]}
    )
    assert len(body) == size
    return body


def raw_exchange(port: int, head: bytes, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Write bytes on a socket and read whatever comes back until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except TimeoutError:
            pass
    return out


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def parse_raw(raw: bytes) -> Resp:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return Resp(status, body, headers)


def test_a_body_at_the_limit_is_accepted(edge: Edge) -> None:
    resp = edge.chat(big_chat(MAX_BODY))
    assert resp.status == 200, resp.raw


def test_content_length_over_the_limit_is_a_413(edge: Edge) -> None:
    err = openai_error(edge.chat(big_chat(MAX_BODY + 1)), 413)
    assert err["code"] == "request_too_large"
    assert str(MAX_BODY) in err["message"]


def test_an_announced_huge_body_is_refused_before_it_is_sent(edge: Edge) -> None:
    # Content-Length says 1 GB and not one body byte follows: the 413 must come from the header alone.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-demo\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    started = time.monotonic()
    resp = parse_raw(raw_exchange(edge.gw.port, head))
    assert time.monotonic() - started < 3
    assert openai_error(resp, 413)["code"] == "request_too_large"


def test_a_chunked_body_over_the_limit_is_a_413(edge: Edge) -> None:
    body = big_chat(MAX_BODY * 3)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    err = openai_error(edge.send("POST", "/v1/chat/completions", headers=DEMO, chunks=chunks), 413)
    assert err["code"] == "request_too_large"


def test_a_chunked_body_under_the_limit_is_read_whole(edge: Edge) -> None:
    # Many small chunks, each its own write: the gateway must read to the end, not one buffer's worth.
    body = big_chat(MAX_BODY - 10)
    chunks = [body[i : i + 97] for i in range(0, len(body), 97)]
    resp = edge.send("POST", "/v1/chat/completions", headers=DEMO, chunks=chunks)
    assert resp.status == 200, resp.raw


def test_a_slow_chunked_body_is_read_whole(edge: Edge) -> None:
    body = orjson.dumps(OK_CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-demo\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", edge.gw.port), timeout=10) as s:
        s.sendall(head)
        for i in range(0, len(body), 7):
            piece = body[i : i + 7]
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.005)
        s.sendall(b"0\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert parse_raw(out).status == 200, out


def test_the_anthropic_413_is_request_too_large(edge: Edge) -> None:
    body = orjson.dumps({**OK_MESSAGES, "system": "x" * MAX_BODY})
    anthropic_error(edge.messages(body), 413, "request_too_large")


def test_a_gzip_bomb_is_cut_at_the_limit(edge: Edge) -> None:
    bomb = gzip.compress(b'{"model": "gpt-4o", "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}')
    assert len(bomb) < 64 * 1024
    resp = edge.chat(bomb, {"content-encoding": "gzip"})
    assert openai_error(resp, 413)["code"] == "request_too_large"


def test_a_body_that_fails_to_decompress_is_a_400(edge: Edge) -> None:
    resp = edge.chat(b"\x1f\x8b\x08\x00this is not gzip", {"content-encoding": "gzip"})
    assert "malformed request body" in openai_error(resp, 400)["message"]


def test_a_gzip_body_is_accepted(edge: Edge) -> None:
    resp = edge.chat(gzip.compress(orjson.dumps(OK_CHAT)), {"content-encoding": "gzip"})
    assert resp.status == 200, resp.raw


def test_a_client_that_hangs_up_mid_body_is_not_a_gateway_error(edge: Edge) -> None:
    body = orjson.dumps(OK_CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-demo\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) + 100)
    )
    with socket.create_connection(("127.0.0.1", edge.gw.port), timeout=5) as s:
        s.sendall(head + body)
        time.sleep(0.2)
    # The server cancels the handler (or its body read fails); either way the autouse check then
    # asserts that nothing was logged as an error and the next request is served.
    time.sleep(0.5)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n", id="bad-length"
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", id="huge-header"
        ),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"mod\r\nzz\r\n',
            id="bad-chunk-size",
        ),
    ],
)
def test_broken_http_is_a_400_without_details_of_the_server(edge: Edge, request_bytes: bytes) -> None:
    resp = parse_raw(raw_exchange(edge.gw.port, request_bytes, wait=3))
    assert resp.status == 400
    assert b"Traceback" not in resp.raw and b".py" not in resp.raw


# ---------------------------------------------------------------- field types: the param is named

WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    # (path, body, param)
    ("/v1/chat/completions", {**OK_CHAT, "model": 5}, "model"),
    ("/v1/chat/completions", {**OK_CHAT, "model": ""}, "model"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": []}, "messages"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": ["hi"]}, "messages[0]"),
    ("/v1/chat/completions", {**OK_CHAT, "messages": [{"content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {**OK_CHAT, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {**OK_CHAT, "top_p": True}, "top_p"),
    ("/v1/chat/completions", {**OK_CHAT, "presence_penalty": "1"}, "presence_penalty"),
    ("/v1/chat/completions", {**OK_CHAT, "frequency_penalty": [0]}, "frequency_penalty"),
    ("/v1/chat/completions", {**OK_CHAT, "n": 0}, "n"),
    ("/v1/chat/completions", {**OK_CHAT, "n": 1000}, "n"),
    ("/v1/chat/completions", {**OK_CHAT, "seed": "1"}, "seed"),
    ("/v1/chat/completions", {**OK_CHAT, "stream": "true"}, "stream"),
    ("/v1/chat/completions", {**OK_CHAT, "tools": {}}, "tools"),
    ("/v1/chat/completions", {**OK_CHAT, "stop": 5}, "stop"),
    ("/v1/chat/completions", {**OK_CHAT, "stop": ["a", 1]}, "stop"),
    ("/v1/chat/completions", {**OK_CHAT, "stream_options": True}, "stream_options"),
    ("/v1/chat/completions", {**OK_CHAT, "metadata": []}, "metadata"),
    ("/v1/chat/completions", {**OK_CHAT, "user": 1}, "user"),
    ("/v1/chat/completions", {**OK_CHAT, "max_tokens": "10"}, "max_tokens"),
    ("/v1/chat/completions", {**OK_CHAT, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {**OK_CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
    ("/v1/chat/completions", {**OK_CHAT, "response_format": "json"}, "response_format"),
    ("/v1/completions", {**OK_COMPLETION, "prompt": 5}, "prompt"),
    ("/v1/completions", {**OK_COMPLETION, "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {**OK_COMPLETION, "n": "2"}, "n"),
    ("/v1/embeddings", {**OK_EMBEDDINGS, "input": 5}, "input"),
    ("/v1/embeddings", {**OK_EMBEDDINGS, "input": []}, "input"),
    ("/v1/embeddings", {**OK_EMBEDDINGS, "dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {**OK_EMBEDDINGS, "model": None}, "model"),
]


@pytest.mark.parametrize(("path", "body", "param"), WRONG_TYPES)
def test_a_wrong_type_names_its_param(edge: Edge, path: str, body: dict[str, Any], param: str) -> None:
    err = openai_error(edge.send("POST", path, body, DEMO), 400, param=param)
    assert param.partition("[")[0] in err["message"]


MISSING_FIELDS = [
    ("/v1/chat/completions", {"messages": OK_CHAT["messages"]}, "model"),
    ("/v1/chat/completions", {"model": "gpt-4o"}, "messages"),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct"}, "prompt"),
    ("/v1/completions", {"prompt": "hi"}, "model"),
    ("/v1/embeddings", {"model": "text-embedding-3-small"}, "input"),
    ("/v1/embeddings", {"input": "hi"}, "model"),
    ("/v1/chat/completions", {}, "model"),
]


@pytest.mark.parametrize(("path", "body", "param"), MISSING_FIELDS)
def test_a_missing_field_names_its_param(edge: Edge, path: str, body: dict[str, Any], param: str) -> None:
    err = openai_error(edge.send("POST", path, body, DEMO), 400, param=param)
    assert f"`{param}`" in err["message"]


ANTHROPIC_WRONG = [
    ({k: v for k, v in OK_MESSAGES.items() if k != "max_tokens"}, "max_tokens: Field required"),
    ({**OK_MESSAGES, "max_tokens": "16"}, "max_tokens"),
    ({**OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({**OK_MESSAGES, "model": 1}, "model"),
    ({k: v for k, v in OK_MESSAGES.items() if k != "messages"}, "messages"),
    ({**OK_MESSAGES, "messages": [{"content": "x"}]}, "messages[0].role"),
    ({**OK_MESSAGES, "temperature": "warm"}, "temperature"),
    ({**OK_MESSAGES, "stream": 1}, "stream"),
    ({**OK_MESSAGES, "system": 5}, "system"),
    ({**OK_MESSAGES, "tools": "all"}, "tools"),
]


@pytest.mark.parametrize(("body", "mentions"), ANTHROPIC_WRONG)
def test_anthropic_field_errors_are_anthropic_400s(edge: Edge, body: dict[str, Any], mentions: str) -> None:
    err = anthropic_error(edge.messages(body), 400, "invalid_request_error")
    assert mentions in err["message"]


def test_unknown_fields_pass_through_to_the_provider(edge: Edge) -> None:
    resp = edge.chat({**OK_CHAT, "x_vendor_field": {"nested": [1, 2]}, "logit_bias": {"50256": -100}})
    assert resp.status == 200, resp.raw
    assert edge.mock_stats()["last_body"]["x_vendor_field"] == {"nested": [1, 2]}


# ---------------------------------------------------------------- models and keys


def test_an_unknown_model_is_a_404_naming_model(edge: Edge) -> None:
    err = openai_error(edge.chat({**OK_CHAT, "model": "gpt-nope"}), 404, param="model")
    assert err["code"] == "model_not_found"
    assert "gpt-nope" in err["message"]


def test_an_unknown_model_on_messages_is_anthropic_not_found(edge: Edge) -> None:
    anthropic_error(edge.messages({**OK_MESSAGES, "model": "claude-nope"}), 404, "not_found_error")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/embeddings"])
def test_unknown_models_on_other_endpoints(edge: Edge, path: str) -> None:
    body = {"model": "nope", "prompt": "x", "input": "x"}
    assert openai_error(edge.send("POST", path, body, DEMO), 404, param="model")["code"] == "model_not_found"


def test_a_model_the_team_may_not_use_looks_exactly_like_an_unknown_one(edge: Edge) -> None:
    other = {"authorization": "Bearer sk-other"}
    allowed = edge.send("POST", "/v1/chat/completions", {**OK_CHAT, "model": "gpt-4o-mini"}, other)
    assert allowed.status == 200, allowed.raw
    denied = openai_error(edge.send("POST", "/v1/chat/completions", OK_CHAT, other), 404, param="model")
    unknown_body = {**OK_CHAT, "model": "zz"}
    unknown = openai_error(edge.send("POST", "/v1/chat/completions", unknown_body, other), 404, param="model")
    assert denied["code"] == unknown["code"] == "model_not_found"
    assert denied["message"].replace("gpt-4o", "zz") == unknown["message"]  # nothing leaks


def test_a_model_on_the_wrong_endpoint_is_rejected(edge: Edge) -> None:
    resp = edge.send("POST", "/v1/embeddings", {"model": "gpt-4o", "input": "hi"}, DEMO)
    openai_error(resp, 404, param="model")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"authorization": "Basic c2stZGVtbzo="}, id="basic-auth"),
        pytest.param({"authorization": "sk-demo"}, id="no-scheme"),
    ],
)
def test_a_missing_key_is_a_401(edge: Edge, headers: dict[str, str]) -> None:
    resp = edge.send("POST", "/v1/chat/completions", OK_CHAT, headers)
    err = openai_error(resp, 401, type_="authentication_error")
    assert "API key" in err["message"]


@pytest.mark.parametrize("key", ["sk-wrong", "sk-demo ", "SK-DEMO", "sk-" + "x" * 5000, "sk-d\u00e9mo"])
def test_a_bad_key_is_a_401(edge: Edge, key: str) -> None:
    headers = {"authorization": f"Bearer {key}".encode().decode("latin-1")}
    resp = edge.send("POST", "/v1/chat/completions", OK_CHAT, headers)
    if key == "sk-demo ":  # surrounding whitespace is not part of a key
        assert resp.status == 200
        return
    assert openai_error(resp, 401, type_="authentication_error")["code"] == "invalid_api_key"


def test_anthropic_key_errors_are_anthropic_401s(edge: Edge) -> None:
    anthropic_error(
        edge.send("POST", "/v1/messages", OK_MESSAGES, {"anthropic-version": "2023-06-01"}),
        401,
        "authentication_error",
    )
    anthropic_error(edge.messages(OK_MESSAGES, {"x-api-key": "sk-wrong"}), 401, "authentication_error")


def test_a_revoked_key_is_a_401(edge: Edge) -> None:
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    status, created, _ = http_json("POST", edge.gw.url + "/admin/keys", {"team": "demo", "name": "t"}, admin)
    assert status == 201, created
    key = {"authorization": f"Bearer {created['key']}"}
    assert edge.send("POST", "/v1/chat/completions", OK_CHAT, key).status == 200
    status, _, _ = http_json("DELETE", f"{edge.gw.url}/admin/keys/{created['id']}", None, admin)
    assert status == 200
    err = openai_error(
        edge.send("POST", "/v1/chat/completions", OK_CHAT, key), 401, type_="authentication_error"
    )
    assert err["code"] == "key_revoked"
    anthropic_error(edge.messages(OK_MESSAGES, {"x-api-key": created["key"]}), 401, "authentication_error")


def test_a_bad_key_on_list_models_is_a_401(edge: Edge) -> None:
    resp = edge.send("GET", "/v1/models", None, {"authorization": "Bearer sk-wrong"})
    openai_error(resp, 401, type_="authentication_error")


# ---------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/embeddings"),
        ("GET", "/v1/completions"),
        ("POST", "/v1/models"),
        ("GET", "/v1/nope"),
        ("POST", "/v2/chat/completions"),
        ("GET", "/"),
        ("GET", "/v1/chat/completions/extra"),
        ("GET", "/%2e%2e/etc/passwd"),
        ("PATCH", "/metrics"),
    ],
)
def test_unknown_routes_and_methods_are_openai_404s(edge: Edge, method: str, path: str) -> None:
    resp = edge.send(method, path, b"{}" if method != "GET" else None, DEMO)
    err = openai_error(resp, 404)
    assert "unknown endpoint" in err["message"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_methods_on_messages_are_anthropic_404s(edge: Edge, method: str) -> None:
    resp = edge.send(method, "/v1/messages", None, {"x-api-key": "sk-demo"})
    anthropic_error(resp, 404, "not_found_error")


def test_an_anthropic_client_gets_anthropic_404s_anywhere(edge: Edge) -> None:
    anthropic_error(edge.send("GET", "/v1/nope", None, ANTHROPIC), 404, "not_found_error")


# ---------------------------------------------------------------- huge, deep and strange values


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 2**31),
        ("max_tokens", 2**63 - 1),
        ("max_tokens", 2**64 - 1),
        ("max_tokens", 10**30),  # parses as a float: not an integer
        ("max_tokens", -(2**63)),
        ("n", 2**40),
        ("seed", 2**64 - 1),
    ],
)
def test_huge_integers_in_checked_fields_are_400s(edge: Edge, field: str, value: int) -> None:
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"%s":%d}' % (field.encode(), value)
    openai_error(edge.chat(body), 400, param=field)


def test_huge_max_tokens_on_messages_is_an_anthropic_400(edge: Edge) -> None:
    anthropic_error(edge.messages({**OK_MESSAGES, "max_tokens": 2**63 - 1}), 400, "invalid_request_error")


@pytest.mark.parametrize(
    "extra",
    [
        b'"temperature": 1.7976931348623157e308',
        b'"temperature": -1e-320',
        b'"vendor": 18446744073709551615',
        b'"vendor": -9223372036854775808',
        b'"vendor": 123456789012345678901234567890',
    ],
)
def test_huge_numbers_elsewhere_never_break_the_gateway(edge: Edge, extra: bytes) -> None:
    resp = edge.chat(b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],' + extra + b"}")
    assert resp.status == 200, resp.raw  # passed through; the provider judges its own parameters


@pytest.mark.parametrize("depth", [254, 300, 1000])
def test_deeply_nested_json_is_a_400(edge: Edge, depth: int) -> None:
    body = (
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"x":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    err = openai_error(edge.chat(body), 400)
    assert "nested too deeply" in err["message"]


@pytest.mark.parametrize("where", ["content", "extra"])
def test_nesting_below_the_limit_is_served(edge: Edge, where: str) -> None:
    deep = b"[" * 200 + b"]" * 200
    if where == "content":
        body = b'{"model":"gpt-4o","messages":[{"role":"user","content":' + deep + b"}]}"
    else:
        body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"x":' + deep + b"}"
    resp = edge.chat(body)
    assert resp.status == 200, resp.raw  # deep but encodable: the provider judges the content


@pytest.mark.parametrize(
    "content",
    [
        "\u0000 nul",
        "\u202e right-to-left override \u202c",
        "Z\u0335\u0321a\u0338\u0322l\u0334g\u0335o\u0336",
        "\U0001f600\U0001f4a9" * 50,
        "\ufeff bom in text \ufffe \uffff",
        "\U0010ffff last code point, \U000e0001 tag",
        "日本語のテキスト العربية עברית",
        "\x1b[31m escape codes \x07",
    ],
)
def test_unicode_garbage_in_content_is_served(edge: Edge, content: str) -> None:
    body = {**OK_CHAT, "messages": [{"role": "user", "content": content}]}
    resp = edge.chat(body)
    assert resp.status == 200, resp.raw
    resp = edge.messages({**OK_MESSAGES, "messages": [{"role": "user", "content": content}]})
    assert resp.status == 200, resp.raw


@pytest.mark.parametrize(
    "model", ["gpt-4o\u0000", "gpt\u202e-4o", "\U0001f600", "../../etc/passwd", "x" * 3000]
)
def test_unicode_garbage_in_the_model_is_a_404(edge: Edge, model: str) -> None:
    openai_error(edge.chat({**OK_CHAT, "model": model}), 404, param="model")


def test_an_odd_role_string_is_the_providers_business(edge: Edge) -> None:
    body = {**OK_CHAT, "messages": [{"role": "us\u00e9r\u0000", "content": "hi"}]}
    resp = edge.chat(body)
    assert resp.status == 200, resp.raw
    assert edge.mock_stats()["last_body"]["messages"][0]["role"] == "us\u00e9r\u0000"


# ---------------------------------------------------------------- request ids and headers


def test_a_client_request_id_is_echoed(edge: Edge) -> None:
    resp = edge.chat(OK_CHAT, {"x-request-id": "client-id-123"})
    assert resp.status == 200
    assert resp.headers["x-request-id"] == "client-id-123"


def test_a_client_request_id_is_echoed_on_errors_too(edge: Edge) -> None:
    resp = edge.send("POST", "/v1/chat/completions", OK_CHAT, {"x-request-id": "err-id-7"})
    openai_error(resp, 401, type_="authentication_error")
    assert resp.headers["x-request-id"] == "err-id-7"
    resp = edge.chat(b"{", {"x-request-id": "err-id-8"})
    assert resp.headers["x-request-id"] == "err-id-8"


def test_anthropic_request_id_header_and_body(edge: Edge) -> None:
    resp = edge.messages(OK_MESSAGES)
    assert resp.status == 200, resp.raw
    assert resp.headers["request-id"] == resp.headers["x-request-id"]
    resp = edge.messages(OK_MESSAGES, {"x-request-id": "anth-42"})
    assert resp.headers["request-id"] == "anth-42"
    err = edge.messages({**OK_MESSAGES, "max_tokens": 0}, {"x-request-id": "anth-43"})
    anthropic_error(err, 400, "invalid_request_error")
    assert err.headers["request-id"] == "anth-43" and err.json["request_id"] == "anth-43"


def test_generated_request_ids_are_unique(edge: Edge) -> None:
    ids = {edge.chat(OK_CHAT).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


def test_an_unreasonable_request_id_is_replaced(edge: Edge) -> None:
    resp = edge.chat(OK_CHAT, {"x-request-id": "r" * 500})
    assert resp.status == 200
    assert resp.headers["x-request-id"] != "r" * 500
    assert resp.headers["x-request-id"]


def test_hop_by_hop_headers_and_client_credentials_never_reach_the_provider(edge: Edge) -> None:
    headers = {
        **DEMO,
        "Connection": "keep-alive, x-hop-named, X-Mock-Named",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Cookie": "session=client-secret",
        "x-api-key": "sk-demo",
        "x-hop-named": "hop-by-hop-value",
        "x-mock-named": "hop-by-hop-value",
        "x-hop-kept": "end-to-end-value",
        "x-mock-kept": "end-to-end-value",
        "x-request-id": "hop-test-1",
    }
    resp = edge.send("POST", "/v1/chat/completions", OK_CHAT, headers)
    assert resp.status == 200, resp.raw
    stats = edge.mock_stats()
    seen = stats["last_headers"]
    for name in (
        "te",
        "keep-alive",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-hop-named",
        "x-mock-named",
    ):
        assert name not in seen, (name, seen)
    assert seen["x-hop-kept"] == seen["x-mock-kept"] == "end-to-end-value"
    assert seen["authorization"] == f"Bearer {PROVIDER_SECRET}"
    assert stats["last_auth"] == f"Bearer {PROVIDER_SECRET}"
    assert "keep-alive, x-hop-named" not in seen.get("connection", "")
    for value in seen.values():
        assert "sk-demo" not in value and "client-secret" not in value and "hop-by-hop" not in value


def test_the_anthropic_client_key_never_reaches_the_provider(edge: Edge) -> None:
    resp = edge.messages(OK_MESSAGES, {"TE": "trailers", "Connection": "x-hop-a", "x-hop-a": "1"})
    assert resp.status == 200, resp.raw
    seen = edge.mock_stats()["last_headers"]
    assert seen.get("x-api-key") == PROVIDER_SECRET
    assert "te" not in seen and "x-hop-a" not in seen


def test_gateway_headers_on_every_success(edge: Edge) -> None:
    for resp in (
        edge.chat(OK_CHAT),
        edge.messages(OK_MESSAGES),
        edge.send("POST", "/v1/completions", OK_COMPLETION, DEMO),
        edge.send("POST", "/v1/embeddings", OK_EMBEDDINGS, DEMO),
    ):
        assert resp.status == 200, resp.raw
        assert resp.headers["x-gateway-model"]
        assert resp.headers["x-gateway-route"] == "default"
        assert resp.headers["x-gateway-cache"] == "bypass"
        assert resp.headers["x-gateway-cost-usd"].startswith("0.")
        assert resp.headers["x-request-id"]
