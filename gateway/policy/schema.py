"""JSON Schema of gateway.yaml, generated from the typed config (checked in at policies/schema.json)."""

from __future__ import annotations

from gateway import jsonutil
from gateway.config.model import GatewayConfig


def schema_text() -> str:
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "LLM cost gateway configuration (gateway.yaml)"
    return jsonutil.dumps_pretty(schema) + "\n"
