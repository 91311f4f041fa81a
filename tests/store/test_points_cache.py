"""Hourly points kept between cycles (`daemon.store.points_cache`) against a fresh read: the
random histories of tests/store/test_sum_cache.py (polls, late rewrites, coarse ranges,
midnights summed), read over the windows a cycle reads series for (an anomaly's hour and
day, a rolling day, today), with compaction and a rule's window that grows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from tests.store.conftest import Stores, examples
from tests.store.histories import (
    SELECTIONS,
    TZ,
    Cells,
    H,
    Polls,
    cells,
    replay,
    rows,
    steps,
    with_history,
)


def spans(now: datetime) -> list[tuple[datetime, datetime]]:
    end = bucket_end(now, TZ)
    running = bucket_start(now, TZ)
    return [
        (running - 25 * H, end),  # an anomaly: an hour and a day of baseline
        (bucket_end(now - 24 * H, TZ), end),  # a rolling day
        (calendar_period("day", now, TZ).start, end),  # today
    ]


@pytest.mark.long
def test_kept_points_equal_fresh_points(stores: Stores) -> None:
    def check(history: Cells, polls: Polls, compact_at: int) -> None:
        store = stores.open(with_history(stores, history, days=3), exclusive=True, tz=TZ)
        try:
            for poll, now in replay(store, polls):
                if poll == compact_at:  # retention drops the oldest hours under a kept range
                    store.compact(now - 20 * H)
                running = bucket_start(now, TZ)
                for selection in SELECTIONS:
                    for start, end in spans(now):
                        kept = store.member_points(selection, start, end, running)
                        fresh = store.member_points(selection, start, end)
                        assert kept == fresh, (selection, start, end, now)
                store.sweep_kept_sums()
        finally:
            store.close()

    examples(stores, sqlite=40, postgresql=8)(
        given(history=cells, polls=steps, compact_at=st.integers(0, 12))(check)
    )()


def test_a_kept_range_follows_a_rewrite_in_its_middle(stores: Stores) -> None:
    """The settled hours are not read again, except the one a late rewrite changed."""
    store = stores.open(stores.new(), exclusive=True, tz=ZoneInfo("UTC"))
    try:
        selection = SELECTIONS[0]
        start = datetime(2026, 11, 30, tzinfo=UTC)
        for h in range(6):
            at = start + h * H
            store.replace_key_usage(at, at + H, rows([("k1", "m1", 1, Decimal(h))]), at)
        now = start + 5 * H + timedelta(minutes=10)
        fresh_from = start + 5 * H
        reads: list[tuple[datetime, datetime]] = []
        grouped = store._grouped

        def counted(group, sel, lo, hi, *args):  # type: ignore[no-untyped-def]
            reads.append((lo, hi))
            return grouped(group, sel, lo, hi, *args)

        store._grouped = counted  # type: ignore[method-assign]
        first = store.member_points(selection, start, now, fresh_from)
        assert reads == [(start, fresh_from), (fresh_from, now)]
        assert first == {"k1": {int((start + h * H).timestamp()): h * 10**9 for h in range(6)}}
        reads.clear()
        late = start + 2 * H
        store.replace_key_usage(late, late + H, rows([("k1", "m1", 1, Decimal(7))]), now)
        again = store.member_points(selection, start, now, fresh_from)
        assert reads == [(late, late + H), (fresh_from, now)]
        assert again["k1"][int(late.timestamp())] == 7 * 10**9
        assert first["k1"][int(late.timestamp())] == 2 * 10**9  # what was handed out stays
    finally:
        store.close()
