"""Opening the store (a private file, migrated, a newer schema refused) and exact money."""

from __future__ import annotations

import stat
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store import SCHEMA_VERSION, Store, StoreError
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
