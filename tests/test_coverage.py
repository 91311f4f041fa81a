"""Coarse-to-fine backfill: the plans, the store's one truth per range, and readiness.

The property test drives the real planners and the real store with the simulator's exact
usage (no HTTP: a client that reads the simulator's CSVs directly) through first starts,
partial refinement and hours passing, in zones with DST and half-hour offsets, and checks
that every window a rule trusts (not warming up) sums exactly to the simulator's truth.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.coverage import (
    EXPORTS,
    Fetch,
    Segment,
    backfill_progress,
    coarse_pieces,
    fine_start,
    first_windows,
    is_fine,
    poll_plan,
    refine_plan,
    uncovered,
    warming_rules,
)
from daemon.ingest import fetch_into, load_segments
from daemon.langdock.csv import KeyUsage, ModelUsage, parse_key_usage, parse_model_usage
from daemon.langdock.simulator import Simulator
from daemon.rules.engine import usage_wanted
from daemon.rules.schema import AnyRule, BudgetRule
from daemon.rules.selection import SelectionFilter
from daemon.rules.windows import (
    bucket_end,
    bucket_start,
    buckets,
    calendar_period,
    window_period,
)
from daemon.store import Store
from tests.properties import examples
from tests.rules.helpers import budget

BERLIN = ZoneInfo("Europe/Berlin")
SETTLE = timedelta(minutes=90)
T = datetime(2026, 12, 15, 13, 30, tzinfo=UTC)  # 14:30 in Berlin, mid-month


class DirectClient:
    """The simulator's exports without HTTP (the parsing is the real one)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.calls: list[tuple[str, datetime, datetime]] = []

    async def key_usage(self, start: datetime, end: datetime) -> list[KeyUsage]:
        self.calls.append(("api-keys", start, end))
        text, _ = self.sim.api_keys_csv(start, end, grouped=True)
        return list(parse_key_usage(io.StringIO(text, newline=""), grouped=True))

    async def model_usage(self, start: datetime, end: datetime) -> list[ModelUsage]:
        self.calls.append(("models", start, end))
        text, _ = self.sim.models_csv(start, end)
        return list(parse_model_usage(io.StringIO(text, newline="")))


def rules_for(windows: list[str]) -> list[AnyRule]:
    return [budget(name=f"b-{w}", window=w, limit_usd=100) for w in windows]


def truth(sim: Simulator, start: datetime, end: datetime) -> Decimal:
    return sum(
        (
            sim.pair_usage(ki, mi, start, end)["cost"]
            for ki in range(len(sim.keys))
            for mi in range(len(sim.models))
        ),
        Decimal(0),
    )


def stored(store: Store, start: datetime, end: datetime) -> Decimal:
    return sum((t.cost_usd for t in store.key_model_totals(start, end)), Decimal(0))


def summed(store: Store, windows: list[tuple[datetime, datetime]]) -> list[Decimal]:
    """The same windows through the daily sums (the path budget rules take)."""
    workspace = SelectionFilter(None, "cost_usd", None, None)
    return [
        sum((Decimal(v).scaleb(-9) for v in by_member.values()), Decimal(0))
        for by_member in store.member_totals(workspace, windows)
    ]


async def run(
    client: DirectClient, store: Store, plan: list[Fetch], at: datetime, tz: ZoneInfo
) -> None:
    for fetch in plan:
        await fetch_into(client, store, fetch, lambda: at)  # type: ignore[arg-type]
        if fetch.within is not None:
            start, end = fetch.within
            store.promote_staged(start, end, [b.start for b in buckets(start, end, tz)])


def poll_plan_of(
    store: Store, rules: list[AnyRule], now: datetime, tz: ZoneInfo, backfill: timedelta
) -> list[Fetch]:
    return poll_plan(
        now,
        tz,
        backfill=backfill,
        settle_after=SETTLE,
        segments=load_segments(store, now, tz, backfill),
        windows=first_windows(rules, now, tz),
    )


def refine_plan_of(
    store: Store, rules: list[AnyRule], now: datetime, tz: ZoneInfo, backfill: timedelta
) -> list[Fetch]:
    return refine_plan(
        now,
        tz,
        backfill=backfill,
        segments=load_segments(store, now, tz, backfill),
        staged=store.staged_starts(),
        windows=first_windows(rules, now, tz),
    )


def test_first_poll_fetches_days_and_edges_not_840_hours() -> None:
    windows = first_windows(rules_for(["month", "day", "7d"]), T, BERLIN)
    plan = poll_plan(
        T, BERLIN, backfill=timedelta(days=35), settle_after=SETTLE, segments={}, windows=windows
    )
    keys = [f for f in plan if f.export == "api-keys"]
    models = [f for f in plan if f.export == "models"]
    # the 35 local days of the backfill a day each (so every key's first use is known), today's
    # closed hours in one, and hour by hour from each rolling edge to the end of its day
    assert len(keys) <= 36 + 2 * 24, len(keys)
    assert len(models) == 7  # the running hour and the last six
    assert plan[0].start <= T < plan[0].end and plan[0].why == "running"
    assert all(a.start >= b.start for a, b in pairwise(plan))
    assert min(f.start for f in keys) == bucket_start(T - timedelta(days=35), BERLIN)
    for fetch in keys:  # no range crosses a local midnight
        day = calendar_period("day", fetch.start, BERLIN)
        assert fetch.end <= day.end


def test_coarse_pieces_split_at_midnight_and_fine_zones() -> None:
    day = calendar_period("day", T, BERLIN)
    start = day.start - timedelta(days=2)
    zone = (day.start - timedelta(hours=5), day.start)
    pieces = list(coarse_pieces(start, day.start + timedelta(hours=3), BERLIN, [zone]))
    assert pieces[0] == (start, start + timedelta(days=1))
    assert pieces[1] == (start + timedelta(days=1), zone[0])
    assert [b - a for a, b in pieces[2:7]] == [timedelta(hours=1)] * 5
    assert pieces[7] == (day.start, day.start + timedelta(hours=3))
    assert [a for a, _ in pieces[1:]] == [b for _, b in pieces[:-1]]


def test_uncovered_finds_gaps() -> None:
    h = timedelta(hours=1)
    segs = [Segment(T, T + h, T), Segment(T + 3 * h, T + 4 * h, T)]
    assert uncovered(segs, T - h, T + 5 * h) == [
        (T - h, T),
        (T + h, T + 3 * h),
        (T + 4 * h, T + 5 * h),
    ]
    assert uncovered(segs, T, T + h) == []


async def test_first_start_then_steady_polls_are_two_calls(tmp_path: Path) -> None:
    sim = Simulator(clock=lambda: now)
    client = DirectClient(sim)
    store = Store.open(tmp_path / "s.db", tz=BERLIN)
    rules = rules_for(["month", "day", "7d"])
    now = T
    for minute in range(0, 125, 5):
        now = T + timedelta(minutes=minute)
        plan = poll_plan_of(store, rules, now, BERLIN, timedelta(days=35))
        if minute:  # hours of a coarse day a rolling edge moved into come on top (no refiner)
            polled = [f for f in plan if f.why != "refine"]
            assert len(polled) <= 4 and sum(f.why == "running" for f in polled) == 2
        await run(client, store, plan, now, BERLIN)
    month = calendar_period("month", now, BERLIN)
    assert stored(store, month.start, now) == truth(sim, month.start, now)
    store.close()


@pytest.mark.long
@settings(max_examples=examples(25), deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2026, 3, 1), max_value=datetime(2026, 11, 8), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(
        ["Europe/Berlin", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe"]
    ),
    backfill_days=st.integers(2, 9),
    windows=st.lists(
        st.sampled_from(["day", "week", "month", "24h", "7d", "30h"]), min_size=1, max_size=3
    ),
    steps=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 60)), min_size=1, max_size=4),
)
async def test_trusted_windows_are_exact_and_nothing_counts_twice(
    start: datetime,
    zone: str,
    backfill_days: int,
    windows: list[str],
    steps: list[tuple[int, int]],
) -> None:
    tz = ZoneInfo(zone)
    backfill = timedelta(days=backfill_days)
    # whole seconds: the store keeps instants as unix seconds, so a window ending in the first
    # second of an hour counts that hour from its next second on (harmless, not what this tests)
    now = start.replace(microsecond=0)
    sim = Simulator(clock=lambda: now, keys=Simulator().keys[:2], models=Simulator().models[:2])
    client = DirectClient(sim)
    store = Store.open(Path(":memory:"), tz=tz)
    rules = rules_for(windows)

    async def cycle() -> None:
        plan = poll_plan_of(store, rules, now, tz, backfill)
        await run(client, store, plan, now, tz)
        store.refresh_rollups(now)

    def check() -> None:
        segs = load_segments(store, now, tz, backfill)
        warming = warming_rules(usage_wanted(rules, now, tz), segs, now, tz, backfill)
        oldest = bucket_start(now - backfill, tz)
        spans = []
        for rule in rules:
            assert isinstance(rule, BudgetRule)
            if rule.name in warming:
                continue
            ws = window_period(rule.window, now, tz).start
            ws = max(ws, oldest)
            aligned = ws if bucket_start(ws, tz) == ws else bucket_end(ws, tz)
            expected = truth(sim, aligned, now)
            assert stored(store, ws, now) == expected, (rule.window, warming)
            spans.append(((ws, now), expected))
        if spans:
            assert summed(store, [s for s, _ in spans]) == [e for _, e in spans]
        # one truth per range: the whole backfill sums to the truth whatever the grain
        for export in EXPORTS:
            ranges = sorted((s.start, s.end) for s in segs[export])
            assert all(a[1] <= b[0] for a, b in pairwise(ranges)), "overlapping segments"
        covered_from = min((s.start for s in segs["api-keys"]), default=now)
        assert stored(store, covered_from, now) == truth(sim, covered_from, now)

    await cycle()
    check()
    for minutes, refine_steps in steps:
        plan = refine_plan_of(store, rules, now, tz, backfill)
        await run(client, store, plan[:refine_steps], now, tz)
        check()
        now += timedelta(minutes=minutes)
        await cycle()
        check()
    # refinement to the end: everything hour by hour, nothing staged, nothing warming
    now += SETTLE
    await cycle()
    plan = refine_plan_of(store, rules, now, tz, backfill)
    await run(client, store, plan, now, tz)
    segs = load_segments(store, now, tz, backfill)
    assert all(is_fine(s, tz) for s in segs["api-keys"] if s.end > bucket_start(now - backfill, tz))
    oldest = bucket_start(now - backfill, tz)
    assert [t for t in store.staged_starts() if t >= oldest] == []  # older ones: compacted
    assert backfill_progress(segs, [], now, tz, backfill).done
    assert warming_rules(usage_wanted(rules, now, tz), segs, now, tz, backfill) == {}
    assert fine_start(segs["api-keys"], now, tz) <= bucket_start(now - backfill, tz) + timedelta(
        hours=1
    )
    check()
    store.close()
