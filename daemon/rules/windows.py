"""Time windows: the hourly bucket grid, calendar periods and rolling windows.

All instants are timezone-aware UTC. Calendar periods (day, ISO week, month) and the bucket
grid are cut in the configured IANA zone, so daylight-saving days are 23 or 25 hours long and
zones with half-hour offsets (Asia/Kolkata, Australia/Lord_Howe) get buckets that start on
their own local hours. Every local midnight is a bucket boundary, which is what makes a
calendar window an exact sum of buckets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from daemon.rules.durations import parse_duration

CalendarUnit = Literal["day", "week", "month"]
CALENDAR_UNITS: tuple[CalendarUnit, ...] = ("day", "week", "month")

_QUARTER = timedelta(minutes=15)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Every offset in use today is a multiple of 15 minutes; 8 quarters cover the longest
# (90-minute) local hour. Past that, fall back to UTC hours (only historic LMT offsets).
_MAX_STEPS = 8


@dataclass(frozen=True)
class Period:
    """A half-open interval [start, end) of UTC instants with a stable identifier."""

    id: str
    start: datetime
    end: datetime

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def require_aware(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime {instant!r}: pass a timezone-aware UTC instant")
    return instant.astimezone(UTC)


def _floor_quarter(instant: datetime) -> datetime:
    seconds = int((instant - _EPOCH) // timedelta(seconds=1))
    return _EPOCH + timedelta(seconds=seconds - seconds % 900)


def _is_local_hour(instant: datetime, tz: ZoneInfo) -> bool:
    local = instant.astimezone(tz)
    return local.minute == 0 and local.second == 0


def _floor_utc_hour(instant: datetime) -> datetime:
    return instant.replace(minute=0, second=0, microsecond=0)


def bucket_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """The start of the bucket (local hour of ``tz``) that holds ``instant``."""
    candidate = _floor_quarter(require_aware(instant))
    for _ in range(_MAX_STEPS):
        if _is_local_hour(candidate, tz):
            return candidate
        candidate -= _QUARTER
    return _floor_utc_hour(require_aware(instant))


def bucket_end(instant: datetime, tz: ZoneInfo) -> datetime:
    """The end (exclusive) of the bucket that holds ``instant``."""
    candidate = _floor_quarter(require_aware(instant)) + _QUARTER
    for _ in range(_MAX_STEPS):
        if _is_local_hour(candidate, tz):
            return candidate
        candidate += _QUARTER
    return _floor_utc_hour(require_aware(instant)) + timedelta(hours=1)


def buckets(start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[Period]:
    """The buckets that cover [start, end), oldest first; the first may begin before ``start``."""
    cursor = bucket_start(start, tz)
    end = require_aware(end)
    while cursor < end:
        nxt = bucket_end(cursor, tz)
        yield Period(id=cursor.isoformat(), start=cursor, end=nxt)
        cursor = nxt


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``tz`` (zones that skip midnight start the day later)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def calendar_period(unit: CalendarUnit, instant: datetime, tz: ZoneInfo) -> Period:
    """The calendar day, ISO week (Monday first) or month in ``tz`` that holds ``instant``."""
    instant = require_aware(instant)
    period = _period_of_local_day(unit, instant.astimezone(tz).date(), tz)
    # A zone that turns its clock back across midnight maps the repeated hour to the earlier
    # local date although the next day has begun; periods must still partition time.
    while instant >= period.end:
        period = _period_of_local_day(unit, period.end.astimezone(tz).date(), tz)
    return period


def _period_of_local_day(unit: CalendarUnit, local_day: date, tz: ZoneInfo) -> Period:
    if unit == "day":
        first, after = local_day, local_day + timedelta(days=1)
        ident = local_day.isoformat()
    elif unit == "week":
        first = local_day - timedelta(days=local_day.weekday())
        after = first + timedelta(days=7)
        iso = first.isocalendar()
        ident = f"{iso.year}-W{iso.week:02d}"
    else:
        first = local_day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        ident = f"{first.year:04d}-{first.month:02d}"
    return Period(id=ident, start=local_midnight(first, tz), end=local_midnight(after, tz))


def is_calendar(window: str) -> bool:
    return window in CALENDAR_UNITS


def validate_window(window: str) -> str:
    """Accept ``day``/``week``/``month`` or a rolling duration; raise ``ValueError`` otherwise."""
    if is_calendar(window):
        return window
    try:
        if parse_duration(window).total_seconds() <= 0:
            raise ValueError("zero")
    except ValueError:
        raise ValueError(
            f"unknown window {window!r}: use day, week, month or a rolling duration such as 24h, 7d"
        ) from None
    return window


def window_period(window: str, now: datetime, tz: ZoneInfo) -> Period:
    """The current period of ``window`` at ``now``.

    Calendar windows give the whole period that holds ``now`` (its end lies in the future);
    rolling windows give ``[now - duration, now)`` with the id ``rolling-<duration>``.
    """
    now = require_aware(now)
    for unit in CALENDAR_UNITS:
        if window == unit:
            return calendar_period(unit, now, tz)
    length = parse_duration(window)
    return Period(id=f"rolling-{window}", start=now - length, end=now)
