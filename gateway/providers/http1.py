"""A lean HTTP/1.1 client for the upstream calls: keep-alive connections on bare asyncio protocols.

Why not aiohttp's ``ClientSession``: measured on one core against nginx, a minimal aiohttp proxy
serves ~5,100 req/s with aiohttp's client and ~12,500 req/s with this kind of client
(``loadtests/RESULTS.md``): the session's per-request machinery (request and response objects,
tracing signals, cookie jar, multidict headers, a timer context, a payload writer) costs about
0.11 ms, 60 % of what the whole minimal proxy spends per request. The gateway only ever POSTs JSON
to a handful of configured API origins, so the client needs little: pooled keep-alive connections,
Content-Length, chunked and close-delimited bodies, gzip/deflate, TLS, and three timeouts.

Semantics the gateway relies on:
- A POST is never retried here (it is not idempotent: a resend could be billed twice); transport
  failures surface as ``HttpError`` and the dispatcher's retry policy decides.
- A connection goes back to the pool only after its response was read to the end and the server
  allowed keep-alive; a reply closed early drops its connection.
- Idle connections are dropped after ``keepalive_s`` (15 s, as aiohttp), before the usual server
  idle timeouts, which keeps the "server closed an idle connection as we reused it" race rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from typing import cast
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024  # a response head larger than this is not an API server talking
_PAUSE_AT = 4 * 1024 * 1024  # buffered stream bytes at which reading pauses (slow consumer)

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes (str.strip() removes more)


class HttpError(Exception):
    """The exchange failed on the transport or the response was not valid HTTP/1.1."""


class HttpTimeout(HttpError):
    pass


class Origin:
    __slots__ = ("host", "key", "port", "prefix", "ssl")

    def __init__(self, scheme: str, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.key = (scheme, host, port)
        self.host = host
        self.port = port
        self.ssl = ssl_context
        default = 443 if scheme == "https" else 80
        authority = host if port == default else f"{host}:{port}"
        if ":" in host:  # an IPv6 literal
            authority = f"[{host}]" if port == default else f"[{host}]:{port}"
        self.prefix = f"host: {authority}\r\n".encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the parser for the response in flight on it."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key  # the origin's pool key
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._state = _DONE
        self._remaining = 0
        self._keep_alive = False
        self._decoder: zlib._Decompress | None = None
        self._buffered = 0
        self._paused = False
        self.head: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.chunks: deque[bytes] = deque()
        self.complete = False  # the body was read to its end
        self.error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_data = 0.0  # loop time of the latest bytes, for the stream idle timer
        self._wait_since = 0.0
        self._idle_s = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._state == _DONE:  # bytes while idle: the stream is out of step, never reuse it
            self.lost = True
            if self.transport is not None:
                self.transport.abort()
            return
        self._buf += data
        if self._idle_timer is not None and self._loop is not None:
            self._last_data = self._loop.time()
        try:
            self._parse()
        except HttpError as exc:
            self.fail(exc)

    def eof_received(self) -> bool | None:
        if self._state == _UNTIL_CLOSE:
            self._finish()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._state == _UNTIL_CLOSE and exc is None:  # a clean close ends a close-delimited body
            self._finish()
        elif self._state != _DONE:
            reason = exc.__class__.__name__ if exc is not None else "ServerDisconnected"
            self.fail(HttpError(f"upstream connection closed mid-response ({reason})"))

    # ---------------------------------------------------------------- exchange

    def begin(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[int, dict[str, str]]]:
        self._state = _HEAD
        self._buf.clear()
        self.chunks.clear()
        self._buffered = 0
        self._decoder = None
        self.complete = False
        self.error = None
        self._loop = loop
        self.head = loop.create_future()
        return self.head

    def fail(self, error: HttpError) -> None:
        self._stop_idle_timer()
        if self.error is None and not self.complete:
            self.error = error
        self._state = _DONE
        self._keep_alive = False
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # a caller that already gave up must not log "never retrieved"
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def watch_idle(self, idle_s: float) -> None:
        """Fail the exchange if the reader waits through a silence longer than ``idle_s``.

        One timer per stream rather than one per chunk (a stream is thousands of waits): when it
        fires it re-arms itself for the latest data's time, and only a real silence fails."""
        loop = self._loop or asyncio.get_running_loop()
        self._idle_s = idle_s
        self._wait_since = loop.time()
        if self._idle_timer is None:
            self._last_data = self._wait_since
            self._idle_timer = loop.call_at(self._wait_since + idle_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._waiter is None or self._state == _DONE or self._loop is None:
            return  # nobody is waiting: the next wait re-arms the timer
        due = max(self._last_data, self._wait_since) + self._idle_s
        if self._loop.time() >= due:
            self.fail(HttpTimeout("upstream stream stalled"))
        else:
            self._idle_timer = self._loop.call_at(due, self._check_idle)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def wait(self) -> None:
        """Until a chunk, the end of the body or a failure is available."""
        if self.chunks or self.complete or self.error is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self) -> bytes:
        """Every chunk buffered so far, joined."""
        data = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        # A connection paused for a slow reader, or with body bytes nobody took, cannot carry another
        # exchange: its next response would never be read (or be read after stale bytes).
        return (
            self.complete
            and self._keep_alive
            and not self.lost
            and not self._buf
            and not self._paused
            and not self.chunks
        )

    # ---------------------------------------------------------------- parser

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _emit(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                raise HttpError(f"upstream sent a corrupt compressed body ({exc})") from None
            if not data:
                return
        self.chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True  # a slow stream consumer: let TCP push back on the upstream
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._stop_idle_timer()
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except zlib.error as exc:
                raise HttpError(f"upstream sent a corrupt compressed body ({exc})") from None
            if tail:
                self.chunks.append(tail)
        self._state = _DONE
        self.complete = True
        self._wake()

    def _parse(self) -> None:
        buf = self._buf
        while buf or (self._state == _LENGTH and self._remaining == 0):
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise HttpError("upstream response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._on_head(head)
            elif state == _LENGTH:
                take = min(self._remaining, len(buf))
                if take:
                    self._emit(bytes(buf[:take]))
                    del buf[:take]
                    self._remaining -= take
                if self._remaining == 0:
                    self._finish()
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise HttpError("upstream sent a malformed chunk size")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                # Hex digits only: int(x, 16) would also take "0x1a", "1_0" and "+a".
                if not size_text or size_text.strip(b"0123456789abcdefABCDEF") or len(size_text) > 16:
                    raise HttpError("upstream sent a malformed chunk size")
                size = int(size_text, 16)
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA:
                take = min(self._remaining, len(buf))
                self._emit(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise HttpError("upstream sent a malformed chunk")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise HttpError("upstream trailer section too large")
                    return
                del buf[: end + 2]
                if end == 0:  # the blank line that ends the (usually empty) trailer section
                    self._finish()
            elif state == _UNTIL_CLOSE:
                self._emit(bytes(buf))
                buf.clear()
                return
            else:  # _DONE with bytes left over: pipelining we never asked for
                self._keep_alive = False
                return

    def _on_head(self, head: bytes) -> None:
        # One decode for the whole head (latin-1 maps every byte), not two per header line.
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3:
            raise HttpError("upstream sent a malformed status line")
        try:
            status = int(parts[1])
        except ValueError:
            raise HttpError("upstream sent a malformed status line") from None
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError("upstream sent a malformed header line")
            key = name.strip(_ASCII_SPACE).lower()
            text = value.strip(_ASCII_SPACE)  # as bytes.strip did: never a latin-1 NBSP of the value
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        connection = headers.get("connection", "").lower()
        if parts[0] == "HTTP/1.1":
            self._keep_alive = "close" not in connection
        else:
            self._keep_alive = "keep-alive" in connection
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding != "identity":
            raise HttpError(f"upstream sent an unsupported content-encoding: {encoding}")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status in (204, 304):  # never a body, whatever the headers say
            self._state, self._remaining = _LENGTH, 0
        elif chunked:
            self._state = _CHUNK_SIZE
            if "content-length" in headers:  # both framings: RFC 9112 6.3 says chunked wins, never reuse
                self._keep_alive = False
        elif "content-length" in headers:
            length = headers["content-length"]
            if not (length.isascii() and length.isdigit()):  # "²".isdigit() is true
                raise HttpError("upstream sent a malformed content-length")
            self._state, self._remaining = _LENGTH, int(length)
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False
        assert self.head is not None
        if not self.head.done():
            self.head.set_result((status, headers))


class Response:
    """A response whose head has arrived. Read it to the end, or close it, exactly once."""

    __slots__ = ("_conn", "_pool", "_released", "_slots", "_timer", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        conn: _Connection,
        pool: Http1Client,
        slots: asyncio.Semaphore,
        timer: asyncio.TimerHandle | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._pool = pool
        self._slots = slots  # the limit this exchange counts against, released with it
        self._timer = timer  # the whole-exchange deadline of a non-streamed call, if any
        self._released = False

    async def read(self) -> bytes:
        """The whole body (bounded by the call's deadline, if it has one)."""
        if self._released:
            raise HttpError("the response was already closed")
        conn = self._conn
        parts: list[bytes] = []
        try:
            while True:
                await conn.wait()
                if conn.chunks:
                    parts.append(conn.take())
                if conn.error is not None:
                    raise conn.error
                if conn.complete and not conn.chunks:
                    return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            self.close()

    async def next_chunk(self, idle_s: float) -> bytes:
        """The body bytes that arrived since the last call (b"" at the end); a silence longer than
        ``idle_s`` raises ``HttpTimeout``."""
        if self._released:
            return b""  # closed (by the end of the body, or by the caller): nothing more to read
        conn = self._conn
        if not (conn.chunks or conn.complete or conn.error is not None):
            conn.watch_idle(idle_s)
            await conn.wait()
        if conn.chunks:
            return conn.take()
        if conn.error is not None:
            raise conn.error
        self.close()
        return b""

    def __del__(self) -> None:
        # A reply dropped without close() (a bug path) must not hold its slot forever: after
        # max_connections such leaks every request would wait for a slot.
        if not self._released:
            loop = self._conn._loop
            with contextlib.suppress(Exception):  # a closed loop: the process is ending anyway
                if loop is not None and not loop.is_closed():
                    # Thread-safe: a cyclic collection may run this on any thread.
                    loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """Return the connection to the pool if its response was read to the end, else drop it."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
        self._pool.release(self._conn, self._slots)


class Http1Client:
    """Pooled keep-alive connections per origin. At most ``max_connections`` exchanges at once, or, for
    a call that names a ``limit`` (a provider's own ``max_connections``), at most that many for it."""

    def __init__(
        self,
        max_connections: int = 1024,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        # (name, n) -> its semaphore. n is in the key: a reload that changes a limit starts a new one,
        # and exchanges still in flight release into the one they took.
        self._limits: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._keepalive_s = keepalive_s
        # Built here, not on the first https call: loading the trust store is blocking file I/O.
        self._ssl = ssl_context or ssl.create_default_context()
        self._urls: dict[str, tuple[Origin, bytes]] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() is a getpid() on 3.11

    def _target(self, url: str) -> tuple[Origin, bytes]:
        cached = self._urls.get(url)
        if cached is not None:
            return cached
        parts = urlsplit(url)
        try:
            explicit_port = parts.port
        except ValueError:
            raise HttpError(f"unsupported upstream URL: {url}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"unsupported upstream URL: {url}")
        port = explicit_port or (443 if parts.scheme == "https" else 80)
        origin = Origin(parts.scheme, parts.hostname, port, self._ssl if parts.scheme == "https" else None)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = (origin, path.encode())
        if len(self._urls) > 4096:  # URLs come from config, so this only bounds a pathological case
            self._urls.clear()
        self._urls[url] = target
        return target

    async def post(
        self,
        url: str,
        headers: dict[str, str],
        payload: bytes,
        *,
        connect_s: float,
        head_s: float,
        total_s: float | None,
        limit: tuple[str, int] | None = None,
    ) -> Response:
        """Send a POST; return once the response head arrived (within ``head_s`` of the send). With
        ``total_s`` the whole exchange, from this call on (a wait for a free slot and the connect
        included), must also end within ``total_s``. Waiting for a slot and connecting are bounded by
        ``connect_s``."""
        if self._closed:
            raise HttpError("the upstream client is closed")
        origin, path = self._target(url)
        request = _encode(path, origin, headers, payload)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if total_s is None else loop.time() + total_s
        slots = self._slots if limit is None else self._limits.get(limit) or self._new_limit(limit)
        if slots.locked():  # every slot busy: wait, boundedly (no timer when one is free)
            try:
                await asyncio.wait_for(slots.acquire(), connect_s)
            except TimeoutError:
                raise HttpTimeout("no free upstream connection within connect_s") from None
        else:
            await slots.acquire()
        conn: _Connection | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            conn = self._pooled(origin) or await self._connect(
                origin, connect_s if deadline is None else min(connect_s, deadline - loop.time())
            )
            head = conn.begin(loop)
            assert conn.transport is not None
            conn.transport.write(request)
            head_at = loop.time() + head_s
            if deadline is not None and deadline <= head_at:
                head_at = deadline  # the head's timer is the whole exchange's deadline: it keeps running
            timer = loop.call_at(head_at, _time_out, conn, _HEAD_LATE)  # the error is built only if it fires
            status, response_headers = await head
            if deadline is None or conn.complete:
                timer.cancel()
                timer = None
            elif head_at != deadline:  # the rest of the body gets what is left of total_s
                timer.cancel()
                timer = loop.call_at(deadline, _time_out, conn, _BODY_LATE)
            return Response(status, response_headers, conn, self, slots, timer)
        except BaseException:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                conn.fail(HttpError("request abandoned"))  # aborts the transport
            slots.release()
            raise

    def _new_limit(self, limit: tuple[str, int]) -> asyncio.Semaphore:
        slots = self._limits[limit] = asyncio.Semaphore(limit[1])
        return slots

    def _pooled(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        deadline = time.monotonic() - self._keepalive_s
        while idle:
            conn = idle.pop()  # the most recently used: warm, least likely to be closed by the server
            transport = conn.transport
            if conn.lost or transport is None or transport.is_closing() or conn.idle_since < deadline:
                self._discard(conn)
                continue
            return conn
        return None

    async def _connect(self, origin: Origin, connect_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(
            lambda: _Connection(origin.key),
            origin.host,
            origin.port,
            ssl=origin.ssl,
            server_hostname=origin.host if origin.ssl is not None else None,
        )
        try:
            _, conn = await asyncio.wait_for(connect, max(connect_s, 0.001))
        except TimeoutError:
            raise HttpTimeout("upstream connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(f"upstream connect failed ({exc.__class__.__name__})") from None
        return conn

    def release(self, conn: _Connection, slots: asyncio.Semaphore) -> None:
        slots.release()
        if self._closed or not conn.reusable:
            if conn.complete and conn.error is None:
                self._discard(conn)  # read to the end, but the server said close
            else:
                conn.fail(HttpError("response abandoned"))  # aborts: the rest of the body is unread
            return
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, deque())
        # Drop connections idle past keep-alive from the cold end, so a burst's spares do not linger.
        while idle and idle[0].idle_since < now - self._keepalive_s:
            self._discard(idle.popleft())
        idle.append(conn)

    @staticmethod
    def _discard(conn: _Connection) -> None:
        conn.lost = True
        if conn.transport is not None:
            conn.transport.close()

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.pop())
        self._idle.clear()


_HEAD_LATE = "upstream did not answer in time"
_BODY_LATE = "upstream timed out sending the body"


def _time_out(conn: _Connection, message: str) -> None:
    conn.fail(HttpTimeout(message))


def _encode(path: bytes, origin: Origin, headers: dict[str, str], payload: bytes) -> bytes:
    lines = [b"POST ", path, b" HTTP/1.1\r\n", origin.prefix, b"content-length: %d\r\n" % len(payload)]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise HttpError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n".encode())
    lines.append(b"\r\n")
    lines.append(payload)
    return b"".join(lines)
