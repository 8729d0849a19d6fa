"""Pure translators between the OpenAI Chat Completions and Anthropic Messages wire formats.

This is the public surface the provider adapters import. Whole (non-streamed) responses are translated
here; requests live in ``translate_request`` (its docstring lists the deliberately lossy mappings), and
streaming plus SSE framing in ``translate_stream``. Nothing here does I/O, and inputs are never mutated
(outputs may share nested objects such as JSON schemas with them).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.metering.usage import Usage, from_anthropic, from_openai, to_anthropic, to_openai
from gateway.providers.translate_request import (
    JSONDict,
    TranslationError,
    anthropic_message_id,
    anthropic_messages_to_openai_request,
    anthropic_tool_id,
    as_dict,
    finish_reason_from_anthropic,
    openai_chat_to_anthropic_request,
    openai_completion_id,
    openai_tool_call,
    parse_tool_arguments,
    stop_reason_from_openai,
)
from gateway.providers.translate_stream import (
    OPENAI_SSE_DONE,
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    UpstreamStreamError,
    format_anthropic_sse,
    format_openai_sse,
    parse_sse_events,
)

__all__ = [
    "OPENAI_SSE_DONE",
    "AnthropicStreamToOpenAI",
    "OpenAIStreamToAnthropic",
    "TranslationError",
    "UpstreamStreamError",
    "anthropic_messages_to_openai_request",
    "anthropic_to_openai_chat_response",
    "format_anthropic_sse",
    "format_openai_sse",
    "openai_chat_to_anthropic_request",
    "openai_chat_to_anthropic_response",
    "parse_sse_events",
    "parse_tool_arguments",
]


def anthropic_to_openai_chat_response(resp: JSONDict, model: str, *, created: int | None = None) -> JSONDict:
    """Translate an Anthropic message into an OpenAI ``chat.completion``.

    Text blocks are joined with no separator (Anthropic splits one answer into blocks, e.g. around
    citations); thinking blocks become ``message.reasoning_content``; redacted thinking and server-tool
    blocks are dropped. Usage is normalized, so ``prompt_tokens`` includes cache reads and writes.
    """
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[JSONDict] = []
    for block in resp.get("content") or []:
        kind = as_dict(block).get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif kind == "tool_use":
            tool_calls.append(openai_tool_call(block))
    message: JSONDict = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason_from_anthropic(resp.get("stop_reason")),
    }
    return {
        "id": openai_completion_id(resp.get("id")),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": to_openai(from_anthropic(resp.get("usage")) or Usage()),
    }


def openai_chat_to_anthropic_response(resp: JSONDict, model: str) -> JSONDict:
    """Translate an OpenAI ``chat.completion`` into an Anthropic message (first choice only).

    ``reasoning_content`` is not turned into a thinking block: Anthropic would reject it unsigned if a
    client sent it back.
    """
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise TranslationError("upstream response has no choices", "choices")
    message = as_dict(choices[0].get("message"))
    content: list[JSONDict] = []
    for text in (_message_text(message.get("content")), message.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = as_dict(as_dict(call).get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": anthropic_tool_id(call.get("id")),
                "name": function.get("name") or "",
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    return {
        "id": anthropic_message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason_from_openai(choices[0].get("finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": to_anthropic(from_openai(resp.get("usage")) or Usage()),
    }


def _message_text(content: Any) -> str | None:
    if isinstance(content, list):  # assistant content may come back as text parts
        return "".join(part["text"] for part in content if isinstance(as_dict(part).get("text"), str))
    return content if isinstance(content, str) else None
