"""Windows and the bucket grid: partitions of time in any zone, DST-exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules.durations import format_duration, parse_duration
from daemon.rules.windows import (
    bucket_end,
    bucket_start,
    buckets,
    calendar_period,
    validate_window,
    window_period,
)
from tests.properties import examples

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=examples(150), deadline=None)
@given(
    instant=instants, zone=st.sampled_from(ZONES), unit=st.sampled_from(["day", "week", "month"])
)
def test_calendar_periods_partition_time(instant: datetime, zone: str, unit: str) -> None:
    tz = ZoneInfo(zone)
    period = calendar_period(unit, instant, tz)  # type: ignore[arg-type]
    assert period.start <= instant < period.end
    following = calendar_period(unit, period.end, tz)  # type: ignore[arg-type]
    assert following.start == period.end, "no gap and no overlap with the next period"
    before = calendar_period(unit, period.start - timedelta(microseconds=1), tz)  # type: ignore[arg-type]
    assert before.end == period.start
    assert following.id != period.id
    # the period starts at local midnight (or the first instant of the day where it is skipped)
    local_start = period.start.astimezone(tz)
    assert local_start.minute == 0 and local_start.hour in (0, 1)


@settings(max_examples=examples(150), deadline=None)
@given(instant=instants, zone=st.sampled_from(ZONES))
def test_buckets_partition_time_and_align_with_local_hours(instant: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    start, end = bucket_start(instant, tz), bucket_end(instant, tz)
    assert start <= instant < end
    assert bucket_start(end, tz) == end and bucket_end(start, tz) == end
    assert timedelta(minutes=30) <= end - start <= timedelta(minutes=90)
    assert start.astimezone(tz).minute == 0


@settings(max_examples=examples(100), deadline=None)
@given(instant=instants, zone=st.sampled_from(ZONES))
def test_a_calendar_day_is_an_exact_run_of_buckets(instant: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    day = calendar_period("day", instant, tz)
    run = list(buckets(day.start, day.end, tz))
    assert run[0].start == day.start and run[-1].end == day.end
    assert all(a.end == b.start for a, b in pairwise(run))


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Berlin", "2026-03-29", 23),
        ("Europe/Berlin", "2026-10-25", 25),
        ("America/New_York", "2026-03-08", 23),
        ("America/New_York", "2026-11-01", 25),
        ("Asia/Kolkata", "2026-03-29", 24),
        ("Australia/Lord_Howe", "2026-04-05", 24.5),
        ("Australia/Lord_Howe", "2026-10-04", 23.5),
    ],
)
def test_dst_days_have_their_real_length(zone: str, day: str, hours: float) -> None:
    tz = ZoneInfo(zone)
    noon = datetime.fromisoformat(f"{day}T12:00").replace(tzinfo=tz).astimezone(UTC)
    period = calendar_period("day", noon, tz)
    assert period.id == day
    assert period.duration == timedelta(hours=hours)
    assert len(list(buckets(period.start, period.end, tz))) == round(hours - 0.01)


def test_kolkata_buckets_start_on_the_half_hour_utc() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    start = bucket_start(datetime(2026, 11, 20, 10, 10, tzinfo=UTC), tz)
    assert start == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def test_period_ids_are_stable() -> None:
    tz = ZoneInfo("Europe/Berlin")
    t = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)  # already 1 December in Berlin
    assert calendar_period("month", t, tz).id == "2026-12"
    assert calendar_period("day", t, tz).id == "2026-12-01"
    assert calendar_period("week", t, tz).id == "2026-W49"
    assert window_period("24h", t, tz).id == "rolling-24h"
    assert window_period("24h", t, tz).start == t - timedelta(hours=24)


def test_windows_and_durations_are_validated() -> None:
    assert validate_window("month") == "month"
    assert validate_window("7d") == "7d"
    with pytest.raises(ValueError, match="unknown window 'fortnight'"):
        validate_window("fortnight")
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert format_duration(parse_duration("14d")) == "14d"
    with pytest.raises(ValueError, match=r"e\.g\. 30s"):
        parse_duration("5 minutes")


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_text_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        bucket_start(datetime(2026, 1, 1), ZoneInfo("UTC"))
