"""Check the few request fields the gateway itself relies on; everything else passes through.

Each check raises ``InvalidRequest`` naming the offending ``param``, as OpenAI does. Unknown
fields are left alone: providers add parameters all the time and the gateway must not break
the apps that use them.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

# Token counts above this are rejected by every provider anyway, and the budget store does its
# arithmetic in Lua doubles (exact below 2^53): 2^31 tokens at the dearest output rate stays far
# below that, an unchecked 2^63 would not.
MAX_TOKENS = 2**31 - 1
MAX_N = 128  # OpenAI's documented maximum number of choices
INT64 = 2**63


def _require_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"you must provide a `{name}` parameter", param=name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"`{name}` must be a non-empty string", param=name)
    return value


def _optional_int(body: dict[str, Any], name: str, minimum: int, maximum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise InvalidRequest(f"`{name}` must be an integer from {minimum} to {maximum}", param=name)
    return value


def _optional_number(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise InvalidRequest(f"`{name}` must be a number", param=name)


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` must be a boolean", param=name)
    return value


def _messages(body: dict[str, Any], name: str = "messages") -> list[Any]:
    messages = body.get(name)
    if messages is None:
        raise InvalidRequest(f"you must provide a `{name}` parameter", param=name)
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f"`{name}` must be a non-empty array", param=name)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"`{name}[{i}]` must be an object", param=f"{name}[{i}]")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"`{name}[{i}].role` must be a string", param=f"{name}[{i}].role")
    return messages


def _common(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _optional_number(body, name)
    _optional_int(body, "n", 1, MAX_N)
    _optional_int(body, "seed", -INT64, INT64 - 1)
    _optional_bool(body, "stream")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array", param="tools")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest("`stop` must be a string or an array of strings", param="stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("`metadata` must be an object", param="metadata")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("`user` must be a string", param="user")


def check_openai_chat(body: dict[str, Any]) -> None:
    _require_str(body, "model")
    _messages(body)
    _common(body)
    _optional_int(body, "max_tokens", 1, MAX_TOKENS)
    _optional_int(body, "max_completion_tokens", 1, MAX_TOKENS)
    rf = body.get("response_format")
    if rf is not None and not isinstance(rf, dict):
        raise InvalidRequest("`response_format` must be an object", param="response_format")


def check_openai_completion(body: dict[str, Any]) -> None:
    _require_str(body, "model")
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("you must provide a `prompt` parameter", param="prompt")
    if not isinstance(prompt, str | list):
        raise InvalidRequest("`prompt` must be a string or an array", param="prompt")
    _common(body)
    _optional_int(body, "max_tokens", 0, MAX_TOKENS)


def check_openai_embeddings(body: dict[str, Any]) -> None:
    _require_str(body, "model")
    value = body.get("input")
    if value is None:
        raise InvalidRequest("you must provide an `input` parameter", param="input")
    if not isinstance(value, str | list) or value in ([], ""):
        raise InvalidRequest("`input` must be a non-empty string or array", param="input")
    _optional_int(body, "dimensions", 1, MAX_TOKENS)
    if body.get("stream") is not None and body.get("stream") is not False:
        raise InvalidRequest("embeddings cannot be streamed", param="stream")


def check_anthropic_messages(body: dict[str, Any]) -> None:
    _require_str(body, "model")
    _messages(body)
    if body.get("max_tokens") is None:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    _optional_int(body, "max_tokens", 1, MAX_TOKENS)
    _optional_number(body, "temperature")
    _optional_bool(body, "stream")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequest("`system` must be a string or an array of blocks", param="system")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array", param="tools")


CHECKS = {
    ("openai", "chat"): check_openai_chat,
    ("openai", "text_completion"): check_openai_completion,
    ("openai", "embeddings"): check_openai_embeddings,
    ("anthropic", "chat"): check_anthropic_messages,
}
