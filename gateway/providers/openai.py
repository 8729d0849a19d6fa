"""OpenAI-compatible upstreams: OpenAI, Azure OpenAI, vLLM, Groq, Together, Ollama, ...

The request body is passed through untouched apart from ``model`` (and the usage request on
streams), so parameters the gateway does not know still reach the provider.
"""

from __future__ import annotations

from typing import Any

from gateway import jsonutil
from gateway.config.runtime import DeploymentSpec
from gateway.errors import InvalidRequest, UpstreamStatusError
from gateway.providers.base import UpstreamCall, error_message, retry_after_seconds
from gateway.providers.translate import TranslationError, anthropic_messages_to_openai_request
from gateway.request_body import asks_stream_usage

_PATHS = {"chat": "chat/completions", "text_completion": "completions", "embeddings": "embeddings"}


class OpenAIAdapter:
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
        if encoded is not None and (
            inbound != "openai"
            or provider.type == "azure"  # the model goes in the URL, not the body
            or body.get("model") != deployment.upstream_model
            or (stream and not asks_stream_usage(body))
        ):
            encoded = None  # the upstream's body differs from the client's
        if inbound == "anthropic":
            try:
                body = anthropic_messages_to_openai_request(body, deployment.upstream_model)
            except TranslationError as exc:
                raise InvalidRequest(str(exc), param=exc.param) from exc
        elif encoded is None:
            body = dict(body)
            body["model"] = deployment.upstream_model
        if stream and encoded is None:
            # Ask for the final usage chunk; the relay hides it from clients that did not ask.
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        headers = dict(headers)
        path = _PATHS[operation]
        if provider.type == "azure":
            body.pop("model", None)
            url = (
                f"{provider.base_url}/openai/deployments/{deployment.upstream_model}/{path}"
                f"?api-version={provider.api_version}"
            )
            headers["api-key"] = provider.api_key
        else:
            url = f"{provider.base_url}/{path}"
            if provider.api_key:
                headers["authorization"] = f"Bearer {provider.api_key}"
        payload = jsonutil.dumps(body) if encoded is None else encoded
        return UpstreamCall(url=url, headers=headers, payload=payload, wire="openai", stream=stream)

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        message, parsed, code = error_message(body)
        return UpstreamStatusError(
            status,
            message,
            body=parsed,
            retry_after_s=retry_after_seconds(headers),
            code=code,
            headers=_passthrough_headers(headers),
        )


def _passthrough_headers(headers: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in headers.items()
        if k in ("retry-after", "retry-after-ms") or k.startswith("x-ratelimit-")
    }
