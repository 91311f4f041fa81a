"""The ingestion plan (which buckets a poll fetches) and the poll against the simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest import EXPORTS, plan_buckets, poll
from daemon.langdock import LangdockClient
from daemon.rules.windows import buckets, calendar_period
from daemon.simulator import Fault, Simulator
from daemon.store import Store
from tests.conftest import NOW, FakeClock

BERLIN = ZoneInfo("Europe/Berlin")
SETTLE = timedelta(minutes=90)


def test_first_start_plans_the_whole_backfill_newest_first() -> None:
    plan = plan_buckets(NOW, BERLIN, timedelta(days=2), SETTLE, {})
    assert len(plan) == 49  # 48 complete hours plus the running one
    assert plan[0].start <= NOW < plan[0].end
    assert all(a.start > b.start for a, b in pairwise(plan))


@settings(max_examples=12, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ),
    interval_minutes=st.sampled_from([2, 5, 15]),
    zone=st.sampled_from(["Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
def test_steady_state_polls_make_at_most_two_calls_per_export(
    start: datetime, interval_minutes: int, zone: str
) -> None:
    tz = ZoneInfo(zone)
    backfill = timedelta(hours=12)
    fetched: dict[datetime, datetime] = {}
    now = start
    for bucket in plan_buckets(now, tz, backfill, SETTLE, fetched):
        fetched[bucket.start] = now
    counts = []
    for _ in range(30 * 60 // interval_minutes):  # 30 hours of polls
        now += timedelta(minutes=interval_minutes)
        plan = plan_buckets(now, tz, backfill, SETTLE, fetched)
        counts.append(len(plan))
        for bucket in plan:
            fetched[bucket.start] = now
    assert max(counts) <= 2, "per export: the running bucket plus at most one more"
    # on average: the running bucket, plus two fetches per finished hour
    assert sum(counts) / len(counts) <= 1 + 2.2 * interval_minutes / 60
    # every complete bucket older than the settle delay was fetched after it settled
    for bucket in buckets(now - backfill, now - SETTLE - timedelta(hours=1.5), tz):
        assert fetched[bucket.start] >= bucket.end + SETTLE


def test_downtime_gap_is_filled() -> None:
    up_to = NOW - timedelta(hours=10)  # settled up to the hour holding 00:30 UTC
    fetched = {b.start: b.end + SETTLE for b in buckets(NOW - timedelta(days=2), up_to, BERLIN)}
    plan = plan_buckets(NOW, BERLIN, timedelta(days=2), SETTLE, fetched)
    assert len(plan) == 10  # nine missed hours (01:00-10:00 UTC) and the running one


async def test_poll_stores_exactly_what_langdock_reports(
    client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    report = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(days=2), settle_after=SETTLE
    )
    assert report.ok and report.planned == report.fetched == 2 * 49
    assert report.calls == 98
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
    again = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(days=2), settle_after=SETTLE
    )
    assert again.ok and again.calls == len(EXPORTS)


async def test_langdock_outage_stores_nothing_partial_and_recovers(
    client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    first = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
    )
    assert first.ok
    before = store.key_model_totals(NOW - timedelta(hours=3), NOW)
    clock.advance(timedelta(minutes=5))
    simulator.faults.extend(Fault(503, {"error": "down"}) for _ in range(4))
    failed = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
    )
    assert not failed.ok and failed.aborted == "server" and failed.fetched == 0
    assert store.key_model_totals(NOW - timedelta(hours=3), NOW) == before
    assert not store.last_fetches(1)[0].ok
    clock.advance(timedelta(minutes=5))
    recovered = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
    )
    assert recovered.ok and recovered.fetched == 2


@pytest.mark.parametrize("fault", ["truncate", "garbage"])
async def test_a_bad_file_fails_one_bucket_and_is_refetched(
    fault: str, client: LangdockClient, simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    simulator.download_faults.append(fault)
    report = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
    )
    assert len(report.failures) == 1 and report.aborted is None
    assert report.fetched == report.planned - 1
    failed = report.failures[0]
    assert failed.bucket.start not in store.fetched_segments(failed.export, NOW - timedelta(days=1))
    clock.advance(timedelta(minutes=5))
    retry = await poll(
        client, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
    )
    assert retry.ok
    assert failed.bucket.start in store.fetched_segments(failed.export, NOW - timedelta(days=1))


async def test_auth_failure_stops_the_poll(
    simulator: Simulator, store: Store, clock: FakeClock
) -> None:
    async with LangdockClient(
        simulator.base_url, "wrong", sleep=clock.sleep, clock=clock.mono
    ) as c:
        report = await poll(
            c, store, now=clock, tz=BERLIN, backfill=timedelta(hours=3), settle_after=SETTLE
        )
    assert report.aborted == "auth" and report.calls == 1
