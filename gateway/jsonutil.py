"""The one place JSON is encoded and decoded (orjson), so the hot path never touches stdlib json."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_sorted(obj: Any) -> bytes:
    """Deterministic encoding (sorted keys) for hashing, e.g. cache keys."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def dumps_pretty(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)
