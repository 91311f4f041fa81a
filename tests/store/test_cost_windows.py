"""`langdock_cost_usd`'s windows from kept sums (`Store.cost_windows`) against the same
read in SQL (`top_keys`, `window_costs`), with top keys that move beyond the keys whose
pairs are kept (twice the top): random histories with one top key of four, and a key that
jumps from the bottom to the top."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given

from daemon.rules.windows import bucket_end, bucket_start
from daemon.store import Store
from tests.store.conftest import Stores, examples
from tests.store.histories import (
    TZ,
    Cells,
    H,
    Polls,
    cells,
    replay,
    rows,
    steps,
    windows,
    with_history,
)


def same_as_sql(store: Store, now: datetime, top_n: int) -> list[str]:
    spans = windows(now)
    oldest = min(s for s, _ in spans.values())
    top, costs = store.cost_windows(spans, oldest, top_n, bucket_start(now, TZ))
    assert top == store.top_keys(*spans["month"], oldest, top_n)
    reference = store.window_costs(spans, keep=top)
    assert {n: sorted(r, key=str) for n, r in costs.items()} == {
        n: sorted(r, key=str) for n, r in reference.items()
    }
    return top


def test_kept_cost_windows_equal_sql_with_one_top_key(stores: Stores) -> None:
    def check(history: Cells, polls: Polls) -> None:
        store = stores.open(with_history(stores, history, days=2), exclusive=True, tz=TZ)
        try:
            for _, now in replay(store, polls):
                same_as_sql(store, now, 1)
                store.sweep_kept_sums()
        finally:
            store.close()

    examples(stores, sqlite=30, postgresql=6)(given(history=cells, polls=steps)(check))()


def test_a_key_from_the_bottom_enters_the_top(stores: Stores) -> None:
    store = stores.open(stores.new(), exclusive=True, tz=TZ)
    try:
        keys = [f"k{i}" for i in range(10)]
        now = datetime(2026, 11, 30, 12, 10, tzinfo=UTC)
        for back in range(30, 0, -1):  # spend by rank: k0 the most
            hour = bucket_start(now - back * H, TZ)
            spend = [(k, "m1", 1, Decimal(10 - i)) for i, k in enumerate(keys)]
            store.replace_key_usage(hour, bucket_end(hour, TZ), rows(spend), hour)
        assert same_as_sql(store, now, 2) == ["k0", "k1"]
        running = bucket_start(now, TZ)
        jump = [("k9", "m1", 1, Decimal(1000)), ("k9", "m2", 1, Decimal(1))]
        store.replace_key_usage(running, bucket_end(running, TZ), rows(jump), now)
        assert same_as_sql(store, now, 2) == ["k9", "k0"]  # beyond the four kept: chosen again
    finally:
        store.close()
