"""UTC calendar budget periods. The period id is part of every budget counter's key, so a
rollover is simply the first write to a new key: atomic, and the closed period stays readable."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


def period_bounds(period: str, now: datetime) -> tuple[str, datetime, datetime]:
    """(id, start, end) of the period containing ``now``; ``end`` is exclusive."""
    now = now.astimezone(UTC)
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start, start + timedelta(days=1)
    if period == "weekly":  # ISO weeks start on Monday
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}", start, start + timedelta(days=7)
    if period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start.strftime("%Y-%m"), start, end
    if period == "total":
        return "total", _EPOCH, _FAR
    raise ValueError(f"unknown period {period!r}")


def seconds_until_reset(period: str, now: datetime) -> int | None:
    if period == "total":
        return None
    _, _, end = period_bounds(period, now)
    return max(1, math.ceil((end - now).total_seconds()))  # never early: a retry before the reset fails


def period_seconds(period: str, now: datetime) -> float | None:
    """Length of the current period (months vary), for burn-rate maths."""
    if period == "total":
        return None
    _, start, end = period_bounds(period, now)
    return (end - start).total_seconds()
