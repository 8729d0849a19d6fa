"""One JSON line per log event on stderr; request lines are keyed by request id.

Never logs a key, a provider secret or a prompt (prompts only with ``server.log_prompts: true``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from gateway import jsonutil

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return jsonutil.dumps_str(out)


class ClientProtocolErrors(logging.Filter):
    """aiohttp logs every malformed HTTP request (bad framing, oversized header line) as an error
    with a traceback. It is the client's mistake, already answered with a 400: one warning line
    without a traceback, so real errors stay visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not isinstance(exc, HttpProcessingError):
            exc = exc.__cause__  # a body that fails to decode surfaces as RequestPayloadError(cause)
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request rejected: %s", (exc.message.strip(),)
            record.exc_info, record.exc_text = None, None
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ClientProtocolErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


_ACCESS_FIELDS = b'","level":"info","logger":"gateway.access","msg":"request"'


class AccessLog:
    """The per-request line, written without the logging machinery (a LogRecord, a formatter and a
    handler lock cost more than the rest of a cache hit). Lines are buffered and written together at
    most every 20 ms, in the same JSON shape as every other log line; ``flush`` at shutdown.
    The ``gateway.access`` logger's level still decides whether they are written at all."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._lines: list[bytes] = []
        self._scheduled = False
        self._logger = logging.getLogger("gateway.access")
        self._second = -1
        self._stamp = b""

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = b'{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        # The fixed fields are spliced in as bytes: the same line as one dict through dumps, cheaper.
        rest = b"," + jsonutil.dumps(fields)[1:] if fields else b"}"
        self._lines.append(b"%s.%03dZ%s%s" % (self._stamp, int((now - second) * 1000), _ACCESS_FIELDS, rest))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(0.02, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a closed stderr must never fail a request
