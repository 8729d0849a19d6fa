"""Scenario files: request bodies for the load generator.

A scenario file (``loadtests/scenarios/*.json``) holds::

    {"name": ..., "description": ..., "path": "/v1/chat/completions",
     "unique": true,                 # default for per-request unique prompt suffix
     "body": {...} | "body_from": "other.json",
     "body_overrides": {...},        # shallow-merged over the body
     "fill_tokens": 30000}           # prepend ~N tokens of filler to the last message

The body is serialized ONCE and split around a marker, so a per-request unique
suffix costs one bytes concatenation instead of a JSON round trip per request.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

UNIQUE_MARKER = "__LOADGEN_UNIQUE__"

# Common English words that are each one token (with their leading space) in the
# cl100k/o200k vocabularies, so N filler words are ~N prompt tokens.
_FILLER_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "one",
    "all",
    "we",
    "their",
    "has",
    "been",
    "would",
    "when",
    "will",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str
    unique: bool
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def filler_text(tokens: int) -> str:
    """Deterministic filler of ~``tokens`` tokens (sentences of common words)."""
    word_count = tokens * 16 // 17  # each 16-word sentence is 17 tokens with its period
    words = itertools.islice(itertools.cycle(_FILLER_WORDS), word_count)
    out: list[str] = []
    for i, word in enumerate(words):
        out.append(word)
        if i % 16 == 15:  # a period every 16 words keeps it prose-like
            out[-1] += "."
    return " ".join(out)


def _load_raw(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = orjson.loads(path.read_bytes())
    if "body_from" in raw:
        base = _load_raw(path.parent / raw["body_from"])
        raw = {**base, **{k: v for k, v in raw.items() if k != "body_from"}}
        raw["body"] = {**base["body"], **raw.get("body_overrides", {})}
    elif "body_overrides" in raw:
        raw["body"] = {**raw["body"], **raw["body_overrides"]}
    raw.pop("body_overrides", None)
    return raw


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    raw = _load_raw(p)
    body = orjson.loads(orjson.dumps(raw["body"]))  # deep copy: we mutate messages below
    fill = int(raw.get("fill_tokens", 0))
    if fill > 0:
        last = body["messages"][-1]
        last["content"] = filler_text(fill) + "\n\n" + last["content"]
    return Scenario(
        name=str(raw.get("name", p.stem)),
        description=str(raw.get("description", "")),
        path=str(raw.get("path", "/v1/chat/completions")),
        unique=bool(raw.get("unique", False)),
        body=body,
    )


def body_template(scenario: Scenario, unique: bool) -> tuple[bytes, bytes | None]:
    """Return (prefix, suffix): the request body is prefix + nonce + suffix when
    unique, else just prefix (suffix is None)."""
    body = orjson.loads(orjson.dumps(scenario.body))
    if not unique:
        return orjson.dumps(body), None
    last = body["messages"][-1]
    last["content"] = f"{last['content']} [req {UNIQUE_MARKER}]"
    prefix, suffix = orjson.dumps(body).split(UNIQUE_MARKER.encode(), 1)
    return prefix, suffix
