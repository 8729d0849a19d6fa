"""OpenAI Chat Completions <-> Anthropic Messages: requests and whole (non-streamed) responses.

Pure dict-in/dict-out functions, no I/O; import them from ``gateway.providers.translate``, which also
holds the whole-response translators.

Deliberately lossy spots (documented so nobody "fixes" them into bugs):

- ``response_format`` json_object/json_schema becomes an instruction appended to the Anthropic system
  prompt. This is best-effort: Claude usually complies, but nothing validates the output against the schema.
- ``temperature`` is clamped into Anthropic's 0..1, not rescaled: 0..1 means the same on both sides, and
  values above 1 have no Anthropic equivalent.
- OpenAI-only knobs (logprobs, seed, penalties, logit_bias, stream_options, reasoning_effort, store, ...)
  are dropped; ``n > 1`` cannot be honoured, so it is refused rather than silently returning one choice.
- Anthropic thinking blocks become ``reasoning_content`` on the OpenAI message (the field OpenAI-compatible
  reasoning servers use); prior thinking in request history is dropped toward OpenAI, which has no slot.
- Toward OpenAI, ``tool_result.is_error``, ``top_k``, ``thinking`` and ``cache_control`` are dropped
  (OpenAI caches prompt prefixes automatically). Images inside a tool_result move to the user message that
  follows the tool messages, because OpenAI tool messages only carry text.
- Toward Anthropic, ``cache_control`` on OpenAI content parts and tools is passed through, so clients that
  mark cache breakpoints keep their prompt-cache discount.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from gateway import jsonutil

JSONDict = dict[str, Any]


class TranslationError(ValueError):
    """A request field with no faithful equivalent on the other wire format; the caller answers 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_ANTHROPIC_TO_OPENAI_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_OPENAI_TO_ANTHROPIC_CHOICE = {"auto": "auto", "none": "none", "required": "any"}
_ANTHROPIC_TO_OPENAI_CHOICE = {"auto": "auto", "none": "none", "any": "required"}
_EMPTY_SCHEMA: JSONDict = {"type": "object", "properties": {}}
_JSON_INSTRUCTION = (
    "Respond with only a single valid JSON object: no prose before or after it and no markdown code fences."
)
_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# ---------------------------------------------------------------- shared helpers (also used by streaming)


def finish_reason_from_anthropic(stop_reason: Any) -> str:
    return _ANTHROPIC_TO_OPENAI_FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason_from_openai(finish_reason: Any, has_tool_calls: bool) -> str:
    """OpenAI says "stop" when tool_choice forced a named function; Anthropic clients loop on "tool_use"."""
    if has_tool_calls and finish_reason in ("stop", None):
        return "tool_use"
    if isinstance(finish_reason, str):
        return _OPENAI_TO_ANTHROPIC_STOP.get(finish_reason, "end_turn")
    return "end_turn"


def anthropic_tool_id(raw: Any) -> str:
    """Anthropic requires tool ids matching ``[A-Za-z0-9_-]+``; map the same raw id to the same safe id."""
    if isinstance(raw, str) and raw:
        return _TOOL_ID_UNSAFE.sub("_", raw)
    return f"toolu_{uuid.uuid4().hex[:24]}"


def openai_completion_id(raw: Any) -> str:
    if isinstance(raw, str) and raw:
        return raw if raw.startswith("chatcmpl-") else f"chatcmpl-{raw}"
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def anthropic_message_id(raw: Any) -> str:
    if isinstance(raw, str) and raw:
        return raw if raw.startswith("msg_") else f"msg_{raw}"
    return f"msg_{uuid.uuid4().hex[:24]}"


def parse_tool_arguments(arguments: Any) -> JSONDict:
    """OpenAI sends arguments as a JSON string, sometimes invalid; Anthropic needs an object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = jsonutil.loads(arguments)
    except jsonutil.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def openai_tool_call(block: JSONDict) -> JSONDict:
    """Anthropic tool_use block -> OpenAI tool call (arguments as a JSON string)."""
    arguments = jsonutil.dumps_str(block.get("input") or {})
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": arguments},
    }


def as_dict(value: Any) -> JSONDict:
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: JSONDict, field: str) -> float | int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(f"{field} must be a number", field)
    return value


def _name(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise TranslationError("a non-empty name is required", param)
    return value


def _split_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:image/png;base64,AAAA`` -> ("image/png", "AAAA"); only base64 payloads are translatable."""
    header, comma, data = url[5:].partition(",")
    if not comma or not header.endswith(";base64") or not data:
        raise TranslationError("data: URLs must be base64-encoded (data:<media type>;base64,<data>)", param)
    return header.split(";", 1)[0], data


# ---------------------------------------------------------------- OpenAI request -> Anthropic request


def openai_chat_to_anthropic_request(
    body: JSONDict, upstream_model: str, default_max_tokens: int
) -> JSONDict:
    """Translate an OpenAI ``/v1/chat/completions`` body into an Anthropic ``/v1/messages`` body."""
    _reject_untranslatable(body)
    system_blocks, messages = _anthropic_messages(body.get("messages"))
    out: JSONDict = {
        "model": upstream_model,
        "max_tokens": _max_tokens(body, default_max_tokens),
        "messages": messages,
    }
    system = _system_value(system_blocks + _response_format_blocks(body.get("response_format")))
    if system:
        out["system"] = system
    _copy_tools_to_anthropic(body, out)
    _copy_sampling_to_anthropic(body, out)
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _reject_untranslatable(body: JSONDict) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("n > 1 (several choices per request) is not supported by this model", "n")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise TranslationError("legacy functions/function_call are not supported; use tools", legacy)
    if body.get("audio") is not None:
        raise TranslationError("audio output is not supported by this model", "audio")


def _max_tokens(body: JSONDict, default: int) -> int:
    for field in ("max_completion_tokens", "max_tokens"):  # the newer field wins when both are sent
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise TranslationError(f"{field} must be a positive integer", field)
        return int(value)
    return default


def _anthropic_messages(raw: Any) -> tuple[list[JSONDict], list[JSONDict]]:
    """Returns (system text blocks, alternating user/assistant turns)."""
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty array", "messages")
    system: list[JSONDict] = []
    turns: list[JSONDict] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TranslationError("each message must be an object", where)
        if msg.get("role") in ("system", "developer"):
            system.extend(_system_blocks(msg.get("content"), f"{where}.content"))
            continue
        role, blocks = _anthropic_turn(msg, where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:  # Anthropic requires strict user/assistant alternation
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    _trim_final_assistant(turns)
    if not turns:
        raise TranslationError("at least one non-empty user or assistant message is required", "messages")
    return system, [{"role": t["role"], "content": _collapse_text(t["content"])} for t in turns]


def _anthropic_turn(msg: JSONDict, where: str) -> tuple[str, list[JSONDict]]:
    role = msg.get("role")
    if role == "user":
        return "user", _anthropic_blocks(msg.get("content"), f"{where}.content")
    if role == "assistant":
        text = _anthropic_blocks(msg.get("content"), f"{where}.content")
        return "assistant", text + _tool_use_blocks(msg.get("tool_calls"), where)
    if role == "tool":  # tool results travel inside a user turn on Anthropic
        return "user", [_tool_result_block(msg, where)]
    raise TranslationError(f"message role {role!r} is not supported", f"{where}.role")


def _anthropic_blocks(content: Any, where: str) -> list[JSONDict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []  # Anthropic rejects empty text
    if not isinstance(content, list):
        raise TranslationError("content must be a string or an array of content parts", where)
    blocks = [_anthropic_block(part, f"{where}[{j}]") for j, part in enumerate(content)]
    return [block for block in blocks if block is not None]


def _anthropic_block(part: Any, where: str) -> JSONDict | None:
    if not isinstance(part, dict):
        raise TranslationError("each content part must be an object", where)
    kind = part.get("type")
    block: JSONDict
    if kind in ("text", "refusal"):
        text = part.get(kind)
        if not isinstance(text, str):
            raise TranslationError(f"{kind} parts need a string {kind!r} field", f"{where}.{kind}")
        if not text:
            return None
        block = {"type": "text", "text": text}
    elif kind == "image_url":
        block = _image_block(part.get("image_url"), f"{where}.image_url")
    elif kind == "file":
        block = _document_block(part.get("file"), f"{where}.file")
    else:
        raise TranslationError(f"content part type {kind!r} is not supported by this model", f"{where}.type")
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(image_url: Any, where: str) -> JSONDict:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = _split_data_url(url, f"{where}.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image_url must be an http(s) URL or a base64 data: URL", f"{where}.url")


def _document_block(file: Any, where: str) -> JSONDict:
    file_data = as_dict(file).get("file_data")
    if not isinstance(file_data, str) or not file_data.startswith("data:"):
        raise TranslationError("only inline files (file_data as a base64 data: URL) are supported", where)
    media_type, data = _split_data_url(file_data, f"{where}.file_data")
    if media_type != "application/pdf":
        raise TranslationError("only PDF files are supported by this model", f"{where}.file_data")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _system_blocks(content: Any, where: str) -> list[JSONDict]:
    blocks = _anthropic_blocks(content, where)
    if any(block["type"] != "text" for block in blocks):
        raise TranslationError("system and developer messages may only contain text", where)
    return blocks


def _tool_use_blocks(tool_calls: Any, where: str) -> list[JSONDict]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise TranslationError("tool_calls must be an array", f"{where}.tool_calls")
    blocks = []
    for k, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{k}]"
        function = as_dict(call).get("function")
        if not isinstance(function, dict) or as_dict(call).get("type", "function") != "function":
            raise TranslationError("only function tool calls are supported", at)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise TranslationError("tool calls need an id", f"{at}.id")
        blocks.append(
            {
                "type": "tool_use",
                "id": anthropic_tool_id(call["id"]),
                "name": _name(function.get("name"), f"{at}.function.name"),
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    return blocks


def _tool_result_block(msg: JSONDict, where: str) -> JSONDict:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError("tool messages need a tool_call_id", f"{where}.tool_call_id")
    block: JSONDict = {"type": "tool_result", "tool_use_id": anthropic_tool_id(call_id)}
    content = _anthropic_blocks(msg.get("content"), f"{where}.content")
    if content:  # Anthropic's content is optional and an empty text block would be rejected
        block["content"] = _collapse_text(content)
    return block


def _collapse_text(blocks: list[JSONDict]) -> str | list[JSONDict]:
    """One plain text block reads best (and round-trips) as a string."""
    if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
        return str(blocks[0]["text"])
    return blocks


def _trim_final_assistant(turns: list[JSONDict]) -> None:
    """Anthropic rejects a final (prefill) assistant turn whose text ends in whitespace."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    blocks = turns[-1]["content"]
    if blocks[-1]["type"] == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {**blocks[-1], "text": text}
        else:
            blocks.pop()
    if not blocks:
        turns.pop()


def _response_format_blocks(response_format: Any) -> list[JSONDict]:
    """Best-effort JSON mode: Anthropic has no response_format, so ask for JSON in the system prompt."""
    if response_format is None:
        return []
    kind = as_dict(response_format).get("type")
    if kind == "text":
        return []
    if kind == "json_object":
        return [{"type": "text", "text": _JSON_INSTRUCTION}]
    if kind == "json_schema":
        schema = as_dict(as_dict(response_format).get("json_schema")).get("schema")
        text = _JSON_INSTRUCTION
        if schema is not None:
            text += " The object must conform to this JSON Schema:\n" + jsonutil.dumps_str(schema)
        return [{"type": "text", "text": text}]
    raise TranslationError(f"response_format type {kind!r} is not supported", "response_format.type")


def _system_value(blocks: list[JSONDict]) -> str | list[JSONDict] | None:
    """Plain string unless a block carries cache_control, which only the block form can express."""
    if not blocks:
        return None
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join(block["text"] for block in blocks)


def _copy_tools_to_anthropic(body: JSONDict, out: JSONDict) -> None:
    tools = body.get("tools")
    if not tools:  # tool_choice and parallel_tool_calls mean nothing without tools
        return
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array", "tools")
    out["tools"] = [_anthropic_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _anthropic_tool(tool: Any, where: str) -> JSONDict:
    function = as_dict(tool).get("function")
    if as_dict(tool).get("type") != "function" or not isinstance(function, dict):
        raise TranslationError("only function tools are supported by this model", f"{where}.type")
    out: JSONDict = {
        "name": _name(function.get("name"), f"{where}.function.name"),
        "input_schema": function.get("parameters") or dict(_EMPTY_SCHEMA),
    }
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    if isinstance(tool.get("cache_control"), dict):
        out["cache_control"] = tool["cache_control"]
    return out


def _anthropic_tool_choice(choice: Any) -> JSONDict | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _OPENAI_TO_ANTHROPIC_CHOICE:
        return {"type": _OPENAI_TO_ANTHROPIC_CHOICE[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = as_dict(choice.get("function")).get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise TranslationError("tool_choice must be auto, none, required or a named function", "tool_choice")


def _copy_sampling_to_anthropic(body: JSONDict, out: JSONDict) -> None:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop] if stop else []
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise TranslationError("stop must be a string or an array of non-empty strings", "stop")
        if stop:
            out["stop_sequences"] = stop
    temperature = _number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(max(temperature, 0), 1)
    top_p = _number(body, "top_p")
    if top_p is not None:
        out["top_p"] = top_p
    if body.get("stream") is True:
        out["stream"] = True


# ---------------------------------------------------------------- Anthropic request -> OpenAI request


def anthropic_messages_to_openai_request(
    body: JSONDict, upstream_model: str, *, max_tokens_field: str = "max_tokens"
) -> JSONDict:
    """Translate an Anthropic ``/v1/messages`` body into an OpenAI chat body.

    ``max_tokens_field="max_completion_tokens"`` suits OpenAI reasoning models, which reject ``max_tokens``.
    """
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TranslationError("messages must be a non-empty array", "messages")
    messages = _openai_system_messages(body.get("system"))
    for i, msg in enumerate(raw):
        messages.extend(_openai_messages(msg, f"messages[{i}]"))
    out: JSONDict = {"model": upstream_model, "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise TranslationError("max_tokens must be a positive integer", "max_tokens")
        out[max_tokens_field] = max_tokens
    _copy_tools_to_openai(body, out)
    _copy_sampling_to_openai(body, out)
    return out


def _openai_system_messages(system: Any) -> list[JSONDict]:
    if system is None or isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise TranslationError("system must be a string or an array of text blocks", "system")
    texts = []
    for j, block in enumerate(system):
        if as_dict(block).get("type") != "text" or not isinstance(block.get("text"), str):
            raise TranslationError("system blocks must be text blocks", f"system[{j}]")
        if block["text"]:
            texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _openai_messages(msg: Any, where: str) -> list[JSONDict]:
    role = as_dict(msg).get("role")
    if role not in ("user", "assistant"):
        raise TranslationError(f"message role {role!r} is not supported", f"{where}.role")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError("content must be a string or an array of content blocks", f"{where}.content")
    if role == "assistant":
        return _openai_assistant(content, f"{where}.content")
    return _openai_user(content, f"{where}.content")


def _openai_assistant(blocks: list[Any], where: str) -> list[JSONDict]:
    parts: list[JSONDict] = []
    calls: list[JSONDict] = []
    for j, block in enumerate(blocks):
        kind = as_dict(block).get("type")
        if kind == "text":
            parts.append(_openai_part(block, f"{where}[{j}]"))
        elif kind == "tool_use":
            calls.append(openai_tool_call(block))
        elif kind not in ("thinking", "redacted_thinking"):  # OpenAI has no input slot for prior reasoning
            raise TranslationError(f"assistant block type {kind!r} is not supported", f"{where}[{j}].type")
    if not parts and not calls:
        return []
    message: JSONDict = {"role": "assistant", "content": _openai_content(parts)}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _openai_user(blocks: list[Any], where: str) -> list[JSONDict]:
    """Tool results become role=tool messages, which OpenAI wants right after the assistant's tool_calls."""
    messages: list[JSONDict] = []
    parts: list[JSONDict] = []
    for j, block in enumerate(blocks):
        if as_dict(block).get("type") == "tool_result":
            messages.append(_openai_tool_message(block, f"{where}[{j}]", parts))
        else:
            parts.append(_openai_part(block, f"{where}[{j}]"))
    if parts:
        messages.append({"role": "user", "content": _openai_content(parts)})
    return messages


def _openai_tool_message(block: JSONDict, where: str, spill: list[JSONDict]) -> JSONDict:
    """Text is stringified into the tool message; images spill into the following user message."""
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, inner in enumerate(content):
            part = _openai_part(inner, f"{where}.content[{j}]")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                spill.append(part)
    elif content is not None:
        raise TranslationError("tool_result content must be a string or an array", f"{where}.content")
    tool_call_id = block.get("tool_use_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise TranslationError("tool_result blocks need a tool_use_id", f"{where}.tool_use_id")
    return {"role": "tool", "tool_call_id": tool_call_id, "content": "\n".join(texts)}


def _openai_part(block: Any, where: str) -> JSONDict:
    kind = as_dict(block).get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise TranslationError("text blocks need a string text field", f"{where}.text")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _source_url(block.get("source"), where)}}
    if kind == "document":
        source = as_dict(block.get("source"))
        if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
            raise TranslationError("only base64 PDF documents are supported", f"{where}.source")
        filename = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {"filename": filename, "file_data": _source_url(source, where)}}
    raise TranslationError(f"content block type {kind!r} is not supported by this model", f"{where}.type")


def _source_url(source: Any, where: str) -> str:
    source = as_dict(source)
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise TranslationError("source must be base64 data or a url", f"{where}.source")


def _openai_content(parts: list[JSONDict]) -> str | list[JSONDict] | None:
    if not parts:
        return None
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _copy_tools_to_openai(body: JSONDict, out: JSONDict) -> None:
    tools = body.get("tools")
    if not tools:  # OpenAI rejects tool_choice/parallel_tool_calls without tools
        return
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array", "tools")
    out["tools"] = [_openai_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = as_dict(choice).get("type")
    if kind in _ANTHROPIC_TO_OPENAI_CHOICE:
        out["tool_choice"] = _ANTHROPIC_TO_OPENAI_CHOICE[kind]
    elif kind == "tool":
        name = _name(choice.get("name"), "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise TranslationError("tool_choice type must be auto, any, tool or none", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _openai_tool(tool: Any, where: str) -> JSONDict:
    kind = as_dict(tool).get("type")
    if kind not in (None, "custom"):  # typed tools (web_search_*, bash_*, ...) run on Anthropic's servers
        raise TranslationError(f"server tool {kind!r} is not supported by this model", f"{where}.type")
    function: JSONDict = {
        "name": _name(tool.get("name"), f"{where}.name"),
        "parameters": tool.get("input_schema") or dict(_EMPTY_SCHEMA),
    }
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _copy_sampling_to_openai(body: JSONDict, out: JSONDict) -> None:
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences must be an array of strings", "stop_sequences")
        if stop:
            out["stop"] = stop
    for field in ("temperature", "top_p"):
        value = _number(body, field)
        if value is not None:
            out[field] = value
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # usage arrives only when asked for
    user_id = as_dict(body.get("metadata")).get("user_id")
    if isinstance(user_id, str) and user_id:
        out["user"] = user_id
