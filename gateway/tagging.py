"""Attribution tags: where a request's cost is charged within a team.

Sources, later ones winning on a key clash:
1. the team's configured tags (``teams.<t>.tags``);
2. OpenAI ``metadata`` (string values only) and ``user`` (as tag ``user``);
3. the ``x-gateway-tags: feature=search,env=prod`` request header;
4. tags a routing rule adds (applied by the pipeline afterwards).
Bounds (``tags:`` in gateway.yaml): at most ``max_tags`` tags, keys up to ``max_key_len`` and values
up to ``max_value_len`` characters, keys limited to ``[A-Za-z0-9_.:-]``. Anything beyond the bounds
is dropped, never rejected, so attribution can never fail a request. Tags go to the ledger, not to
metric labels (unbounded cardinality).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.model import TagLimits

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def _accept(tags: dict[str, str], key: str, value: str, limits: TagLimits) -> None:
    key = key.strip()
    if not key or len(key) > limits.max_key_len or not _KEY_CHARS.issuperset(key):
        return
    if key not in tags and len(tags) >= limits.max_tags:
        return
    tags[key] = value.strip()[: limits.max_value_len]


def parse_header(raw: str, limits: TagLimits, into: dict[str, str]) -> None:
    for item in raw.split(",")[: limits.max_tags * 2]:
        key, sep, value = item.partition("=")
        if sep:
            _accept(into, key, value, limits)


def extract(
    team_tags: Mapping[str, str], body: dict[str, Any], header: str | None, limits: TagLimits
) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in team_tags.items():
        _accept(tags, key, value, limits)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if isinstance(key, str) and isinstance(value, str):
                _accept(tags, key, value, limits)
    user = body.get("user")
    if isinstance(user, str) and user:
        _accept(tags, "user", user, limits)
    if header:
        parse_header(header, limits, tags)
    return tags
