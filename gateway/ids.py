"""Request ids: unique across processes and replicas, and cheap (no syscall per request)."""

from __future__ import annotations

import itertools
import secrets


class RequestIds:
    def __init__(self) -> None:
        # 64 random bits per process, then a counter: unique across replicas without os.urandom per request.
        self._prefix = "req_" + secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"
