"""The fetch log."""

from __future__ import annotations

from daemon.store import Store
from tests.store.helpers import T0, H


def test_failures_are_logged(store: Store) -> None:
    store.record_failure("models", T0, T0 + H, T0 + H, "truncated", "file has 3 rows")
    (record,) = store.last_fetches()
    assert not record.ok and record.reason == "truncated"
    assert store.last_success("models") is None


def test_overlaps_looks_up_what_the_stored_ranges_say(store: Store) -> None:
    """`overlaps` (one indexed look, asked after each background hour's call) answers as a
    scan of every stored range would: a day, single hours and a gap between them."""
    store.replace_model_usage(T0, T0 + 24 * H, [], T0 + 25 * H)  # a coarse day
    for hour in (30, 31, 40):
        store.replace_model_usage(T0 + hour * H, T0 + (hour + 1) * H, [], T0 + 50 * H)
    stored = store.segments("models", T0 - 100 * H)
    for start in range(-3, 45):
        for length in (1, 2, 5):
            lo, hi = T0 + start * H, T0 + (start + length) * H
            scan = any(s.start < hi and s.end > lo for s in stored)
            assert store.overlaps("models", lo, hi) == scan, (start, length)
            assert not store.overlaps("api-keys", lo, hi)
