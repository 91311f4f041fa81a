"""Budget windows on raw totals. Which thresholds a budget member reached is found on its
raw total (integer nano-dollars, or an exact `Decimal` finer than that) against the levels
in the same units (`daemon.rules.budget.evaluate_budget`): held to the reference, the spend
in dollars against ``limit * threshold / 100``, at random spends, limits and thresholds, on
each level exactly, a nano-dollar either side and on the whole nano-dollars around it;
members with stored state and quiet members alike. A window's one-total series
(`Series.one`) against `Series`."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules import budget_conditions as kept_conditions
from daemon.rules.budget import evaluate_budget
from daemon.rules.series import NANOS, Raw, Series
from daemon.rules.usage import KeyPoint, UsageIndex
from tests.properties import examples
from tests.rules.helpers import budget

NOW = datetime(2026, 11, 29, 20, 7, tzinfo=UTC)
HOUR = datetime(2026, 11, 29, 3, tzinfo=UTC)
NANO = Decimal(1).scaleb(-NANOS)


@settings(max_examples=examples(75), deadline=None)
@given(
    thresholds=st.lists(st.decimals(1, 150, places=1), min_size=1, max_size=4, unique=True),
    limit=st.decimals(Decimal("0.000000001"), 500, places=9),  # levels between nano-dollars
    spends=st.lists(st.decimals(0, 600, places=11), max_size=12),  # finer than nano-dollars
    stateful=st.sets(st.integers(0, 40), max_size=5),
)
def test_thresholds_reached_on_raw_totals_are_those_reached_in_dollars(
    thresholds: list[Decimal], limit: Decimal, spends: list[Decimal], stateful: set[int]
) -> None:
    rule = budget(
        name="levels", each="api_key", window="day", limit_usd=limit, thresholds=thresholds
    )
    levels = [limit * t / 100 for t in thresholds]
    # each level exactly, a nano-dollar either side and the whole nano-dollars around it
    near = [
        level.scaleb(NANOS).to_integral_value(rounding).scaleb(-NANOS)
        for level in levels
        for rounding in (ROUND_FLOOR, ROUND_CEILING)
    ]
    spends = spends + near + [x + d for x in levels for d in (-NANO, 0, NANO) if x + d >= 0]
    points = [KeyPoint(HOUR, f"k{i}", "m", spend, 1, 1) for i, spend in enumerate(spends) if spend]
    kept_conditions._KEPT.clear()
    with_state = {f"k{i}" for i in stateful}
    table = evaluate_budget(rule, UsageIndex(points), NOW, ZoneInfo("UTC"), with_state)
    for i in range(len(table)):
        evaluation = table[i]
        spend = evaluation.spend
        assert spend == spends[int(evaluation.member.id[1:])]
        reached = {
            format(t.normalize(), "f")
            for t, level in zip(thresholds, levels, strict=True)
            if spend >= level
        }
        assert {c.key.condition for c in evaluation.conditions if c.holds} == reached
        # conditions for the members that reached a level or have stored state; none else
        has_state = evaluation.member.id in with_state
        assert bool(evaluation.conditions) == (bool(reached) or has_state)


@given(
    start=st.integers(0, 2**40),
    value=st.integers(-(2**70), 2**70) | st.decimals(allow_nan=False, allow_infinity=False),
    scale=st.sampled_from([0, NANOS]),
    spans=st.lists(st.tuples(st.integers(-10, 2**41), st.integers(-10, 2**41)), max_size=5),
)
def test_a_window_total_as_one_point_is_the_series_of_that_point(
    start: int, value: Raw, scale: int, spans: list[tuple[int, int]]
) -> None:
    """`Series.one`, as budget windows make their members' series, is `Series` of one point."""
    one, made = Series.one(start, value, scale), Series({start: value}, scale)
    assert (one.starts, one.values, one.scale) == (made.starts, made.values, made.scale)
    for lo, hi in [(start, start + 1), (start + 1, start + 2), *spans]:
        assert one.raw_total(lo, hi) == made.raw_total(lo, hi)
        assert one.has_points(lo, hi) == made.has_points(lo, hi)
