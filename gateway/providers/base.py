"""The provider interface: build an upstream call for one deployment, send it on a pooled connection.

``Adapter.prepare`` turns the client's request (in its own wire format) into the upstream's
wire format; ``UpstreamClient.send`` performs it with the configured timeouts and maps transport
failures and error statuses onto the gateway's exception hierarchy. Nothing here knows about
budgets or the HTTP server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import jsonutil
from gateway.config.runtime import DeploymentSpec, ProviderSpec
from gateway.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from gateway.providers.http1 import Http1Client, HttpError, HttpTimeout, Response

# Hop-by-hop headers (RFC 9110 7.6.1) and headers the gateway owns are never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)


_NEVER_FORWARD = HOP_BY_HOP | {
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "content-type",
    "x-gateway-tags",
    "x-gateway-cache-ttl",
    "cache-control",
}


def outgoing_headers(
    provider: ProviderSpec, client_headers: Mapping[str, str], request_id: str
) -> dict[str, str]:
    """Headers for the upstream call: the gateway's request id, allow-listed client headers, the
    provider's configured headers. The client's credentials are never among them."""
    headers = {"content-type": "application/json", "x-request-id": request_id}
    headers.update(forwarded_headers(provider, client_headers))
    headers.update(provider.headers)
    return headers


def forwarded_headers(provider: ProviderSpec, client_headers: Mapping[str, str]) -> dict[str, str]:
    """The client headers this provider receives (its ``forward_headers`` allow-list): they can change
    the answer (``anthropic-beta``), so they are also part of the response cache key."""
    if provider.forward is None:
        return {}
    out = {}
    for name, value in client_headers.items():
        lowered = name.lower()
        if lowered not in _NEVER_FORWARD and provider.forward.match(lowered):
            out[lowered] = value
    return out


@dataclass(slots=True)
class UpstreamCall:
    url: str
    headers: dict[str, str]
    payload: bytes
    wire: str  # the wire format of the upstream's answer: "openai" | "anthropic"
    stream: bool


class Adapter(Protocol):
    def prepare(
        self,
        inbound: str,
        operation: str,
        body: dict[str, Any],
        deployment: DeploymentSpec,
        stream: bool,
        headers: dict[str, str],
        encoded: bytes | None = None,
    ) -> UpstreamCall:
        """``encoded``: the JSON of ``body`` when the caller has it already; sent as-is when the
        upstream needs exactly that body (same wire, same model name, nothing added)."""
        ...

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError: ...


@dataclass(slots=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """``retry-after-ms`` first, then ``retry-after`` in seconds (what the official SDKs read)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return float(raw)
        except ValueError:
            return None
    return None


def error_message(body: bytes) -> tuple[str, dict[str, Any] | None, str | None]:
    """(message, parsed body, code) from an OpenAI- or Anthropic-shaped error body."""
    try:
        parsed = jsonutil.loads(body) if body else None
    except jsonutil.JSONDecodeError:
        return body[:200].decode(errors="replace") or "upstream error", None, None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or "upstream error"), parsed, err.get("code")
    return "upstream error", parsed if isinstance(parsed, dict) else None, None


class UpstreamReply:
    """An upstream response whose status is 2xx. Close it (or read it fully) exactly once."""

    def __init__(self, response: Response, timeouts: Timeouts) -> None:
        self._response = response
        self._timeouts = timeouts
        self.status = response.status
        self._stream: AsyncIterator[bytes] | None = None

    async def read(self) -> bytes:
        """The whole body, within what is left of the call's ``first_byte_s`` deadline."""
        try:
            return await self._response.read()
        except HttpTimeout as exc:
            raise UpstreamTimeout("upstream timed out reading the response") from exc
        except HttpError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from exc

    def stream(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (one iterator per reply, so a caller can resume it)."""
        if self._stream is None:
            self._stream = self._chunks()
        return self._stream

    async def _chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; a silence longer than ``idle_s`` is a timeout."""
        idle_s = self._timeouts.idle_s
        try:
            while True:
                try:
                    chunk = await self._response.next_chunk(idle_s)
                except HttpTimeout as exc:
                    raise UpstreamTimeout("upstream stream stalled") from exc
                except HttpError as exc:
                    raise UpstreamError(f"upstream stream broken: {exc}") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()  # an unfinished stream drops its connection: it must not be reused


class UpstreamClient:
    """Every upstream call goes through one pooled keep-alive HTTP/1.1 client (``http1.py``)."""

    def __init__(self, max_connections: int = 1024) -> None:
        self._max = max_connections
        self._http: Http1Client | None = None

    async def start(self) -> None:
        self._http = Http1Client(max_connections=self._max)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def send(
        self, call: UpstreamCall, adapter: Adapter, timeouts: Timeouts, limit: tuple[str, int] | None = None
    ) -> UpstreamReply:
        """POST the call. A non-streamed call must be answered in full within ``first_byte_s``; a stream
        must start within ``idle_s`` and never fall silent for longer. ``limit``: (provider, its
        ``max_connections``), the most exchanges with that provider at once; a call over it waits for a
        slot up to ``connect_s``."""
        assert self._http is not None, "UpstreamClient.start() was not awaited"
        try:
            response = await self._http.post(
                call.url,
                call.headers,
                call.payload,
                connect_s=timeouts.connect_s,
                head_s=timeouts.idle_s if call.stream else timeouts.first_byte_s,
                total_s=None if call.stream else timeouts.first_byte_s,
                limit=limit,
            )
        except HttpTimeout as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except HttpError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from exc
        if response.status >= 400:
            try:
                body = await response.read()
            except HttpError:
                body = b""
            raise adapter.error_from(response.status, body, response.headers)
        return UpstreamReply(response, timeouts)
