"""Window totals read from the daily sums equal the hourly sums, across DST and zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from daemon.rules.selection import SelectionFilter
from daemon.rules.windows import buckets
from tests.store.conftest import Stores, examples
from tests.store.helpers import T0, usage


def test_window_totals_from_daily_sums_equal_the_hourly_sums(stores: Stores) -> None:
    def check(
        writes: list[tuple[int, str, str, Decimal]],
        refreshes: list[int],
        zone: str,
        windows: list[tuple[int, int]],
    ) -> None:
        tz = ZoneInfo(zone)
        base = datetime(2026, 10, 21, tzinfo=UTC)  # Berlin leaves summer time on the 25th
        where = stores.new()
        store = stores.open(where, exclusive=True, tz=tz)
        grid = list(buckets(base, base + timedelta(days=10), tz))
        steps = sorted(refreshes)
        for i, (hour, key, model, cost) in enumerate(writes):
            bucket = grid[hour]
            # rewriting a bucket (the same hour again) replaces it, even after its day was summed
            store.replace_key_usage(bucket.start, bucket.end, [usage(key, model, str(cost))], T0)
            if steps and i % 7 == 6:
                store.refresh_rollups(base + timedelta(hours=steps.pop(0)))
        for step in steps:
            store.refresh_rollups(base + timedelta(hours=step))
        # late corrections of hours whose days were already summed (settle re-fetches, import)
        for hour, key, model, cost in writes[::3]:
            bucket = grid[hour]
            store.replace_key_usage(
                bucket.start, bucket.end, [usage(key, model, str(cost * 3))], T0
            )
        if len(writes) % 2:
            store.refresh_rollups(base + timedelta(days=11))
        # several windows in one pass: the hours one window reads must not leak into another
        spans = [(base + timedelta(hours=h), base + timedelta(hours=h + n)) for h, n in windows]
        ranges = {f"w{i}": span for i, span in enumerate(spans)}
        combined = store.window_costs(ranges)
        selection = SelectionFilter("api_key", "cost_usd", None, None)
        per_key = store.member_totals(selection, spans)
        expected = {}
        for i, (start, end) in enumerate(spans):
            totals = store.key_model_totals(start, end)
            hourly = {(t.api_key_id, t.model): t.cost_usd for t in totals}
            assert {(k, m): c for k, m, c in combined[f"w{i}"]} == hourly
            by_key: dict[str, Decimal] = {}
            for (key, _), cost in hourly.items():
                by_key[key] = by_key.get(key, Decimal(0)) + cost
            assert {k: Decimal(v).scaleb(-9) for k, v in per_key[i].items()} == by_key
            expected[f"w{i}"] = hourly
        store.close()
        # another zone on the same hour grid: the daily sums are rebuilt in it, totals stay
        # the same (a zone whose hours start elsewhere refetches: tests/store/test_db.py)
        same_grid = "Asia/Colombo" if zone == "Asia/Kolkata" else "America/New_York"
        other = stores.open(where, exclusive=True, tz=ZoneInfo(same_grid))
        other.refresh_rollups(base + timedelta(days=11))
        again = other.window_costs(ranges)
        assert {w: {(k, m): c for k, m, c in rows} for w, rows in again.items()} == expected
        other.close()

    examples(stores, sqlite=25, postgresql=8)(
        given(
            st.lists(
                st.tuples(
                    st.integers(0, 24 * 9 - 1),  # hour of a nine-day span across a DST change
                    st.sampled_from(["k1", "k2", "k3"]),
                    st.sampled_from(["m1", "m2"]),
                    st.decimals(min_value=0, max_value=100, places=11),
                ),
                min_size=1,
                max_size=60,
            ),
            st.lists(
                st.integers(0, 24 * 9 + 24), min_size=1, max_size=4
            ),  # when sums are refreshed
            st.sampled_from(["Europe/Berlin", "Asia/Kolkata", "UTC"]),
            st.lists(
                st.tuples(st.integers(0, 24 * 9), st.integers(1, 24 * 9)), min_size=1, max_size=4
            ),
        )(check)
    )()
