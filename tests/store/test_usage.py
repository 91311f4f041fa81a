"""Usage goes in: idempotent bucket replacement, duplicates added up, failed writes harmless,
key names, the models export."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from daemon.langdock.csv import KeyUsage, ModelUsage
from daemon.store import Store
from tests.store.helpers import T0, H, totals, usage


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


def test_a_failed_write_leaves_earlier_data(store: Store) -> None:
    store.replace_key_usage(T0, T0 + H, [usage("k1", "m", "5")], T0 + H)

    def broken() -> Iterator[KeyUsage]:
        yield usage("k1", "m", "6")
        raise ValueError("download broke")

    with pytest.raises(ValueError):
        store.replace_key_usage(T0, T0 + H, broken(), T0 + 2 * H)
    assert totals(store, T0, T0 + H) == {("k1", "m"): Decimal("5")}
    assert store.fetched_segments("api-keys", T0) == {T0: T0 + H}


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


def test_names_from_outside_are_stored_as_they_are(store: Store) -> None:
    """Key and model names come from Langdock's CSV: quotes, backslashes, SQL and percent
    signs stay text (PostgreSQL: every value is written in as a literal, `pg.literal`)."""
    names = [
        "o'brien",
        "back\\\\slash \\\\' x",
        "'); DROP TABLE api_keys; --",
        "50%s %% ?",
        "ключ ✓",
    ]
    rows = [usage(f"k{i}", name, "0.5", name=name) for i, name in enumerate(names)]
    store.replace_key_usage(T0, T0 + H, rows, T0)
    assert store.api_key_names() == {f"k{i}": name for i, name in enumerate(names)}
    assert sorted(store.models()) == sorted(names)
    assert totals(store, T0, T0 + H)[("k2", names[2])] == Decimal("0.5")
