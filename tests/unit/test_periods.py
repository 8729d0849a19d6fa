"""UTC budget periods: ids, bounds and the Retry-After of a closed budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.periods import period_bounds, period_seconds, seconds_until_reset

DAY = 86400


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ---------------------------------------------------------------------------- daily


def test_daily_bounds() -> None:
    pid, start, end = period_bounds("daily", utc(2026, 11, 28, 13, 45, 7, 123))
    assert (pid, start, end) == ("2026-11-28", utc(2026, 11, 28), utc(2026, 11, 29))


def test_daily_crosses_month_and_year() -> None:
    assert period_bounds("daily", utc(2026, 11, 30, 23, 59, 59))[2] == utc(2026, 12, 1)
    pid, start, end = period_bounds("daily", utc(2026, 12, 31, 23, 59, 59, 999999))
    assert (pid, start, end) == ("2026-12-31", utc(2026, 12, 31), utc(2027, 1, 1))


def test_daily_midnight_starts_the_new_day() -> None:
    assert period_bounds("daily", utc(2027, 1, 1))[0] == "2027-01-01"


def test_non_utc_input_is_converted_to_utc() -> None:
    # 01:30 at UTC+5 is 20:30 the previous day in UTC.
    plus5 = timezone(timedelta(hours=5))
    pid, start, _ = period_bounds("daily", datetime(2026, 3, 2, 1, 30, tzinfo=plus5))
    assert (pid, start) == ("2026-03-01", utc(2026, 3, 1))


# ---------------------------------------------------------------------------- weekly (ISO, Monday)


def test_weekly_starts_on_monday() -> None:
    pid, start, end = period_bounds("weekly", utc(2026, 11, 28, 10))  # a Saturday
    assert (pid, start, end) == ("2026-W48", utc(2026, 11, 23), utc(2026, 11, 30))
    assert start.weekday() == 0


def test_weekly_sunday_belongs_to_the_week_before_and_monday_opens_the_next() -> None:
    assert period_bounds("weekly", utc(2026, 11, 29, 23, 59, 59))[0] == "2026-W48"
    assert period_bounds("weekly", utc(2026, 11, 30))[0] == "2026-W49"


def test_weekly_iso_year_differs_from_calendar_year() -> None:
    # 2024-12-31 is a Tuesday in ISO week 1 of 2025.
    pid, start, end = period_bounds("weekly", utc(2024, 12, 31, 12))
    assert (pid, start, end) == ("2025-W01", utc(2024, 12, 30), utc(2025, 1, 6))
    # 2021-01-03 is a Sunday in ISO week 53 of 2020.
    pid, start, _ = period_bounds("weekly", utc(2021, 1, 3, 8))
    assert (pid, start) == ("2020-W53", utc(2020, 12, 28))


# ---------------------------------------------------------------------------- monthly


def test_monthly_bounds() -> None:
    pid, start, end = period_bounds("monthly", utc(2026, 11, 28, 13))
    assert (pid, start, end) == ("2026-11", utc(2026, 11, 1), utc(2026, 12, 1))


def test_monthly_december_rolls_into_january() -> None:
    pid, start, end = period_bounds("monthly", utc(2026, 12, 31, 23, 59, 59))
    assert (pid, start, end) == ("2026-12", utc(2026, 12, 1), utc(2027, 1, 1))
    assert period_bounds("monthly", utc(2027, 1, 1))[0] == "2027-01"


@pytest.mark.parametrize(
    ("year", "days"),
    [(2024, 29), (2023, 28), (2000, 29), (2100, 28)],
)
def test_monthly_february_length(year: int, days: int) -> None:
    pid, start, end = period_bounds("monthly", utc(year, 2, 15))
    assert pid == f"{year}-02"
    assert end == utc(year, 3, 1)
    assert (end - start).days == days
    assert period_seconds("monthly", utc(year, 2, 15)) == days * DAY


def test_leap_day_is_in_february() -> None:
    assert period_bounds("monthly", utc(2024, 2, 29, 23, 59))[0] == "2024-02"
    assert period_bounds("daily", utc(2024, 2, 29, 1))[0] == "2024-02-29"


# ---------------------------------------------------------------------------- total and errors


def test_total_never_resets() -> None:
    pid, start, end = period_bounds("total", utc(2026, 5, 5))
    assert pid == "total"
    assert start <= utc(1970, 1, 1) and end >= utc(9000, 1, 1)
    assert seconds_until_reset("total", utc(2026, 5, 5)) is None
    assert period_seconds("total", utc(2026, 5, 5)) is None


def test_unknown_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown period"):
        period_bounds("hourly", utc(2026, 1, 1))


# ---------------------------------------------------------------------------- seconds_until_reset


def test_seconds_until_reset_examples() -> None:
    assert seconds_until_reset("daily", utc(2026, 11, 28)) == DAY
    assert seconds_until_reset("daily", utc(2026, 11, 28, 23, 59, 0)) == 60
    assert seconds_until_reset("daily", utc(2026, 11, 28, 12, 0, 0, 300_000)) == 43200  # 43199.7 rounds up
    assert seconds_until_reset("weekly", utc(2026, 11, 29, 23, 0)) == 3600
    assert seconds_until_reset("monthly", utc(2026, 12, 31, 0, 0)) == DAY
    assert seconds_until_reset("monthly", utc(2024, 2, 1)) == 29 * DAY


def test_seconds_until_reset_is_never_zero_nor_early() -> None:
    # A microsecond before the reset still answers 1 s, and 1 µs past a whole second rounds up.
    assert seconds_until_reset("daily", utc(2026, 11, 28, 23, 59, 59, 999_999)) == 1
    assert seconds_until_reset("daily", utc(2026, 11, 28, 23, 59, 58, 999_999)) == 2


_instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)


@given(now=_instants, period=st.sampled_from(["daily", "weekly", "monthly"]))
def test_period_properties(now: datetime, period: str) -> None:
    pid, start, end = period_bounds(period, now)
    assert start <= now < end
    # Every instant of the period has the same id and bounds; the end opens the next period.
    assert period_bounds(period, start) == (pid, start, end)
    assert period_bounds(period, end - timedelta(microseconds=1)) == (pid, start, end)
    next_id, next_start, _ = period_bounds(period, end)
    assert next_start == end and next_id != pid
    assert period_bounds(period, start - timedelta(microseconds=1))[2] == start
    # Retry-After is the remaining time rounded up, and at least 1 s.
    reset = seconds_until_reset(period, now)
    assert reset is not None
    left = (end - now).total_seconds()
    assert reset >= 1 and reset >= left and (reset - 1 < left or reset == 1)
    assert now + timedelta(seconds=reset) >= end
    assert period_seconds(period, now) == (end - start).total_seconds()


@given(now=_instants)
def test_weekly_id_is_the_iso_week(now: datetime) -> None:
    year, week, _ = now.isocalendar()
    assert period_bounds("weekly", now)[0] == f"{year}-W{week:02d}"
