"""Alert state: the writer keeps the last states in memory and saves only what changed; the
table must always equal what a full rewrite would hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from daemon.rules.lifecycle import AlertKey, AlertState
from tests.store.conftest import Stores, examples

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)

states = st.dictionaries(
    st.sampled_from([f"k{i}" for i in range(6)]),
    st.tuples(st.sampled_from(["pending", "firing", "resolved"]), st.integers(0, 3)),
    max_size=6,
)


def as_states(spec: dict[str, tuple[str, int]]) -> dict[str, AlertState]:
    made = {}
    for member, (status, hours) in spec.items():
        key = AlertKey("rule", member, "100", "2026-11")
        made[key.id] = AlertState(key, status, T0 + timedelta(hours=hours))  # type: ignore[arg-type]
    return made


def test_saving_only_the_changes_keeps_the_table_exact(stores: Stores) -> None:
    def check(saves: list[dict[str, tuple[str, int]]]) -> None:
        path = stores.new()
        writer = stores.open(path, exclusive=True)
        try:
            for spec in saves:
                wanted = as_states(spec)
                assert writer.load_alerts() is not writer.load_alerts()  # copies, never the cache
                writer.save_alerts(wanted)
                reader = stores.open(path)  # what another process reads back from the table
                assert reader.load_alerts() == wanted
                reader.close()
                assert writer.load_alerts() == wanted
        finally:
            writer.close()

    examples(stores, sqlite=60, postgresql=12)(
        given(st.lists(states, min_size=1, max_size=6))(check)
    )()
