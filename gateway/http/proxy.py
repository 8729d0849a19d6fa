"""The LLM endpoints: read and check the body, run the pipeline, write the reply or the stream.

Every failure leaves in the caller's wire format; nothing below this module ever produces a
500 with a traceback: an unexpected exception is logged with its request id and answered as
a generic error in the right shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import jsonutil
from gateway.core import Gateway
from gateway.errors import AuthenticationFailed, BodyTooLarge, GatewayError, InvalidRequest, Overloaded
from gateway.http.errors import render
from gateway.observability.metrics import status_class
from gateway.pipeline import Reply, RequestContext, StreamReply
from gateway.shapes import CHECKS

log = logging.getLogger("gateway.access")
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)

_SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


def client_request_id(headers: CIMultiDictProxy[str]) -> str | None:
    """The caller's own request id (echoed back and kept in the ledger), if it sent a sane one."""
    given = headers.get("x-request-id") or headers.get("request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return None


def request_id_of(request: web.Request) -> str:
    return client_request_id(request.headers) or request.app[GATEWAY].ids.next()


def api_key_of(headers: CIMultiDictProxy[str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return headers.get("x-api-key") or headers.get("api-key")


# orjson parses up to 1024 levels of nesting but encodes at most 253: a body between the two
# would parse, then fail when forwarded (or hashed for the cache). Real requests never come close.
MAX_JSON_DEPTH = 253


async def read_body(request: web.Request, limit: int) -> bytearray:
    """The whole body, or ``BodyTooLarge`` as soon as it exceeds ``limit`` (chunked uploads too:
    ``StreamReader.read(n)`` returns what has arrived so far, so read until EOF)."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body is {length} bytes; the limit is {limit}")
    raw = bytearray()
    try:
        while chunk := await request.content.read(limit + 1 - len(raw)):
            raw += chunk
            if len(raw) > limit:
                raise BodyTooLarge(f"request body exceeds the {limit}-byte limit")
    except ConnectionResetError:  # the client hung up mid-body: its request, not our error
        raise InvalidRequest("the connection closed before the whole request body arrived") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # broken chunking or gzip
        cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
        problem = cause.message.strip() if isinstance(cause, HttpProcessingError) else "cannot be read"
        raise InvalidRequest(f"malformed request body: {problem}") from None
    return raw


async def read_json(exchange: Exchange, limit: int) -> tuple[dict[str, Any], bytes]:
    """The body, and its JSON as the gateway encodes it (what goes upstream when nothing changes)."""
    raw = await exchange.read_body(limit)
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:  # encoding is ~8x faster than the parse just done (10 us per 100 KB): cheaper than a walk
        encoded = jsonutil.dumps(body)
    except TypeError:
        raise InvalidRequest(
            f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    return body, encoded


def end_to_end_headers(headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """Drop the headers the client's ``Connection`` header names: they are hop-by-hop for this
    connection only (RFC 9110 7.6.1) and must never be forwarded, whatever the allow-list says."""
    named = {
        token.strip().lower() for value in headers.getall("connection", ()) for token in value.split(",")
    }
    named -= {"", "close", "keep-alive"}
    if not named:
        return headers
    return CIMultiDictProxy(CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in named))


def _id_headers(wire: str, request_id: str) -> dict[str, str]:
    return (
        {"request-id": request_id, "x-request-id": request_id}
        if wire == "anthropic"
        else {"x-request-id": request_id}
    )


def error_parts(err: GatewayError, wire: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
    status, body, headers = render(err, wire, request_id)
    headers.update(_id_headers(wire, request_id))
    return status, headers, body


def error_response(err: GatewayError, wire: str, request_id: str) -> web.Response:
    status, headers, body = error_parts(err, wire, request_id)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class Exchange(Protocol):
    """One request and its answer, whichever server read it: aiohttp's (``AiohttpExchange``) or the
    lean front for plain requests (``gateway.http.front``). ``handle_llm`` sees only this."""

    headers: CIMultiDictProxy[str]

    async def read_body(self, limit: int) -> bytes | bytearray: ...

    async def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Send a whole JSON answer. A client already gone is not an error here."""

    async def start_stream(self, headers: dict[str, str]) -> None:
        """Send a 200's head; the body follows as ``write`` calls and ends when the handler returns."""

    async def write(self, chunk: bytes) -> None:
        """Send one piece of the stream (never empty); ConnectionResetError when the client is gone."""


class AiohttpExchange:
    """The exchange over aiohttp's request: every request the lean front does not take."""

    __slots__ = ("headers", "request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.headers = request.headers
        self.response: web.StreamResponse | None = None

    async def read_body(self, limit: int) -> bytearray:
        return await read_body(self.request, limit)

    async def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
        self.response = response
        try:
            await response.prepare(self.request)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away: aiohttp's finish sees it too

    async def start_stream(self, headers: dict[str, str]) -> None:
        response = web.StreamResponse(status=200, headers=headers)
        self.response = response
        await response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)


async def handle_aiohttp(request: web.Request, wire: str, operation: str) -> web.StreamResponse:
    exchange = AiohttpExchange(request)
    await handle_llm(request.app[GATEWAY], exchange, wire, operation)
    assert exchange.response is not None  # handle_llm always answers, or raises
    return exchange.response


async def handle_llm(gateway: Gateway, exchange: Exchange, wire: str, operation: str) -> None:
    limit = gateway.in_flight
    # The gateway's own id keys the lease and the ledger record, so a client that reuses an id can never
    # collide with another request; the caller's id is what the response echoes.
    internal_id = gateway.ids.next()
    client_id = client_request_id(exchange.headers)
    request_id = client_id or internal_id
    ctx: RequestContext | None = None
    admitted = False
    try:
        try:
            body, encoded = await read_json(exchange, gateway.config.source.server.max_body_bytes)
            key = api_key_of(exchange.headers)
            if not key:  # auth before the shape check: an anonymous caller learns nothing
                raise AuthenticationFailed("missing API key: send `Authorization: Bearer <virtual key>`")
            # A place in flight is taken once the body is in and a key is present, so a slow or
            # anonymous sender holds none; refused here (Overloaded), nothing has been reserved.
            limit.enter()
            admitted = True
            CHECKS[(wire, operation)](body)
            ctx = RequestContext(
                request_id=internal_id,
                client_request_id=client_id,
                inbound=wire,
                operation=operation,
                body=body,
                encoded_body=encoded,
                headers=end_to_end_headers(exchange.headers),
                api_key=key,
            )
            result = await gateway.pipeline.handle(ctx)
        except asyncio.CancelledError:
            # The client went away before the answer (nginx's 499). The pipeline has settled or released
            # what it reserved; the request still counts in the access log and the error-rate metrics.
            _access_log(gateway, ctx, request_id, 499, wire, "client disconnected")
            _count_failure(gateway, ctx, operation, 499)
            raise
        except GatewayError as err:
            status, error_headers, payload = error_parts(err, wire, request_id)  # status depends on the wire
            if isinstance(err, Overloaded):
                gateway.metrics.shed.labels(wire).inc()
            _access_log(gateway, ctx, request_id, status, wire, err.message)
            _count_failure(gateway, ctx, operation, status)
            await exchange.reply(status, error_headers, payload)
            return
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id})
            _count_failure(gateway, ctx, operation, 500)
            await exchange.reply(*error_parts(GatewayError("internal gateway error"), wire, request_id))
            return
        headers = {**result.headers, **_id_headers(wire, request_id)}
        if isinstance(result, Reply):
            await _write_reply(gateway, exchange, result, headers, ctx, request_id, wire)
        else:
            await _write_stream(gateway, exchange, result, headers, ctx, request_id, wire)
    finally:
        if admitted:
            limit.leave()  # after the whole answer: a stream holds its place until its last chunk


async def _write_reply(
    gateway: Gateway,
    exchange: Exchange,
    result: Reply,
    headers: dict[str, str],
    ctx: RequestContext | None,
    request_id: str,
    wire: str,
) -> None:
    """Write the answer, then do its bookkeeping: the client does not wait for the settle, the ledger
    record, the cache fill or the metrics."""
    try:
        await exchange.reply(result.status, headers, result.body)
    finally:
        try:
            result.finish()
        except Exception:  # the client has its answer: a bookkeeping bug must not turn it into a 500
            log.exception("request bookkeeping failed", extra={"request_id": request_id})
        _access_log(gateway, ctx, request_id, result.status, wire)


def _count_failure(gateway: Gateway, ctx: RequestContext | None, operation: str, status: int) -> None:
    """A request that ends in an error is traffic too: error-rate panels and alerts read
    ``requests_total{status_class}``. Labels stay bounded: an unauthenticated caller, an unknown
    model or an unplanned route is ``-``, never the value the client sent."""
    known = ctx is not None and ctx.requested_model in gateway.config.models
    gateway.metrics.requests.labels(
        ctx.principal.team.name if ctx is not None and ctx.principal else "-",
        ctx.route if ctx is not None else "-",
        ctx.requested_model if ctx is not None and known else "-",
        ctx.served.provider.system if ctx is not None and ctx.served else "-",
        operation,
        status_class(status),
    ).inc()


async def _write_stream(
    gateway: Gateway,
    exchange: Exchange,
    result: StreamReply,
    headers: dict[str, str],
    ctx: RequestContext | None,
    request_id: str,
    wire: str,
) -> None:
    chunks = result.chunks
    try:
        # Start the stream before the headers go out: a generator closed before its first step skips
        # its ``finally``, which is where the upstream is closed and the request settled.
        first = await anext(chunks, b"")
        await exchange.start_stream({**_SSE_HEADERS, **headers})
        if first:
            await exchange.write(first)
        async for chunk in chunks:
            if chunk:
                await exchange.write(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away: stop reading upstream (closing the generator closes the upstream
        # connection) and settle what was delivered.
        await chunks.aclose()  # type: ignore[attr-defined]
        _access_log(gateway, ctx, request_id, 499, wire, "client disconnected")  # the relay counted it
        raise
    _access_log(gateway, ctx, request_id, ctx.status if ctx else 200, wire)


def _access_log(
    gateway: Gateway, ctx: RequestContext | None, request_id: str, status: int, wire: str, error: str = ""
) -> None:
    access = gateway.access_log
    if not access.enabled():
        return
    extra: dict[str, Any] = {"request_id": request_id, "status": status, "wire": wire}
    if ctx is not None:
        if ctx.request_id != request_id:  # the caller sent its own id: keep the ledger's too
            extra["gateway_request_id"] = ctx.request_id
        extra.update(
            team=ctx.principal.team.name if ctx.principal else None,
            key_id=ctx.principal.key_id if ctx.principal else None,
            operation=ctx.operation,
            model=ctx.requested_model,
            route=ctx.route,
            served=ctx.served.logical if ctx.served else None,
            cache=ctx.cache,
            cost_nano=ctx.cost_nano,
            latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
            upstream_ms=round(ctx.upstream_s * 1000, 3),
        )
    if error or (ctx is not None and ctx.error):
        extra["error"] = error or (ctx.error if ctx else "")
    access.write(extra)
