"""Reading the few things the gateway needs out of a request or response body (pure functions)."""

from __future__ import annotations

from typing import Any


def choices(body: dict[str, Any], inbound: str) -> int:
    """How many completions one request produces (``n``, and ``best_of`` for text completions)."""
    if inbound != "openai":
        return 1
    count = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > count:
            count = value
    return count


def client_max_tokens(body: dict[str, Any], inbound: str) -> int | None:
    """The client's output cap, as the upstream will read it. Anthropic has only ``max_tokens``; an
    OpenAI body may carry both fields, and then the larger one bounds the reservation (a translation or
    a provider might honour either), and both are rewritten when the gateway injects a cap."""
    names = ("max_tokens",) if inbound == "anthropic" else ("max_completion_tokens", "max_tokens")
    found = [v for v in (body.get(n) for n in names) if isinstance(v, int) and not isinstance(v, bool)]
    return max(found) if found else None


def output_cap_fields(body: dict[str, Any], inbound: str) -> tuple[str, ...]:
    """Where an injected output cap goes: every cap field the client used (or ``max_tokens``)."""
    if inbound == "anthropic":
        return ("max_tokens",)
    present = tuple(n for n in ("max_completion_tokens", "max_tokens") if n in body)
    return present or ("max_tokens",)


def has_images(body: dict[str, Any]) -> bool:
    """Any image part in the messages (OpenAI ``image_url``/``input_image``, Anthropic ``image``)."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image"):
                    return True
    return False


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn (or a completion prompt): what ``auto`` routing scores."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def body_texts(parsed: dict[str, Any]) -> list[str]:
    """The text a non-streamed answer delivered, in either wire format (for a usage estimate)."""
    texts: list[str] = []
    for choice in parsed.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            if isinstance(choice.get("text"), str):
                texts.append(choice["text"])
    for block in parsed.get("content") or ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            texts.append(block["text"])
    return texts


def asks_stream_usage(body: dict[str, Any]) -> bool:
    """The client asked for the final usage chunk of a stream (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
