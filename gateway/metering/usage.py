"""One normalized usage record, and the table that maps each wire format's usage fields onto it.

Normalization follows the OpenTelemetry GenAI conventions:
``input_tokens`` includes cache reads and cache writes, ``output_tokens`` includes reasoning.
OpenAI already reports that way (``prompt_tokens`` includes ``cached_tokens``); Anthropic reports
``input_tokens`` *excluding* its cache fields, so they are added here, exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_creation_input_tokens)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "estimated": self.estimated,
        }


def _int(value: Any) -> int:
    """A reported token count, or 0 for anything that is not one (None, negative, bool, text).

    A whole float (``12.0``, as some OpenAI-compatible servers send) is a count too: reading it
    as 0 would bill the request as free.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_openai(usage: dict[str, Any] | None) -> Usage | None:
    """OpenAI chat/completions/embeddings ``usage`` (cached and reasoning are already inside the totals)."""
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    if not isinstance(completion_details, dict):
        completion_details = {}
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_input_tokens=_int(prompt_details.get("cached_tokens")),
        cache_creation_input_tokens=_int(prompt_details.get("cache_write_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
    )


def from_anthropic(usage: dict[str, Any] | None) -> Usage | None:
    """Anthropic ``usage``: ``input_tokens`` excludes the cache fields, so they are added once here."""
    if not isinstance(usage, dict):
        return None
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details") or {}
    reasoning = _int(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=_int(usage.get("input_tokens")) + cache_read + cache_write,
        cached_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        output_tokens=_int(usage.get("output_tokens")),
        reasoning_tokens=reasoning,
    )


def to_openai(usage: Usage) -> dict[str, Any]:
    """Render a normalized usage as an OpenAI ``usage`` object."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
    if usage.cache_creation_input_tokens:
        out["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_creation_input_tokens
    return out


def to_anthropic(usage: Usage) -> dict[str, Any]:
    """Render a normalized usage as an Anthropic ``usage`` object (input excludes the cache fields)."""
    return {
        "input_tokens": usage.uncached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }
