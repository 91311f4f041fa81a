"""`budget_rows` reads the budget members `/metrics` shows from the tables' columns; it must
give what each shown member's evaluation gives (`budget_row`), for every unit, with and
without forecasts, alert state and sub-nano-dollar costs, at random instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.metric_series import budget_row, budget_rows
from daemon.rules.budget import evaluate_budget
from tests.properties import examples
from tests.rules.helpers import budget, hourly, index

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 10, 20, tzinfo=UTC)


@settings(max_examples=examples(80), deadline=None)
@given(
    st.lists(
        st.decimals(0, 3, places=12, allow_nan=False, allow_infinity=False), min_size=1, max_size=6
    ),
    st.sampled_from(["day", "week", "month", "24h", "7d"]),
    st.sampled_from(["limit_usd", "limit_requests", "limit_tokens"]),
    st.booleans(),
    st.integers(0, 60 * 24 * 40),
    st.integers(0, 8),
    st.sets(st.integers(0, 5)),
)
def test_rows_from_the_columns_are_the_rows_of_the_evaluations(
    costs: list[Decimal],
    window: str,
    limit: str,
    forecast: bool,
    minutes: int,
    top_n: int,
    stateful: set[int],
) -> None:
    now = START + timedelta(days=7, minutes=minutes)
    usage = index(
        *(
            hourly(START, now, lambda t, c=c: c * (1 + t.hour % 4), key=f"k{i}", requests=i + 1)
            for i, c in enumerate(costs)
        ),
        history_start=START,
    )
    rules = [
        budget(
            name="per-key",
            each="api_key",
            window=window,
            thresholds=[50, 100],
            **{limit: 40},
        ),
        budget(
            name="workspace",
            window=window,
            forecast=forecast and window in ("day", "week", "month"),
            **{limit: 100},
        ),
    ]
    tables = [evaluate_budget(rule, usage, now, TZ, {f"k{i}" for i in stateful}) for rule in rules]
    assert budget_rows(tables, top_n) == tuple(
        budget_row(e) for table in tables for e in table.top(top_n)
    )
