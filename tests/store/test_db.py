"""Opening the store (a private file, migrated, a newer schema refused) and exact money."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.langdock.csv import KeyUsage
from daemon.store import SCHEMA_VERSION, Store, StoreError
from tests.properties import examples
from tests.store.helpers import T0, H, usage


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


def test_money_sums_are_exact_decimals(store: Store) -> None:
    for i in range(10):
        start = T0 + i * H
        store.replace_key_usage(start, start + H, [usage("k", "m", "0.1")], start + H)
    (total,) = store.key_model_totals(T0, T0 + 10 * H)
    assert total.cost_usd == Decimal("1.0")  # a float sum would give 0.9999999999999999


@settings(max_examples=examples(50), deadline=None)
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


@pytest.mark.parametrize(("zone", "kept"), [("Europe/Berlin", True), ("Asia/Kolkata", False)])
def test_a_zone_whose_hours_start_elsewhere_refetches_the_usage(
    tmp_path: Path, zone: str, kept: bool
) -> None:
    """UTC → Berlin keeps the stored hours (same grid); UTC → Kolkata (hours start at :30)
    drops them, so the next poll fetches the backfill again in the new zone's hours."""
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    store = Store.open(tmp_path / "s.db", exclusive=True, tz=ZoneInfo("UTC"))
    rows = [KeyUsage("k1", "one", "m", 1, Decimal(1))]
    store.replace_key_usage(start, start + timedelta(hours=1), rows, start)
    store.close()
    store = Store.open(tmp_path / "s.db", exclusive=True, tz=ZoneInfo(zone))
    assert bool(store.segments("api-keys", start - timedelta(days=1))) is kept
    assert bool(store.key_model_totals(start, start + timedelta(hours=1))) is kept
    assert store.api_key_names() == {"k1": "one"}  # keys and alert state are kept either way
    store.close()


def test_a_schema_8_store_gains_who_made_each_silence(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()
    now = datetime(2026, 11, 20, 9, tzinfo=UTC)
    with sqlite3.connect(path) as conn:  # back to schema 8, with a silence made back then
        conn.execute("ALTER TABLE silences DROP COLUMN created_by")
        conn.execute("ALTER TABLE key_usage_daily DROP COLUMN rows")  # schema 10
        conn.execute("DROP TABLE leader_lease")  # schema 11
        conn.execute(
            "INSERT INTO silences (rule, member, starts, ends, reason, created_at)"
            " VALUES ('r', NULL, ?, ?, 'old', ?)",
            (int(now.timestamp()), int(now.timestamp()) + 3600, int(now.timestamp())),
        )
        conn.execute("PRAGMA user_version=8")
    store = Store.open(path)
    (old,) = store.silences(now)
    assert old.reason == "old" and old.created_by is None
    store.add_silence("r", "k*", now, now + timedelta(hours=1), "new", "alice")
    assert [s.created_by for s in store.silences(now)] == [None, "alice"]
    store.close()
