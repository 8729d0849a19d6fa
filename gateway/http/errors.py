"""Render any ``GatewayError`` in the caller's own wire format (OpenAI or Anthropic)."""

from __future__ import annotations

from gateway import jsonutil
from gateway.errors import GatewayError


def render(err: GatewayError, wire: str, request_id: str) -> tuple[int, bytes, dict[str, str]]:
    headers = dict(err.headers)
    status = err.status
    if wire == "anthropic":
        status = err.anthropic_status or status
        body = {
            "type": "error",
            "error": {"type": err.anthropic_type, "message": err.message},
            "request_id": request_id,
        }
    else:
        body = {
            "error": {"message": err.message, "type": err.openai_type, "param": err.param, "code": err.code}
        }
    return status, jsonutil.dumps(body), headers
