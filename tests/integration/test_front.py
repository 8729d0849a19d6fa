"""The lean HTTP/1.1 front (gateway/http/front.py), over real sockets against a running gateway.

The front serves plain LLM requests itself and hands any other connection to aiohttp. These tests
drive raw HTTP/1.1 at it: pipelining, requests split into tiny pieces, keep-alive across the handover,
``Connection: close``, chunked streams read slowly (write backpressure), the cases aiohttp must keep
answering (request smuggling, 100-continue, HTTP/1.0), the idle timeout and the shutdown deadline.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from gateway.config.load import load_config
from gateway.core import Gateway
from gateway.http.front import Front
from gateway.store.memory import MemoryStore
from tests.harness import GatewayProc, MockProvider, base_config, wait_for, write_config

CHAT = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def post(body: bytes, *extra: str, path: str = "/v1/chat/completions", version: str = "HTTP/1.1") -> bytes:
    head = [f"POST {path} {version}", "Host: gw", "Authorization: Bearer sk-demo", *extra]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """A raw client connection that reads HTTP/1.1 responses one at a time."""

    def __init__(self, port: int, timeout: float = 15.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._take_line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._take(2) == b"\r\n"
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return Response(status, headers, body)

    def closed_by_server(self) -> bool:
        try:
            return not self.buffer and self.sock.recv(1) == b""
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gw(mock: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp: Path = tmp_path_factory.mktemp("front")
    proc = GatewayProc(write_config(tmp, base_config(mock.url)))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def conn(gw: GatewayProc) -> Iterator[Conn]:
    c = Conn(gw.port)
    try:
        yield c
    finally:
        c.close()


def content(resp: Response) -> str:
    assert resp.status == 200, resp.body
    return str(orjson.loads(resp.body)["choices"][0]["message"]["content"])


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    conn.send(b"".join(post(CHAT, f"x-request-id: pipe-{i}") for i in range(4)))
    answers = [conn.response() for _ in range(4)]
    assert [a.headers["x-request-id"] for a in answers] == [f"pipe-{i}" for i in range(4)]
    assert all(content(a) for a in answers)


def test_a_request_in_tiny_pieces_is_served(conn: Conn) -> None:
    raw = post(CHAT, "x-request-id: pieces")
    for i in range(0, len(raw), 7):
        conn.send(raw[i : i + 7])
        time.sleep(0.002)
    resp = conn.response()
    assert content(resp) and resp.headers["x-request-id"] == "pieces"


def test_keep_alive_survives_the_handover_to_aiohttp(conn: Conn) -> None:
    """Plain, then a GET the front does not serve, then plain and chunked requests on one connection."""
    conn.send(post(CHAT))
    assert content(conn.response())
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    health = conn.response()
    assert (health.status, health.body) == (200, b"ok")
    conn.send(post(CHAT, "x-request-id: after-handover"))
    resp = conn.response()
    assert content(resp) and resp.headers["x-request-id"] == "after-handover"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
    conn.send(post(chunked, "Transfer-Encoding: chunked"))
    assert content(conn.response())


def test_connection_close_is_honoured(conn: Conn) -> None:
    conn.send(post(CHAT, "Connection: close"))
    resp = conn.response()
    assert content(resp) and resp.headers["connection"] == "close"
    assert conn.closed_by_server()


def test_errors_from_the_front_keep_the_connection(conn: Conn) -> None:
    conn.send(post(b'{"model": 5}') + post(b"not json") + post(CHAT))
    first, second, third = conn.response(), conn.response(), conn.response()
    assert first.status == 400 and orjson.loads(first.body)["error"]["param"] == "model"
    assert second.status == 400 and "not valid JSON" in orjson.loads(second.body)["error"]["message"]
    assert content(third)


def test_an_anthropic_request_is_answered_in_anthropic_shape(conn: Conn) -> None:
    body = orjson.dumps(
        {"model": "claude-sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    )
    conn.send(post(body, "anthropic-version: 2023-06-01", path="/v1/messages"))
    resp = conn.response()
    assert resp.status == 200, resp.body
    assert orjson.loads(resp.body)["type"] == "message"
    assert resp.headers["request-id"] == resp.headers["x-request-id"]


def test_a_stream_is_chunked_and_the_connection_is_reused(conn: Conn) -> None:
    conn.send(post(STREAM, "x-mock-completion-tokens: 12"))
    stream = conn.response()
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert b"data: [DONE]" in stream.body
    conn.send(post(CHAT))
    assert content(conn.response())


def test_a_slow_reader_of_a_long_stream_gets_every_byte(gw: GatewayProc) -> None:
    """Megabytes of stream into a small receive window: the front must pause for the reader, then
    deliver everything in order (write backpressure), and serve the next request."""
    slow = Conn(gw.port, rcvbuf=4096)
    try:
        slow.send(post(STREAM, "x-mock-completion-tokens: 15000", "x-mock-chunk-delay-ms: 0"))
        time.sleep(1.5)  # the gateway's socket buffer fills, and it must wait
        stream = slow.response()
        assert stream.status == 200
        events = [e for e in stream.body.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        deltas = [orjson.loads(e[6:])["choices"] for e in events[:-1]]
        words = "".join(c[0]["delta"].get("content") or "" for c in deltas if c).split()
        assert len(words) == 15000
        slow.send(post(CHAT))
        assert content(slow.response())
    finally:
        slow.close()


def test_a_client_gone_while_waiting_cancels_the_request_at_once(gw: GatewayProc) -> None:
    """connection_lost cancels the handler (as aiohttp's handler_cancellation does): the upstream call
    is abandoned and the request is logged as a 499 long before the provider's 5 s answer."""
    gone = Conn(gw.port)
    gone.send(post(CHAT, "x-request-id: gone-while-waiting", "x-mock-latency-ms: 5000"))
    time.sleep(0.3)
    gone.close()
    line = '"request_id":"gone-while-waiting","status":499'
    assert wait_for("the 499 access log line", lambda: line in gw.proc.log(), timeout=2)


def test_a_slow_reader_who_leaves_mid_stream_ends_it_as_a_499(gw: GatewayProc) -> None:
    """The stream is paused for the reader (the transport's buffer is full) when the reader goes: the
    wait ends at once, the upstream is closed and nothing is logged as an error."""
    mark = len(gw.proc.log())
    slow = Conn(gw.port, rcvbuf=4096)
    slow.send(post(STREAM, "x-request-id: left-while-paused", "x-mock-completion-tokens: 15000"))
    time.sleep(1.0)  # megabytes behind a 4 KiB window: the gateway is waiting for this reader
    slow.close()
    line = '"request_id":"left-while-paused","status":499'
    assert wait_for("the 499 access log line", lambda: line in gw.proc.log(), timeout=3)
    time.sleep(0.2)
    fresh = gw.proc.log()[mark:]
    assert '"level":"error"' not in fresh and "never retrieved" not in fresh, fresh[-2000:]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("Content-Length: 5", "Transfer-Encoding: chunked"), id="length-and-chunked"),
        pytest.param(("Content-Length: 5", "Content-Length: 6"), id="two-lengths"),
        pytest.param(("Content-Length: +5",), id="signed-length"),
        pytest.param(("Bad Header: x", "Content-Length: 5"), id="space-in-name"),
    ],
)
def test_ambiguous_framing_is_refused_by_aiohttp(conn: Conn, extra: tuple[str, ...]) -> None:
    conn.send(post(b"hello", *extra))
    resp = conn.response()
    assert resp.status == 400
    assert b"Traceback" not in resp.body


def test_expect_100_continue_is_answered_before_the_body(conn: Conn) -> None:
    head = post(CHAT, "Expect: 100-continue")
    conn.send(head[: -len(CHAT)])
    interim = conn.response()
    assert interim.status == 100
    conn.send(CHAT)
    assert content(conn.response())


def test_an_http_1_0_request_is_served_and_closed(conn: Conn) -> None:
    conn.send(post(CHAT, version="HTTP/1.0"))
    assert content(conn.response())
    assert conn.closed_by_server()


def test_a_body_over_the_limit_is_a_413_in_the_callers_format(conn: Conn) -> None:
    conn.send(post(b"x" * (64 * 1024 * 1024 + 1), path="/v1/messages"))
    resp = conn.response()
    assert resp.status == 413
    assert orjson.loads(resp.body)["error"]["type"] == "request_too_large"


def test_sigterm_past_the_grace_period_cancels_and_settles_the_stream(
    mock: MockProvider, tmp_path: Path
) -> None:
    """A stream still running at the shutdown deadline is cut, settled for what was delivered, and
    recorded; the process exits 0 soon after the deadline."""
    cfg = base_config(mock.url)
    cfg["server"]["shutdown_grace_s"] = 1
    proc = GatewayProc(write_config(tmp_path, cfg))
    started_ms = int(time.time() * 1000)
    stream = Conn(proc.port)
    try:
        stream.send(
            post(
                STREAM,
                "x-request-id: cut-at-deadline",
                "x-mock-chunk-delay-ms: 100",
                "x-mock-completion-tokens: 100",
            )
        )
        stream.sock.recv(1)  # the stream has started
        proc.proc.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert proc.proc.popen.wait(15) == 0, proc.proc.log()[-3000:]
        assert time.monotonic() - signalled < 8
    finally:
        stream.close()
        proc.stop()
    ledger = asyncio.run(
        MemoryStore(tmp_path / "state").ledger("demo", started_ms - 60_000, started_ms + 600_000)
    )
    mine = [r for r in ledger if r.get("client_request_id") == "cut-at-deadline"]
    assert len(mine) == 1, ledger
    assert mine[0]["stream"] is True and 0 < mine[0]["usage"]["output_tokens"] < 100


def _gateway(mock: MockProvider, tmp_path: Path) -> Gateway:
    return Gateway(load_config(write_config(tmp_path, base_config(mock.url))))


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(mock: MockProvider, tmp_path: Path) -> None:
    front = Front(_gateway(mock, tmp_path), idle_s=0.4)
    server = await asyncio.get_running_loop().create_server(front.connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        talk_reader, talk_writer = await asyncio.open_connection("127.0.0.1", port)
        for piece in b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n":  # a head, a byte every 50 ms
            talk_writer.write(bytes([piece]))
            await asyncio.sleep(0.05)
            if idle_reader.at_eof():
                break
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""  # closed after 0.2-0.4 s of silence
        assert not talk_reader.at_eof() and len(front.connections) == 1
        await asyncio.sleep(0.9)  # now silent too
        assert await asyncio.wait_for(talk_reader.read(), 1) == b""
        assert not front.connections
        idle_writer.close()
        talk_writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_shutdown_closes_idle_connections_at_once(mock: MockProvider, tmp_path: Path) -> None:
    front = Front(_gateway(mock, tmp_path))
    server = await asyncio.get_running_loop().create_server(front.connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await front.shutdown(10)
        assert await asyncio.wait_for(reader.read(), 1) == b""
        assert time.monotonic() - started < 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
