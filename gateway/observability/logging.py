"""One JSON line per log event on stderr; request lines are keyed by request id.

Never logs a key, a provider secret or a prompt (prompts only with ``server.log_prompts: true``).
"""

from __future__ import annotations

import logging
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
