"""Fetch plans (which ranges a poll fetches) and the poll against the simulator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.coverage import EXPORTS, ExportKind, Fetch, Segment, first_windows, poll_plan, uncovered
from daemon.ingest import load_segments, poll
from daemon.langdock import LangdockClient
from daemon.langdock.simulator import Fault, Simulator
from daemon.rules.windows import buckets, calendar_period
from daemon.store import Store
from tests.conftest import NOW, FakeClock
from tests.properties import examples

BERLIN = ZoneInfo("Europe/Berlin")
SETTLE = timedelta(minutes=90)
Marks = dict[ExportKind, dict[datetime, Segment]]


def plan_for(
    segments: Mapping[ExportKind, Iterable[Segment]],
    now: datetime,
    tz: ZoneInfo,
    backfill: timedelta,
) -> list[Fetch]:
    return poll_plan(
        now,
        tz,
        backfill=backfill,
        settle_after=SETTLE,
        segments={export: sorted(segments[export], key=lambda s: s.start) for export in EXPORTS},
        windows=first_windows([], now, tz),
    )


def marked(marks: Marks) -> dict[ExportKind, Iterable[Segment]]:
    return {export: marks[export].values() for export in EXPORTS}


def apply(marks: Marks, plan: list[Fetch], at: datetime) -> None:
    for fetch in plan:
        marks[fetch.export][fetch.start] = Segment(fetch.start, fetch.end, at)


def plan_at(store: Store, now: datetime, backfill: timedelta) -> list[Fetch]:
    return plan_for(load_segments(store, now, BERLIN, backfill), now, BERLIN, backfill)


def test_first_start_covers_the_backfill_coarsely_newest_first() -> None:
    backfill = timedelta(days=2)
    plan = plan_for({"api-keys": [], "models": []}, NOW, BERLIN, backfill)
    keys = [f for f in plan if f.export == "api-keys"]
    assert keys[0].start <= NOW < keys[0].end
    assert all(a.start > b.start for a, b in pairwise(keys))
    assert all(a.start == b.end for a, b in pairwise(keys)), "no gap, no overlap"
    first = next(buckets(NOW - backfill, NOW, BERLIN))
    assert keys[-1].start == first.start
    assert len(keys) < 49  # fewer calls than one per hour
    models = [f for f in plan if f.export == "models"]
    assert len(models) == 7  # the running hour and the six before it; the rest later


@settings(max_examples=examples(12), deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ),
    interval_minutes=st.sampled_from([2, 5, 15]),
    zone=st.sampled_from(["Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
@example(start=datetime(2026, 4, 4, tzinfo=UTC), interval_minutes=2, zone="Australia/Lord_Howe")
def test_steady_state_polls_make_at_most_two_calls_per_export(
    start: datetime, interval_minutes: int, zone: str
) -> None:
    tz = ZoneInfo(zone)
    backfill = timedelta(hours=12)
    marks: Marks = {"api-keys": {}, "models": {}}
    now = start
    apply(marks, plan_for(marked(marks), now, tz, backfill), now)
    # the background fills the models export's older hours
    for lo, hi in uncovered(marks["models"].values(), now - backfill, now):
        for bucket in buckets(lo, hi, tz):
            marks["models"][bucket.start] = Segment(bucket.start, bucket.end, now)
    counts = []
    step = timedelta(minutes=interval_minutes)
    for _ in range(30 * 60 // interval_minutes):  # 30 hours of polls
        now += step
        plan = plan_for(marked(marks), now, tz, backfill)
        # the running bucket plus at most one more; where a bucket of 90 minutes (Lord Howe's
        # DST end) has just ended, the hour before it settles at the same time: one more
        longer = any(
            b.end - b.start > timedelta(hours=1) and now - step < b.end <= now
            for b in buckets(now - timedelta(hours=3), now, tz)
        )
        for export in EXPORTS:
            fetches = sum(f.export == export for f in plan)
            assert fetches <= (3 if longer else 2), (export, now)
            counts.append(fetches)
        apply(marks, plan, now)
    # on average: the running bucket, plus two fetches per finished hour
    assert sum(counts) / len(counts) <= 1 + 2.2 * interval_minutes / 60
    # every complete bucket older than the settle delay was fetched after it settled
    for bucket in buckets(now - backfill, now - SETTLE - timedelta(hours=1.5), tz):
        assert marks["api-keys"][bucket.start].fetched_at >= bucket.end + SETTLE


def test_downtime_gap_is_filled_in_one_range() -> None:
    up_to = NOW - timedelta(hours=10)  # settled up to the hour holding 00:30 UTC
    marks: Marks = {
        export: {
            b.start: Segment(b.start, b.end, b.end + SETTLE)
            for b in buckets(NOW - timedelta(days=2), up_to, BERLIN)
        }
        for export in EXPORTS
    }
    plan = plan_for(marked(marks), NOW, BERLIN, timedelta(days=2))
    keys = [(f.start, f.end) for f in plan if f.export == "api-keys"]
    gap = (datetime(2026, 11, 20, 1, tzinfo=UTC), datetime(2026, 11, 20, 10, tzinfo=UTC))
    assert keys == [(gap[1], gap[1] + timedelta(hours=1)), gap]  # running, then the gap
    assert sum(f.export == "models" for f in plan) == 7  # hour by hour, the last six


async def test_poll_stores_exactly_what_langdock_reports(
    client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    plan = plan_at(store, clock(), timedelta(days=2))
    report = await poll(client, store, plan, now=clock)
    assert report.ok and report.planned == report.fetched == len(plan) < 2 * 49
    assert report.calls == len(plan)
    day = calendar_period("day", NOW - timedelta(days=1), BERLIN)
    expected: dict[tuple[str, str], Decimal] = {}
    for ki, key in enumerate(simulator.keys):
        for mi, model in enumerate(simulator.models):
            cost = simulator.pair_usage(ki, mi, day.start, day.end)["cost"]
            if cost:
                expected[(key.id, model.name)] = cost
    got = {(t.api_key_id, t.model): t.cost_usd for t in store.key_model_totals(day.start, day.end)}
    assert got == expected
    # the next poll, five minutes on, only refreshes the running hour of both exports
    clock.advance(timedelta(minutes=5))
    again = await poll(client, store, plan_at(store, clock(), timedelta(days=2)), now=clock)
    assert again.ok and again.calls == len(EXPORTS)


async def test_langdock_outage_stores_nothing_partial_and_recovers(
    client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    first = await poll(client, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert first.ok
    before = store.key_model_totals(NOW - timedelta(hours=3), NOW)
    clock.advance(timedelta(minutes=5))
    simulator.faults.extend(Fault(503, {"error": "down"}) for _ in range(4))
    failed = await poll(client, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert not failed.ok and failed.aborted == "server" and failed.fetched == 0
    assert store.key_model_totals(NOW - timedelta(hours=3), NOW) == before
    assert not store.last_fetches(1)[0].ok
    clock.advance(timedelta(minutes=5))
    recovered = await poll(client, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert recovered.ok and recovered.fetched >= 2


@pytest.mark.parametrize("fault", ["garbage"])
async def test_a_bad_file_fails_one_bucket_and_is_refetched(
    fault: str, client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    simulator.download_faults.append(fault)
    report = await poll(client, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert len(report.failures) == 1 and report.aborted is None
    assert report.fetched == report.planned - 1
    failed = report.failures[0]
    assert failed.bucket.start not in store.fetched_segments(failed.export, NOW - timedelta(days=1))
    clock.advance(timedelta(minutes=5))
    retry = await poll(client, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert retry.ok
    assert failed.bucket.start in store.fetched_segments(failed.export, NOW - timedelta(days=1))


async def test_auth_failure_stops_the_poll(
    simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    async with LangdockClient(
        simulator.base_url, "wrong", sleep=clock.sleep, clock=clock.mono
    ) as c:
        report = await poll(c, store, plan_at(store, clock(), timedelta(hours=3)), now=clock)
    assert report.aborted == "auth" and report.calls == 1
