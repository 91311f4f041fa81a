"""The usage store: idempotent bucket replacement, exact money, windows across DST."""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.exports import KeyUsage, ModelUsage
from daemon.rules.usage import SelectionFilter
from daemon.rules.windows import buckets, calendar_period
from daemon.store import SCHEMA_VERSION, Store, StoreError

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
H = timedelta(hours=1)


def usage(key: str, model: str, cost: str, requests: int = 1, name: str | None = None) -> KeyUsage:
    return KeyUsage(
        key, name or key, model, requests, Decimal(cost), prompt_tokens=10, completion_tokens=5
    )


def totals(store: Store, start: datetime, end: datetime) -> dict[tuple[str, str], Decimal]:
    return {(t.api_key_id, t.model): t.cost_usd for t in store.key_model_totals(start, end)}


def test_fetching_the_same_hour_twice_gives_the_same_totals(store: Store) -> None:
    rows = [
        usage("k1", "gpt-4o", "0.10"),
        usage("k1", "claude", "0.20"),
        usage("k2", "gpt-4o", "1"),
    ]
    store.replace_key_usage(T0, T0 + H, rows, T0 + H)
    first = totals(store, T0, T0 + H)
    store.replace_key_usage(T0, T0 + H, rows, T0 + 2 * H)
    assert (
        totals(store, T0, T0 + H)
        == first
        == {
            ("k1", "gpt-4o"): Decimal("0.10"),
            ("k1", "claude"): Decimal("0.20"),
            ("k2", "gpt-4o"): Decimal("1"),
        }
    )
    # a later fetch of a growing hour replaces, never adds
    store.replace_key_usage(T0, T0 + H, [usage("k1", "gpt-4o", "0.15")], T0 + 3 * H)
    assert totals(store, T0, T0 + H) == {("k1", "gpt-4o"): Decimal("0.15")}


def test_duplicate_rows_in_one_export_are_summed(store: Store) -> None:
    store.replace_key_usage(
        T0, T0 + H, [usage("k1", "m", "0.1", 2), usage("k1", "m", "0.2", 3)], T0
    )
    (total,) = store.key_model_totals(T0, T0 + H)
    assert (total.requests, total.cost_usd, total.tokens) == (5, Decimal("0.3"), 30)


def test_money_sums_are_exact_decimals(store: Store) -> None:
    for i in range(10):
        start = T0 + i * H
        store.replace_key_usage(start, start + H, [usage("k", "m", "0.1")], start + H)
    (total,) = store.key_model_totals(T0, T0 + 10 * H)
    assert total.cost_usd == Decimal("1.0")  # a float sum would give 0.9999999999999999


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=30,
    )
)
def test_store_sum_equals_decimal_sum(amounts: list[Decimal]) -> None:
    store = Store.open(Path(":memory:"))
    try:
        for i, amount in enumerate(amounts):
            start = T0 + i * H
            store.replace_key_usage(start, start + H, [usage("k", "m", str(amount))], start + H)
        (total,) = store.key_model_totals(T0, T0 + len(amounts) * H)
        assert total.cost_usd == sum(amounts, Decimal(0))
    finally:
        store.close()


def test_a_failed_write_leaves_earlier_data(store: Store) -> None:
    store.replace_key_usage(T0, T0 + H, [usage("k1", "m", "5")], T0 + H)

    def broken() -> Iterator[KeyUsage]:
        yield usage("k1", "m", "6")
        raise ValueError("download broke")

    with pytest.raises(ValueError):
        store.replace_key_usage(T0, T0 + H, broken(), T0 + 2 * H)
    assert totals(store, T0, T0 + H) == {("k1", "m"): Decimal("5")}
    assert store.fetched_segments("api-keys", T0) == {T0: T0 + H}


def test_berlin_day_windows_across_the_autumn_dst_change(store: Store) -> None:
    tz = ZoneInfo("Europe/Berlin")
    day = calendar_period("day", datetime(2026, 10, 25, 12, tzinfo=UTC), tz)
    assert day.duration == timedelta(hours=25)
    around = list(buckets(day.start - 3 * H, day.end + 3 * H, tz))
    for bucket in around:
        store.replace_key_usage(bucket.start, bucket.end, [usage("k", "m", "1")], bucket.end)
    (inside,) = store.key_model_totals(day.start, day.end)
    assert inside.cost_usd == Decimal(25)
    spring = calendar_period("day", datetime(2026, 3, 29, 12, tzinfo=UTC), tz)
    for bucket in buckets(spring.start, spring.end, tz):
        store.replace_key_usage(bucket.start, bucket.end, [usage("k", "m", "1")], bucket.end)
    (short,) = store.key_model_totals(spring.start, spring.end)
    assert short.cost_usd == Decimal(23)


def test_key_names_are_the_last_seen(store: Store) -> None:
    store.replace_key_usage(T0 + H, T0 + 2 * H, [usage("k1", "m", "1", name="new-name")], T0)
    store.replace_key_usage(T0, T0 + H, [usage("k1", "m", "1", name="old-name")], T0)  # backfill
    assert store.api_key_names() == {"k1": "new-name"}
    (total,) = store.key_model_totals(T0, T0 + 2 * H)
    assert total.api_key_name == "new-name"


def test_model_usage_keeps_errors_and_weighted_latency(store: Store) -> None:
    rows = [
        ModelUsage(
            "gpt-4o",
            "openai",
            True,
            100,
            Decimal("1.5"),
            errors=Decimal(2),
            response_time_ms=Decimal(1000),
        ),
        ModelUsage(
            "gpt-4o",
            "openai",
            True,
            300,
            Decimal("0.5"),
            errors=Decimal(1),
            response_time_ms=Decimal(2000),
        ),
    ]
    assert store.replace_model_usage(T0, T0 + H, rows, T0 + H) == 2
    row = store._conn.execute(
        "SELECT requests, cost_usd, errors, response_time_ms FROM model_usage"
    ).fetchone()
    assert row[0] == 400 and Decimal(row[1]) == Decimal("2.0") and Decimal(row[2]) == 3
    assert Decimal(row[3]) == Decimal(1750)
    assert store.models() == ["gpt-4o"]


def test_store_file_is_private_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.db"
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = Store.open(path)
    assert reopened._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert reopened._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    store._conn.execute("PRAGMA user_version=99")
    store.close()
    with pytest.raises(StoreError, match="newer than this version"):
        Store.open(path)


def test_failures_are_logged(store: Store) -> None:
    store.record_failure("models", T0, T0 + H, T0 + H, "truncated", "file has 3 rows")
    (record,) = store.last_fetches()
    assert not record.ok and record.reason == "truncated"
    assert store.last_success("models") is None


def test_window_costs_match_per_window_totals(store: Store) -> None:
    for i in range(30):
        start = T0 + i * H
        store.replace_key_usage(
            start,
            start + H,
            [usage("k1", "m", "0.1234567891"), usage("k2", "m", str(i))],
            start + H,
        )
    ranges = {"a": (T0, T0 + 5 * H), "b": (T0 + 10 * H, T0 + 30 * H), "none": (T0 - H, T0)}
    combined = store.window_costs(ranges)
    for name, (start, end) in ranges.items():
        expected = sorted(
            (t.api_key_id, t.model, t.cost_usd) for t in store.key_model_totals(start, end)
        )
        assert sorted(combined[name]) == expected  # type: ignore[type-var]
    assert combined["none"] == []
    # keys outside `keep` are summed per model under None
    kept = store.window_costs(ranges, keep=["k2"])
    assert sorted(kept["a"], key=str) == sorted(
        [("k2", "m", Decimal(0 + 1 + 2 + 3 + 4)), (None, "m", Decimal("0.1234567891") * 5)],
        key=str,
    )


def test_top_keys_rank_by_spend_then_id(store: Store) -> None:
    rows = [usage(f"k{i}", "m", str(i % 3)) for i in range(6)]
    store.replace_key_usage(T0, T0 + H, rows, T0 + H)
    store.replace_key_usage(T0 - 24 * H, T0 - 23 * H, [usage("old", "m", "9")], T0)
    assert store.top_keys(T0, T0 + H, T0, 4) == ["k2", "k5", "k1", "k4"]
    # a key with usage only earlier in the wider range ranks with zero spend, by id
    assert store.top_keys(T0, T0 + H, T0 - 24 * H, 10) == [
        "k2",
        "k5",
        "k1",
        "k4",
        "k0",
        "k3",
        "old",
    ]
    assert store.top_keys(T0, T0 + H, T0, 10) == ["k2", "k5", "k1", "k4", "k0", "k3"]


@settings(max_examples=25, deadline=None)
@given(
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
    st.lists(st.integers(0, 24 * 9 + 24), min_size=1, max_size=4),  # when sums are refreshed
    st.sampled_from(["Europe/Berlin", "Asia/Kolkata", "UTC"]),
    st.lists(st.tuples(st.integers(0, 24 * 9), st.integers(1, 24 * 9)), min_size=1, max_size=4),
)
def test_window_totals_from_daily_sums_equal_the_hourly_sums(
    writes: list[tuple[int, str, str, Decimal]],
    refreshes: list[int],
    zone: str,
    windows: list[tuple[int, int]],
) -> None:
    tz = ZoneInfo(zone)
    base = datetime(2026, 10, 21, tzinfo=UTC)  # Berlin leaves summer time on the 25th
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "s.db", exclusive=True, tz=tz)
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
        # another zone in the config: the daily sums are rebuilt in it, totals stay the same
        other = Store.open(Path(tmp) / "s.db", exclusive=True, tz=ZoneInfo("America/New_York"))
        other.refresh_rollups(base + timedelta(days=11))
        again = other.window_costs(ranges)
        assert {w: {(k, m): c for k, m, c in rows} for w, rows in again.items()} == expected
        other.close()
