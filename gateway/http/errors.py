"""Render any ``GatewayError`` in the caller's own wire format (OpenAI or Anthropic)."""

from __future__ import annotations

from gateway import jsonutil
from gateway.errors import GatewayError


def render(err: GatewayError, wire: str, request_id: str) -> tuple[int, bytes, dict[str, str]]:
    headers = dict(err.headers)
    if wire == "anthropic":
        body = {
            "type": "error",
            "error": {"type": err.anthropic_type, "message": err.message},
            "request_id": request_id,
        }
    else:
        body = {
            "error": {"message": err.message, "type": err.openai_type, "param": err.param, "code": err.code}
        }
    return err.status, jsonutil.dumps(body), headers
