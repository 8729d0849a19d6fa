"""The upstream HTTP/1.1 client against scripted servers on real loopback sockets.

Each server answers with exact bytes, so every framing the client must understand (Content-Length,
chunked, close-delimited, gzip, interim 1xx) and every way an exchange can break is exercised on
the wire, not through a mocked transport.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.providers.http1 import Http1Client, HttpError, HttpTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server whose handler writes raw bytes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def keep_alive_server(*responses: bytes) -> Callable[[Scripted], Handler]:
    """Answers the i-th request on a connection with responses[i % len]; keeps the connection open."""

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            i = 0
            while True:
                await scripted.read_request(reader)
                writer.write(responses[i % len(responses)])
                await writer.drain()
                i += 1

        return handler

    return bind


async def serve(factory: Callable[[Scripted], Handler]) -> Scripted:
    scripted = Scripted(lambda r, w: asyncio.sleep(0))
    scripted.handler = factory(scripted)
    return scripted


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(max_connections=8)
    yield http
    await http.close()


async def post(http: Http1Client, url: str, *, total_s: float | None = 2.0, head_s: float = 2.0) -> bytes:
    response = await http.post(
        url, {"content-type": "application/json"}, b'{"a":1}', connect_s=2.0, head_s=head_s, total_s=total_s
    )
    return await response.read()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_content_length_bodies_reuse_one_connection(client: Http1Client) -> None:
    async with await serve(keep_alive_server(ok(b'{"ok":1}'))) as server:
        for _ in range(5):
            assert await post(client, server.url) == b'{"ok":1}'
        assert server.connections == 1
        request = server.requests[0]
        assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\ncontent-length: 7\r\n" in request and request.endswith(b'{"a":1}')
        assert b"host: 127.0.0.1:" in request


async def test_chunked_body_with_extensions_and_trailers(client: Http1Client) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n"
    )
    async with await serve(keep_alive_server(chunked)) as server:
        assert await post(client, server.url) == b"hello 0123456789"
        assert await post(client, server.url) == b"hello 0123456789"
        assert server.connections == 1  # the chunked body ended cleanly: the connection is reused


async def test_a_response_split_into_single_bytes_parses(client: Http1Client) -> None:
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await scripted.read_request(reader)
            for i in range(len(raw)):
                writer.write(raw[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

        return handler

    async with await serve(bind) as server:
        assert await post(client, server.url) == b"abcde"


async def test_gzip_bodies_are_decoded(client: Http1Client) -> None:
    packed = gzip.compress(b'{"big":"' + b"x" * 5000 + b'"}')
    async with await serve(keep_alive_server(ok(packed, b"content-encoding: gzip\r\n"))) as server:
        assert await post(client, server.url) == b'{"big":"' + b"x" * 5000 + b'"}'


async def test_close_delimited_body_and_connection_close(client: Http1Client) -> None:
    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await scripted.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
            await writer.drain()
            writer.write(b"part two")
            await writer.drain()

        return handler

    async with await serve(bind) as server:
        assert await post(client, server.url) == b"part one, part two"
        assert await post(client, server.url) == b"part one, part two"
        assert server.connections == 2  # "connection: close" is honoured: never reused


async def test_interim_responses_are_skipped(client: Http1Client) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
    async with await serve(keep_alive_server(interim + ok(b"done"))) as server:
        assert await post(client, server.url) == b"done"


async def test_status_and_repeated_headers_are_returned(client: Http1Client) -> None:
    raw = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\n{}"
    )
    async with await serve(keep_alive_server(raw)) as server:
        response = await client.post(server.url, {}, b"", connect_s=1.0, head_s=1.0, total_s=1.0)
        assert response.status == 429
        assert response.headers["retry-after"] == "2" and response.headers["x-a"] == "1, 2"
        assert await response.read() == b"{}"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 4\r\n\r\nnope",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1_0\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: \xb2\r\n\r\n",
    ],
)
async def test_malformed_responses_raise_http_error(client: Http1Client, raw: bytes) -> None:
    async with await serve(keep_alive_server(raw)) as server:
        with pytest.raises(HttpError):
            await post(client, server.url)


async def test_server_closing_mid_body_is_an_error_and_the_connection_is_dropped(client: Http1Client) -> None:
    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await scripted.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
            await writer.drain()

        return handler

    async with await serve(bind) as server:
        with pytest.raises(HttpError, match="closed mid-response"):
            await post(client, server.url)


async def test_connection_refused_is_an_http_error(client: Http1Client) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(HttpError, match="connect failed"):
        await post(client, f"http://127.0.0.1:{port}/v1/x")


async def test_a_silent_server_times_out_and_a_slow_body_hits_the_total_deadline(client: Http1Client) -> None:
    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            body = await scripted.read_request(reader)
            if body == b'{"a":1}' and len(scripted.requests) == 1:
                await asyncio.sleep(5)  # never answers in time
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
            await writer.drain()
            await asyncio.sleep(5)  # the rest of the body never comes

        return handler

    async with await serve(bind) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(HttpTimeout):
            await post(client, server.url, head_s=0.2, total_s=0.2)
        assert loop.time() - started < 2
        started = loop.time()
        with pytest.raises(HttpTimeout):
            await post(client, server.url, head_s=0.3, total_s=0.3)  # head in time, body not
        assert loop.time() - started < 2


async def test_stream_chunks_arrive_as_sent_and_idle_silence_times_out(client: Http1Client) -> None:
    gate = asyncio.Event()

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await scripted.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata 1\r\n")
            await writer.drain()
            await gate.wait()
            writer.write(b"6\r\ndata 2\r\n")
            await writer.drain()
            await asyncio.sleep(5)  # then silence

        return handler

    async with await serve(bind) as server:
        response = await client.post(server.url, {}, b"{}", connect_s=1.0, head_s=1.0, total_s=None)
        assert await response.next_chunk(1.0) == b"data 1"
        gate.set()
        assert await response.next_chunk(1.0) == b"data 2"
        with pytest.raises(HttpTimeout):
            await response.next_chunk(0.2)
        response.close()


async def test_a_stream_closed_early_drops_its_connection(client: Http1Client) -> None:
    stream = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n"
    async with await serve(keep_alive_server(stream)) as server:
        response = await client.post(server.url, {}, b"{}", connect_s=1.0, head_s=1.0, total_s=None)
        assert await response.next_chunk(1.0) == b"one"
        response.close()  # the rest is unread: the connection cannot carry another exchange
        response = await client.post(server.url, {}, b"{}", connect_s=1.0, head_s=1.0, total_s=None)
        assert await response.next_chunk(1.0) == b"one"
        response.close()
        assert server.connections == 2


async def test_idle_connections_expire_after_keepalive() -> None:
    http = Http1Client(keepalive_s=0.1)
    try:
        async with await serve(keep_alive_server(ok(b"x"))) as server:
            assert await post(http, server.url) == b"x"
            assert await post(http, server.url) == b"x"
            await asyncio.sleep(0.3)
            assert await post(http, server.url) == b"x"
            assert server.connections == 2
    finally:
        await http.close()


async def test_concurrency_is_bounded_by_max_connections() -> None:
    http = Http1Client(max_connections=2)
    in_flight = 0
    peak = 0

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal in_flight, peak
            while True:
                await scripted.read_request(reader)
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.02)
                in_flight -= 1
                writer.write(ok(b"y"))
                await writer.drain()

        return handler

    try:
        async with await serve(bind) as server:
            bodies = await asyncio.gather(*(post(http, server.url) for _ in range(10)))
            assert bodies == [b"y"] * 10
            assert peak == 2 and server.connections == 2
    finally:
        await http.close()


async def test_each_named_limit_bounds_its_own_exchanges() -> None:
    """A provider's ``max_connections`` caps its exchanges whatever the client-wide bound, and one
    provider at its cap does not hold back another."""
    http = Http1Client(max_connections=100)
    in_flight: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await scripted.read_request(reader)
                name = "a" if b"x-provider: a" in scripted.requests[-1] else "b"
                in_flight[name] += 1
                peak[name] = max(peak[name], in_flight[name])
                await asyncio.sleep(0.02)
                in_flight[name] -= 1
                writer.write(ok(name.encode()))
                await writer.drain()

        return handler

    async def call(url: str, name: str, limit: int) -> bytes:
        response = await http.post(
            url, {"x-provider": name}, b"{}", connect_s=5, head_s=5, total_s=5, limit=(name, limit)
        )
        return await response.read()

    try:
        async with await serve(bind) as server:
            calls = [call(server.url, "a", 2) for _ in range(8)] + [
                call(server.url, "b", 3) for _ in range(9)
            ]
            bodies = await asyncio.gather(*calls)
            assert bodies == [b"a"] * 8 + [b"b"] * 9
            assert peak == {"a": 2, "b": 3}
            # Over its cap, a call waits for a slot at most connect_s.
            held = [
                await http.post(
                    server.url, {"x-provider": "a"}, b"", connect_s=5, head_s=5, total_s=None, limit=("a", 2)
                )
                for _ in range(2)
            ]
            with pytest.raises(HttpTimeout, match="no free upstream connection"):
                await http.post(
                    server.url,
                    {"x-provider": "a"},
                    b"",
                    connect_s=0.05,
                    head_s=5,
                    total_s=None,
                    limit=("a", 2),
                )
            assert await call(server.url, "b", 3) == b"b"  # another provider is not held back
            for response in held:
                await response.read()
    finally:
        await http.close()


async def test_header_injection_and_bad_urls_are_refused(client: Http1Client) -> None:
    with pytest.raises(HttpError, match="line break"):
        await client.post(
            "http://127.0.0.1:1/x", {"x-a": "1\r\nx-b: 2"}, b"", connect_s=1, head_s=1, total_s=1
        )
    for url in ("ftp://example.com/x", "http://example.com:99999/x", "http:///x"):
        with pytest.raises(HttpError, match="unsupported upstream URL"):
            await client.post(url, {}, b"", connect_s=1, head_s=1, total_s=1)


async def test_a_steady_trickle_longer_than_idle_s_does_not_time_out(client: Http1Client) -> None:
    # One idle timer serves the whole stream: it must re-arm on data, not fire idle_s after the first wait.
    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await scripted.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(8):
                await asyncio.sleep(0.08)
                writer.write(b"1\r\n%d\r\n" % i)
                await writer.drain()
            await asyncio.sleep(5)

        return handler

    async with await serve(bind) as server:
        response = await client.post(server.url, {}, b"{}", connect_s=1.0, head_s=1.0, total_s=None)
        received = b""
        while len(received) < 8:
            received += await response.next_chunk(0.25)  # 8 x 80 ms = 640 ms, well past 250 ms
        assert received == b"01234567"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(HttpTimeout):
            await response.next_chunk(0.25)
        assert 0.2 <= loop.time() - started < 1.0
        response.close()


async def test_a_reply_dropped_without_close_frees_its_slot() -> None:
    import gc

    http = Http1Client(max_connections=1)
    try:
        async with await serve(keep_alive_server(ok(b"z"))) as server:
            response = await http.post(server.url, {}, b"{}", connect_s=1, head_s=1, total_s=1)
            del response  # never read nor closed
            gc.collect()
            assert await asyncio.wait_for(post(http, server.url), 2) == b"z"  # the only slot is free again
    finally:
        await http.close()


async def test_no_body_statuses_ignore_framing_headers_and_dual_framing_is_never_reused(
    client: Http1Client,
) -> None:
    no_body = b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"
    dual = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    async with await serve(keep_alive_server(no_body, dual)) as server:
        assert await asyncio.wait_for(post(client, server.url), 2) == b""  # no wait for a chunk
        assert await post(client, server.url) == b"ok"  # chunked wins over content-length
        assert await post(client, server.url) == b""
        assert server.connections == 2  # the dual-framed answer closed its connection


async def test_waiting_for_a_slot_is_bounded_by_connect_s() -> None:
    http = Http1Client(max_connections=1)
    try:
        async with await serve(keep_alive_server(ok(b"w"))) as server:
            held = await http.post(server.url, {}, b"{}", connect_s=1, head_s=1, total_s=5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(HttpTimeout, match="no free upstream connection"):
                await http.post(server.url, {}, b"{}", connect_s=0.2, head_s=1, total_s=5)
            assert loop.time() - started < 1
            assert await held.read() == b"w"  # the slot frees: the next call goes through
            assert await post(http, server.url) == b"w"
    finally:
        await http.close()


async def test_a_connection_paused_for_a_slow_reader_is_not_reused(client: Http1Client) -> None:
    # Just above the 4 MiB at which reading pauses: the read that crosses the mark also ends the body,
    # so the connection is complete and keep-alive, but paused.
    big = b"x" * (4 * 1024 * 1024 + 10)

    def bind(scripted: Scripted) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await scripted.read_request(reader)
                writer.write(ok(big) if len(scripted.requests) == 1 else ok(b"small"))
                await writer.drain()

        return handler

    async with await serve(bind) as server:
        response = await client.post(server.url, {}, b"{}", connect_s=1, head_s=1, total_s=None)
        await asyncio.sleep(0.5)  # a reader that never reads, then gives up
        response.close()
        assert await asyncio.wait_for(post(client, server.url), 2) == b"small"
        assert server.connections == 2


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_with_a_trusted_certificate_and_a_refused_untrusted_one(
    self_signed: tuple[Path, Path],
) -> None:
    cert, key = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    scripted = await serve(keep_alive_server(ok(b'{"tls":true}')))
    server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    url = f"https://localhost:{port}/v1/chat/completions"
    trusting = Http1Client(ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = Http1Client()  # the system trust store: a self-signed certificate is refused
    try:
        assert await post(trusting, url) == b'{"tls":true}'
        assert await post(trusting, url) == b'{"tls":true}'
        assert scripted.connections == 1  # TLS connections are pooled too
        with pytest.raises(HttpError, match="connect failed"):
            await post(default, url)
    finally:
        await trusting.close()
        await default.close()
        server.close()
        await server.wait_closed()
