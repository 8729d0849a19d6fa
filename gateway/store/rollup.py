"""Time bucketing shared by the stores and the reports (UTC throughout)."""

from __future__ import annotations

from datetime import UTC, datetime


def ledger_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def hour_bucket(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y%m%d%H")
