"""Window sums kept between cycles (`daemon.store.sum_cache`) against fresh sums: random
histories of polls, late rewrites of older hours, coarse ranges refined, midnights summed
into daily rows, and time moving windows forward (rolling and calendar, across midnight and
the month's end, in a zone with DST)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.rules.windows import bucket_start
from tests.store.conftest import Stores, examples
from tests.store.histories import (
    SELECTIONS,
    TZ,
    Cells,
    Polls,
    cells,
    replay,
    steps,
    windows,
    with_history,
)


@pytest.mark.long
def test_kept_sums_equal_fresh_sums(stores: Stores) -> None:
    # 8 days of history: the 7-day window at `START` and a day before it, where the coarse day
    # falls (outside the 7 days, inside the month); each day more is 24 writes an example
    def check(history: Cells, coarse: bool, polls: Polls) -> None:
        where = with_history(stores, history, days=8, coarse=coarse)
        store = stores.open(where, exclusive=True, tz=TZ)
        try:
            for _, now in replay(store, polls):
                running = bucket_start(now, TZ)
                spans = windows(now)
                for selection in SELECTIONS:
                    kept = store.member_totals(selection, list(spans.values()), running)
                    fresh = store.member_totals(selection, list(spans.values()))
                    assert kept == fresh, (selection, now)
                oldest = min(s for s, _ in spans.values())
                top, costs = store.cost_windows(spans, oldest, 2, running)
                assert top == store.top_keys(*spans["month"], oldest, 2)
                reference = store.window_costs(spans, keep=top)
                assert {n: sorted(r, key=str) for n, r in costs.items()} == {
                    n: sorted(r, key=str) for n, r in reference.items()
                }
                store.sweep_kept_sums()
        finally:
            store.close()

    examples(stores, sqlite=40, postgresql=8)(
        given(history=cells, coarse=st.booleans(), polls=steps)(check)
    )()
