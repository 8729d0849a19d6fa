"""Send one request upstream: deployments in balancer order, retries with backoff, then fallbacks.

Retries: 429, 5xx, timeouts and connection errors are retried with exponential backoff and full
jitter (``uniform(0, min(max, base * 2**attempt))``), honouring the upstream's ``Retry-After``
when it is within ``max_retry_after_s`` (a longer one moves on to the next deployment at once),
all within the request's overall deadline. Other 4xx errors are the client's and are returned
as they are, except a context-window overflow, which moves on to a model with a larger window.
Every failed attempt is kept, in order, for the error message and the log.

A stream is only retried before its first byte: ``dispatch`` reads the first chunk itself, so a
stream that dies before producing anything still falls back; after that the relay owns it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import RetryConfig
from gateway.config.runtime import DeploymentSpec, ModelSpec
from gateway.errors import (
    AllUpstreamsFailed,
    ContextWindowExceeded,
    GatewayError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.observability.metrics import Metrics
from gateway.providers.base import (
    Adapter,
    Timeouts,
    UpstreamCall,
    UpstreamClient,
    UpstreamReply,
    outgoing_headers,
)
from gateway.routing import OPEN, Router

# The body for a deployment, and its JSON when the gateway already has it (an unchanged body).
BodyFor = Callable[[ModelSpec, DeploymentSpec], tuple[dict[str, Any], bytes | None]]
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})


@dataclass(slots=True)
class Dispatched:
    deployment: DeploymentSpec
    model: ModelSpec
    call: UpstreamCall
    reply: UpstreamReply
    first_chunk: bytes = b""
    started: float = 0.0
    attempts: list[tuple[str, GatewayError]] = field(default_factory=list)


def _is_context_overflow(err: UpstreamStatusError) -> bool:
    if err.code in _CONTEXT_CODES:
        return True
    return err.status == 400 and ("prompt is too long" in err.message or "context length" in err.message)


class Dispatcher:
    def __init__(
        self,
        client: UpstreamClient,
        adapters: dict[str, Adapter],
        router: Router,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.adapters = adapters
        self.router = router
        self.metrics = metrics
        self.rng = rng or random.Random()

    async def dispatch(
        self,
        *,
        inbound: str,
        operation: str,
        chain: list[ModelSpec],
        body_for: BodyFor,
        stream: bool,
        retry: RetryConfig,
        timeouts: Timeouts,
        deadline: float,
        fits: Callable[[ModelSpec], bool],
        client_headers: Mapping[str, str],
        request_id: str,
    ) -> Dispatched:
        attempts: list[tuple[str, GatewayError]] = []
        # Panic mode: if every circuit in the chain is open, try them anyway rather than fail blind.
        panic = not any(self.router.has_usable(m) for m in chain)
        for model in chain:
            if not fits(model):
                attempts.append(
                    (
                        model.name,
                        ContextWindowExceeded(
                            f"prompt does not fit the {model.context_window}-token context window"
                        ),
                    )
                )
                continue
            outcome = await self._try_model(
                model,
                inbound,
                operation,
                body_for,
                stream,
                retry,
                timeouts,
                deadline,
                attempts,
                client_headers,
                request_id,
                panic,
            )
            if outcome is not None:
                outcome.attempts = attempts
                if model is not chain[0]:
                    self.metrics.fallbacks.labels(chain[0].name, model.name).inc()
                return outcome
            if time.monotonic() >= deadline:
                break
        if len(attempts) == 1 and isinstance(attempts[0][1], ContextWindowExceeded):
            raise attempts[0][1]
        raise AllUpstreamsFailed(attempts)

    async def _try_model(
        self,
        model: ModelSpec,
        inbound: str,
        operation: str,
        body_for: BodyFor,
        stream: bool,
        retry: RetryConfig,
        timeouts: Timeouts,
        deadline: float,
        attempts: list[tuple[str, GatewayError]],
        client_headers: Mapping[str, str],
        request_id: str,
        panic: bool,
    ) -> Dispatched | None:
        for deployment in list(model.deployments) if panic else self.router.order(model):
            adapter = self.adapters[deployment.provider.type]
            headers = outgoing_headers(deployment.provider, client_headers, request_id)
            body, encoded = body_for(model, deployment)
            call = adapter.prepare(inbound, operation, body, deployment, stream, headers, encoded=encoded)
            for attempt in range(retry.max_attempts):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    attempts.append((model.name, UpstreamTimeout("request deadline reached")))
                    return None
                started = time.monotonic()
                try:
                    reply = await self.client.send(
                        call, adapter, _bounded(timeouts, remaining), deployment.provider.connection_limit
                    )
                    first = await _first_chunk(reply) if stream else b""
                except UpstreamStatusError as err:
                    attempts.append((model.name, err))
                    state = self._failed(deployment, err)
                    if _is_context_overflow(err):
                        return None  # the next model may have a larger window
                    if not err.retryable:
                        raise
                    delay = self._delay(retry, attempt, err.retry_after_s)
                except (UpstreamTimeout, UpstreamError) as err:
                    attempts.append((model.name, err))
                    state = self._failed(deployment, err)
                    delay = self._delay(retry, attempt, None)
                else:
                    self._succeeded(deployment, time.monotonic() - started)
                    return Dispatched(deployment, model, call, reply, first, started)
                if delay is None or attempt + 1 >= retry.max_attempts:
                    break
                if state == OPEN and not panic:
                    break  # this failure opened the circuit: do not retry into it
                if time.monotonic() + delay >= deadline:
                    return None
                await asyncio.sleep(delay)
        return None

    def _succeeded(self, deployment: DeploymentSpec, latency_s: float) -> None:
        before = self.router.state(deployment.id)
        after = self.router.record(deployment.id, True, latency_s)
        if after != before:  # a probe closed the circuit
            self.metrics.breaker_state.labels(deployment.id).set(1 if after == OPEN else 0)

    def _failed(self, deployment: DeploymentSpec, err: GatewayError) -> str:
        """Count the failure; returns the deployment's breaker state afterwards."""
        kind = (
            "timeout"
            if isinstance(err, UpstreamTimeout)
            else (f"status_{err.status}" if isinstance(err, UpstreamStatusError) else "connection")
        )
        self.metrics.upstream_errors.labels(deployment.provider.system, deployment.logical, kind).inc()
        if isinstance(err, UpstreamStatusError) and not err.retryable:
            return self.router.state(deployment.id)  # the client's mistake says nothing about its health
        state = self.router.record(deployment.id, False)
        self.metrics.breaker_state.labels(deployment.id).set(1 if state == OPEN else 0)
        return state

    def _delay(self, retry: RetryConfig, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retrying this deployment, or None to move on."""
        if retry_after is not None:
            return retry_after if retry_after <= retry.max_retry_after_s else None
        cap = min(retry.max_backoff_ms, retry.base_backoff_ms * (2**attempt)) / 1000
        return self.rng.uniform(0, cap)


def _bounded(timeouts: Timeouts, remaining: float) -> Timeouts:
    return Timeouts(
        connect_s=min(timeouts.connect_s, remaining),
        first_byte_s=min(timeouts.first_byte_s, remaining),
        idle_s=timeouts.idle_s,
    )


async def _first_chunk(reply: UpstreamReply) -> bytes:
    """Read until the first byte of a stream arrives; a stream that dies first is retryable."""
    try:
        first = await reply.stream().__anext__()
    except StopAsyncIteration:
        raise UpstreamError("upstream closed the stream before sending anything") from None
    except BaseException:
        reply.close()
        raise
    return first
