"""The fetch log."""

from __future__ import annotations

from daemon.store import Store
from tests.store.helpers import T0, H


def test_failures_are_logged(store: Store) -> None:
    store.record_failure("models", T0, T0 + H, T0 + H, "truncated", "file has 3 rows")
    (record,) = store.last_fetches()
    assert not record.ok and record.reason == "truncated"
    assert store.last_success("models") is None
