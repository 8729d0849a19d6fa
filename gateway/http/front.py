"""The lean HTTP/1.1 front: plain LLM requests served without aiohttp's per-request machinery.

Why: aiohttp's server spends more Python per request than any stage of the gateway's own pipeline
(a Request and a Response object, multidicts, a task and several awaits per message; measured in
loadtests/RESULTS.md). This protocol parses a *plain* request itself and runs the same handler
(``proxy.handle_llm``) through a small exchange object, as ``providers/http1.py`` does for the
upstream side.

Its scope is deliberately narrow. A request is plain when it is HTTP/1.1, a POST to one of the LLM
paths (no query string), its body framed by a single Content-Length within ``server.max_body_bytes``,
with no Transfer-Encoding, Content-Encoding, Expect or Upgrade header, and an ASCII head of at most
8 KiB and 100 header lines, every name a token and every value free of control characters. Anything
else hands the connection, with every byte read so far, to aiohttp's own protocol for the rest of its
life. aiohttp's strict parser thus keeps answering every odd case exactly as it did before this front existed:
chunked uploads, 100-continue, Content-Length beside Transfer-Encoding (request smuggling), oversized
or malformed heads, HTTP/1.0, other methods, the admin API, /metrics, health checks.

What the front does itself: keep-alive and ``Connection: close``; pipelined requests (buffered, served
in order, reading paused when the buffer passes ``_PIPELINE_LIMIT``); cancelling the handler when the
client disconnects, as aiohttp's ``handler_cancellation`` does (the pipeline then settles or releases
what it reserved); write backpressure for streams (``pause_writing``); closing connections idle for
more than ``_IDLE_S`` (checked every ``_IDLE_S / 2``, so between 37.5 and 75 s of silence; aiohttp
closes after 75 s); and a graceful drain at shutdown (``Front.shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.core import Gateway
from gateway.errors import GatewayError
from gateway.http.proxy import error_parts, handle_llm
from gateway.http.routes import LLM_ROUTES

log = logging.getLogger("gateway.front")

_MAX_HEAD = 8192  # bytes up to the blank line; aiohttp's own line limit is 8190
_PIPELINE_LIMIT = 1 << 20  # bytes buffered behind a request in progress before reading pauses
_IDLE_S = 75.0

_ROUTES = {path.encode(): route for path, route in LLM_ROUTES.items()}
# A plain head in one precompiled pattern, matched in C over the buffer without a copy: the request line,
# then at most 100 header lines, each an RFC 9110 token name, a colon and a value of visible ASCII, spaces
# and tabs only (so no bare CR or LF, no NUL, no obs-fold, nothing outside ASCII).
_PLAIN_HEAD = re.compile(
    rb"POST ([^ ]+) HTTP/1\.1\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*\r\n){0,100})"
)
_HANDED_OVER_HEADERS = ("transfer-encoding", "content-encoding", "expect", "upgrade")


class PlainHead:
    """A parsed plain request head: what the front needs to read its body and serve it."""

    __slots__ = ("body_start", "headers", "keep_alive", "length", "route")

    def __init__(
        self,
        route: tuple[str, str],
        headers: CIMultiDictProxy[str],
        body_start: int,
        length: int,
        keep_alive: bool,
    ) -> None:
        self.route = route
        self.headers = headers
        self.body_start = body_start
        self.length = length
        self.keep_alive = keep_alive


def parse_plain_head(buffer: bytes | bytearray, end: int, max_body: int) -> PlainHead | None:
    """The head ending at ``end`` (the index of its blank line), or None when the request is not plain
    and aiohttp must read it."""
    match = _PLAIN_HEAD.fullmatch(buffer, 0, end + 2) if end <= _MAX_HEAD else None
    if match is None:
        return None
    route = _ROUTES.get(match[1])
    if route is None:
        return None
    lines = match[2].decode().split("\r\n")
    lines.pop()  # the empty string after the last line's CRLF
    pairs = (line.partition(":") for line in lines)
    headers = CIMultiDict([(name, value.strip(" \t")) for name, _, value in pairs])
    lengths = headers.getall("content-length", ())
    # One Content-Length, a decimal number short enough for int() (which refuses 4300 digits or more),
    # within the limit; no length at all (a POST without a body) is aiohttp's to answer, as is a 413.
    if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        return None
    length = int(lengths[0])
    if length > max_body:
        return None
    for name in _HANDED_OVER_HEADERS:  # CIMultiDict's ``in`` ignores case
        if name in headers:
            return None
    keep_alive = True
    connection = headers.get("connection")
    if connection is not None:
        tokens = {token.strip() for token in connection.lower().split(",")}
        if "upgrade" in tokens:
            return None
        keep_alive = "close" not in tokens
    return PlainHead(route, CIMultiDictProxy(headers), end + 4, length, keep_alive)


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES: dict[int, bytes] = {int(status): _status_line(status) for status in HTTPStatus}


class Front:
    """The listening side: one per worker. ``connection`` is the protocol factory for the server."""

    def __init__(self, gateway: Gateway, idle_s: float = _IDLE_S) -> None:
        self.gateway = gateway
        self.idle_check_s = idle_s / 2
        self.max_body = gateway.config.source.server.max_body_bytes
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self.aiohttp_server: web.Server | None = None  # aiohttp's protocol factory, set by the site
        self._date_second = -1
        self._date_line = b""

    def connection(self) -> FrontConnection:
        return FrontConnection(self)

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date_line

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now; let requests and streams in progress finish up to ``timeout``,
        then cancel them (the pipeline settles or releases what they reserved)."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        busy = [conn.task for conn in self.connections if conn.task is not None]
        if not busy:
            return
        _, pending = await asyncio.wait(busy, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


class FrontSite(web.TCPSite):
    """A TCP site whose connections start in the front; aiohttp's runner still owns the site's
    lifecycle (``runner.cleanup`` stops it) and the connections handed over to aiohttp."""

    def __init__(self, runner: web.BaseRunner, front: Front, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._front = front

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        self._front.aiohttp_server = self._runner.server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front.connection,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


class FrontConnection(asyncio.Protocol):
    """One client connection while its requests are plain."""

    def __init__(self, front: Front) -> None:
        self.front = front
        # Created by the server inside its loop. Kept: asyncio.get_running_loop() is a getpid()
        # syscall each call on CPython 3.11 (its fork check), and a request needs the loop.
        self.loop = asyncio.get_running_loop()
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: PlainHead | None = None  # a parsed head whose body is still arriving
        self._active = True  # bytes or a request since the last idle check
        self._idle_check: asyncio.TimerHandle | None = None
        self._read_paused = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp does: notice peers that vanished without a FIN
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.front.connections.add(self)
        self._idle_check = self.loop.call_later(self.front.idle_check_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._active = True
        if self.task is None:
            self._advance()
        elif len(self._buffer) > _PIPELINE_LIMIT and not self._read_paused:
            self._read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> None:
        # The client shut its side: like aiohttp, let the transport close (connection_lost follows).
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.front.connections.discard(self)
        if self._idle_check is not None:
            self._idle_check.cancel()
        if self._drained is not None:
            self._drained.cancel()  # a stream waiting for a reader who is gone: it ends as a 499
        if self.task is not None:
            self.task.cancel()  # aiohttp's handler_cancellation: stop the upstream call, settle

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # reading requests

    def _advance(self) -> None:
        """Start the next buffered request if the whole of it is in; otherwise wait for more bytes."""
        head = self._pending
        if head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._hand_over()
                return
            if self.front.closing:  # shutting down: no new request starts here
                self.close()
                return
            head = parse_plain_head(self._buffer, end, self.front.max_body)
            if head is None:
                self._hand_over()  # aiohttp answers what is not plain
                return
            self._pending = head
        total = head.body_start + head.length
        if len(self._buffer) < total:
            return
        body = bytes(self._buffer[head.body_start : total])
        del self._buffer[:total]
        self._pending = None
        # Not TaskGroup.spawn: the connection holds the task (cancelled on disconnect, awaited at shutdown).
        self.task = self.loop.create_task(self._serve(head, body))

    def _hand_over(self) -> None:
        """Give the connection, and every byte read so far, to aiohttp's protocol for good."""
        transport = self.transport
        assert transport is not None and self.front.aiohttp_server is not None
        self.front.connections.discard(self)
        if self._idle_check is not None:
            self._idle_check.cancel()
        handler = self.front.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.write_paused:
            handler.pause_writing()
        if self._read_paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)

    async def _serve(self, head: PlainHead, body: bytes) -> None:
        exchange = FrontExchange(self, head, body)
        try:
            await handle_llm(self.front.gateway, exchange, *head.route)
            if exchange.streaming:
                self.send(b"0\r\n\r\n")
        except (asyncio.CancelledError, ConnectionError):
            self.close()  # the client went away (or shutdown's deadline passed): nothing more to send
            return
        except Exception:  # handle_llm answers its own errors: this is a bug in writing the answer
            log.exception("unexpected error while answering")
            if not exchange.started:
                wire = head.route[0]
                exchange.keep_alive = False
                await exchange.reply(*error_parts(GatewayError("internal gateway error"), wire, "-"))
            self.close()
            return
        finally:
            self.task = None
            self._active = True  # the idle clock starts at the end of the answer, not at its start
        if not exchange.keep_alive or self._closed or self.front.closing:
            self.close()
            return
        if self._read_paused:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if self._buffer:
            self._advance()

    def _check_idle(self) -> None:
        if self._closed:
            return
        if self.task is None and not self._active:
            self.close()  # silent for a whole period with nothing in progress
            return
        self._active = False
        self._idle_check = self.loop.call_later(self.front.idle_check_s, self._check_idle)

    # writing answers

    def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark again (the reader caught up)."""
        if self.write_paused:
            if self._drained is None:
                self._drained = self.loop.create_future()
            await self._drained

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class FrontExchange:
    """``proxy.Exchange`` over a plain request: the body is already in; answers go straight to the
    transport."""

    __slots__ = ("_conn", "body", "headers", "keep_alive", "started", "streaming")

    def __init__(self, conn: FrontConnection, head: PlainHead, body: bytes) -> None:
        self._conn = conn
        self.headers = head.headers
        self.body = body
        self.keep_alive = head.keep_alive
        self.started = False
        self.streaming = False

    async def read_body(self, limit: int) -> bytes:
        return self.body  # the front took only bodies within server.max_body_bytes

    def _head(self, status: int, headers: dict[str, str], framing: bytes) -> bytes:
        self.started = True
        if self.keep_alive and self._conn.front.closing:
            self.keep_alive = False  # shutting down: this answer is the connection's last
        lines = [
            _STATUS_LINES.get(status) or _status_line(status),
            self._conn.front.date_line(),
            framing,
            b"" if self.keep_alive else b"Connection: close\r\n",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:  # never let a value split the head (response splitting)
                continue
            lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"\r\n")
        return b"".join(lines)

    async def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        framing = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        with contextlib.suppress(ConnectionError):  # a client already gone is not an error here
            self._conn.send(self._head(status, headers, framing) + body)

    async def start_stream(self, headers: dict[str, str]) -> None:
        self.streaming = True
        self._conn.send(self._head(200, headers, b"Transfer-Encoding: chunked\r\n"))

    async def write(self, chunk: bytes) -> None:
        conn = self._conn
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if conn.write_paused:  # a slow reader: hold the upstream until it catches up
            await conn.drain()
