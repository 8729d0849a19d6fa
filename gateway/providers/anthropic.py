"""Anthropic Messages upstreams; OpenAI-format chat requests are translated both ways."""

from __future__ import annotations

from typing import Any

from gateway import jsonutil
from gateway.config.runtime import DeploymentSpec
from gateway.errors import InvalidRequest, UpstreamStatusError
from gateway.providers.base import UpstreamCall, error_message, retry_after_seconds
from gateway.providers.translate import TranslationError, openai_chat_to_anthropic_request

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter:
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
        provider = deployment.provider
        if encoded is not None and (inbound != "anthropic" or body.get("model") != deployment.upstream_model):
            encoded = None  # the upstream's body differs from the client's
        if operation != "chat":
            raise InvalidRequest(
                f"model {deployment.logical!r} is served by Anthropic, which has no {operation} endpoint",
                param="model",
            )
        if inbound == "openai":
            try:
                body = openai_chat_to_anthropic_request(
                    body, deployment.upstream_model, deployment.max_output_tokens
                )
            except TranslationError as exc:
                raise InvalidRequest(str(exc), param=exc.param) from exc
        elif encoded is None:
            body = dict(body)
            body["model"] = deployment.upstream_model
        headers = {"anthropic-version": ANTHROPIC_VERSION, **headers}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return UpstreamCall(
            url=f"{provider.base_url}/v1/messages",
            headers=headers,
            payload=jsonutil.dumps(body) if encoded is None else encoded,
            wire="anthropic",
            stream=stream,
        )

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        message, parsed, _ = error_message(body)
        kind = None
        if parsed and isinstance(parsed.get("error"), dict):
            kind = parsed["error"].get("type")
        return UpstreamStatusError(
            status,
            message,
            body=parsed,
            retry_after_s=retry_after_seconds(headers),
            code=kind,
            headers={k: v for k, v in headers.items() if k in ("retry-after", "retry-after-ms")},
        )
