"""Random histories of a store for the kept-sum tests (`daemon.store.sum_cache`,
`daemon.store.points_cache`, the cost windows): the strategies of its rows and polls,
`with_history`, a new database holding a history (SQLite: written once per history and
copied), and `replay`, which writes each poll (the running hour, a late rewrite of an older
hour, the days summed) and hands over after each one, for the test to compare what is kept
with a fresh read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from daemon.langdock.csv import KeyUsage
from daemon.rules.selection import SelectionFilter
from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from daemon.store import Store
from tests.store.conftest import Stores

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


Cells = list[tuple[str, str, int, Decimal]]
Polls = list[tuple[int, Cells, object, bool]]


def with_history(stores: Stores, history: Cells, *, days: int, coarse: bool = False) -> str:
    """A new database holding ``history`` in every hour of the ``days`` before `START` (with
    ``coarse``, the oldest day as one range), as its writer in `TZ` wrote it."""

    def write(store: Store) -> None:
        first = bucket_start(START - days * 24 * H, TZ)
        hour = first
        if coarse:
            day = calendar_period("day", first, TZ)
            store.replace_key_usage(day.start, day.end, rows(history), START)
            hour = day.end
        while hour < bucket_start(START, TZ):
            store.replace_key_usage(hour, bucket_end(hour, TZ), rows(history), START)
            hour = bucket_end(hour, TZ)

    return stores.filled((tuple(history), days, coarse), write, TZ)


def replay(store: Store, polls: Polls) -> Iterator[tuple[int, datetime]]:
    """Write each poll from `START` on (the running hour, a late rewrite of an older hour,
    the days summed); after each, yield its index and instant."""
    now = START
    for poll, (minutes, current, late, summed) in enumerate(polls):
        now += timedelta(minutes=5 * minutes)
        running = bucket_start(now, TZ)
        store.replace_key_usage(running, bucket_end(running, TZ), rows(current), now)
        if late is not None:
            back, late_rows = late  # type: ignore[misc]
            old = bucket_start(now - back * H, TZ)
            store.replace_key_usage(old, bucket_end(old, TZ), rows(late_rows), now)
        if summed:
            store.refresh_rollups(now)
        yield poll, now
