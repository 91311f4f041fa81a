"""Window sums kept between cycles (`daemon.store.sum_cache`) against fresh sums: random
histories of polls, late rewrites of older hours, coarse ranges refined, midnights summed
into daily rows, and time moving windows forward (rolling and calendar, across midnight and
the month's end, in a zone with DST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from daemon.langdock.csv import KeyUsage
from daemon.rules.selection import SelectionFilter
from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from tests.store.conftest import Stores, examples

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 10, 23, 20, tzinfo=UTC)  # the DST change and a month's end ahead
H = timedelta(hours=1)
KEYS, MODELS = ("k1", "k2", "k3", "k4"), ("m1", "m2")
SELECTIONS = (
    SelectionFilter("api_key", "cost_usd", None, None),
    SelectionFilter("model", "tokens", None, frozenset({"m1"})),
    SelectionFilter(None, "requests", frozenset({"k1", "k3"}), None),
)

cells = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.sampled_from(MODELS),
        st.integers(0, 50),
        st.decimals(0, 100, places=9, allow_nan=False),  # nano-dollars: a ranking ties alike
    ),
    max_size=5,
    unique_by=lambda c: c[:2],
)
steps = st.lists(
    st.tuples(
        st.integers(0, 40),  # 5-minute steps to the next poll (up to 3 h 20 min)
        cells,  # the running hour's rows
        st.none() | st.tuples(st.integers(1, 60), cells),  # a late rewrite, hours back
        st.booleans(),  # the poll sums finished days (as the first cycle after midnight)
    ),
    min_size=1,
    max_size=12,
)


def rows(spec: list[tuple[str, str, int, Decimal]]) -> list[KeyUsage]:
    return [
        KeyUsage(k, k, m, n, cost, prompt_tokens=n, completion_tokens=1) for k, m, n, cost in spec
    ]


def windows(now: datetime) -> dict[str, tuple[datetime, datetime]]:
    return {
        "today": (calendar_period("day", now, TZ).start, now),
        "month": (calendar_period("month", now, TZ).start, now),
        "24h": (bucket_end(now - 24 * H, TZ), now),
        "7d": (bucket_end(now - 7 * 24 * H, TZ), now),
    }


def test_kept_sums_equal_fresh_sums(stores: Stores) -> None:
    def check(
        history: list[tuple[str, str, int, Decimal]],
        coarse: bool,
        polls: list[tuple[int, list[tuple[str, str, int, Decimal]], object, bool]],
    ) -> None:
        store = stores.open(stores.new(), exclusive=True, tz=TZ)
        try:
            now = START
            # ten days before the start: hour by hour, or the oldest day as one coarse range
            first = bucket_start(START - 10 * 24 * H, TZ)
            if coarse:
                day = calendar_period("day", first, TZ)
                store.replace_key_usage(day.start, day.end, rows(history), START)
                hour = day.end
            else:
                hour = first
            while hour < bucket_start(START, TZ):
                store.replace_key_usage(hour, bucket_end(hour, TZ), rows(history), START)
                hour = bucket_end(hour, TZ)
            for minutes, current, late, summed in polls:
                now += timedelta(minutes=5 * minutes)
                running = bucket_start(now, TZ)
                store.replace_key_usage(running, bucket_end(running, TZ), rows(current), now)
                if late is not None:
                    back, late_rows = late  # type: ignore[misc]
                    old = bucket_start(now - back * H, TZ)
                    store.replace_key_usage(old, bucket_end(old, TZ), rows(late_rows), now)
                if summed:
                    store.refresh_rollups(now)
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
