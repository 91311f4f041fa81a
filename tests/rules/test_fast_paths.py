"""The engine's fast paths (docs/PERFORMANCE.md, "Steady state") against the reference each
one stands in for, at random instants and inputs: the steady firing step, a budget member's
conditions made from its outcome, a whole engine run that steps budget alerts from outcomes
against one that steps every condition; and the slotted evaluation."""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest.mock import patch
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules import budget_conditions as kept_conditions
from daemon.rules import engine
from daemon.rules.budget import (
    BudgetEvaluation,
    BudgetTable,
    ExpectedMemo,
    evaluate_budget,
    project,
)
from daemon.rules.budget_conditions import NOTHING, BudgetConditions, Levels, decode, outcome
from daemon.rules.engine import EngineResult, Notice, evaluate
from daemon.rules.lifecycle import AlertKey, AlertState, step, step_firing
from daemon.rules.schema import BudgetRule
from daemon.rules.series import Series
from daemon.rules.types import Condition, Member
from daemon.rules.windows import Period, window_period
from tests.properties import examples
from tests.rules.helpers import H, budget, hourly, index

T0 = datetime(2026, 11, 1, tzinfo=UTC)
instants = st.integers(0, 60 * 24 * 40).map(lambda m: T0 + timedelta(minutes=m))
maybe_instants = st.none() | instants
durations = st.sampled_from([timedelta(0), timedelta(minutes=5), H, timedelta(hours=6)])
severities = st.sampled_from(["info", "warning", "critical"])
KEY = AlertKey("r", "k1", "100", "2026-11")


@st.composite
def alert_states(draw: st.DrawFn) -> AlertState:
    status = draw(st.sampled_from(["pending", "firing", "resolved", "inactive"]))
    return AlertState(
        KEY,
        status,
        draw(instants),
        draw(maybe_instants),
        draw(maybe_instants),
        draw(maybe_instants),
        draw(severities),
    )


@settings(max_examples=examples(200))
@given(alert_states(), st.booleans(), instants, durations, durations, severities)
def test_the_steady_firing_step_is_step(
    previous: AlertState,
    holds: bool,
    now: datetime,
    for_: timedelta,
    keep_firing_for: timedelta,
    severity: str,
) -> None:
    assert step_firing(previous, KEY, holds, now, for_, keep_firing_for, severity) == step(
        previous, KEY, holds, now, for_=for_, keep_firing_for=keep_firing_for, severity=severity
    )


def direct_conditions(
    rule: str, period: str, member: str, levels: Levels, spend: Decimal, forecast: bool | None
) -> tuple[Condition, ...]:
    """The conditions as the engine made them before they were kept (the reference)."""
    made = [
        Condition(AlertKey(rule, member, name, period), spend >= level, severity)
        for name, level, severity in levels
    ]
    if forecast is not None:
        made.append(Condition(AlertKey(rule, member, "forecast", period), forecast, "critical"))
    return tuple(made)


money = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False)


@settings(max_examples=examples(100))
@given(
    st.lists(st.decimals(1, 150, places=1), min_size=1, max_size=4, unique=True),
    st.decimals(1, 500, places=2),
    st.lists(
        st.tuples(st.sampled_from(["k1", "k2", "k|3"]), money, st.none() | st.booleans()),
        max_size=30,
    ),
)
def test_kept_conditions_are_the_conditions_made_directly(
    thresholds: list[Decimal], limit: Decimal, calls: list[tuple[str, Decimal, bool | None]]
) -> None:
    """Thresholds in any order (equal levels too: the spends of several, at any limit)."""
    levels: Levels = [
        (format(t.normalize(), "f"), limit * t / 100, "warning" if i % 2 else "critical")
        for i, t in enumerate(thresholds)
    ]
    kept = BudgetConditions("r", "2026-11", levels, "critical")
    for member, spend, forecast in calls:
        for at in (spend, *(level for _, level, _ in levels)):  # on each level exactly, too
            assert kept.of(member, at, forecast) == direct_conditions(
                "r", "2026-11", member, levels, at, forecast
            )


def test_kept_conditions_start_afresh_with_a_new_period_or_new_thresholds() -> None:
    levels: Levels = [("100", Decimal(10), "warning")]
    first = kept_conditions.budget_conditions("fast-path-rule", "2026-11", levels, "warning")
    assert kept_conditions.budget_conditions("fast-path-rule", "2026-11", levels, "warning") is (
        first
    )
    assert (
        kept_conditions.budget_conditions("fast-path-rule", "2026-12", levels, "warning")
        is not first
    )
    other: Levels = [("90", Decimal(9), "warning")]
    newer = kept_conditions.budget_conditions("fast-path-rule", "2026-12", other, "warning")
    assert newer.of("k1", Decimal(9), None)[0].key == AlertKey(
        "fast-path-rule", "k1", "90", "2026-12"
    )
    assert not newer.of("k2", Decimal(1), None)[0].holds


@given(
    st.lists(st.decimals(1, 150, places=1), min_size=1, max_size=4, unique=True),
    st.sampled_from(["k1", "k|2", ""]),
    st.none() | st.booleans(),
    st.data(),
)
def test_a_members_steps_are_its_conditions(
    thresholds: list[Decimal], member: str, forecast: bool | None, data: st.DataObject
) -> None:
    """What the engine steps for an outcome: each condition's name, outcome, severity and
    alert id, in the conditions' order."""
    levels: Levels = [
        (format(t.normalize(), "f"), t, "warning" if i % 2 else "critical")
        for i, t in enumerate(thresholds)
    ]
    made = BudgetConditions("r|x", "2026-11", levels, "info")
    reached = data.draw(st.integers(0, len(levels)))
    steps = made.steps[outcome(reached, forecast)]
    assert [
        (name, holds, severity, f"r|x|{member}|{id_end}") for name, holds, severity, id_end in steps
    ] == [
        (c.key.condition, c.holds, c.severity, c.key.id)
        for c in made.of_reached(member, reached, forecast)
    ]


@given(st.integers(0, 4), st.none() | st.booleans())
def test_an_outcome_is_its_thresholds_and_forecast(reached: int, forecast: bool | None) -> None:
    code = outcome(reached, forecast)
    assert decode(code) == (reached, forecast) and code != NOTHING
    assert array("I", [code])[0] == code  # the table keeps it in an unsigned 32-bit array


@given(money, money, st.none() | money, st.booleans())
def test_slotted_evaluations_behave_as_the_dataclasses_they_were(
    spend: Decimal, limit: Decimal, projected: Decimal | None, with_usage: bool
) -> None:
    """Every field set, equality and hashing over the compared fields, `replace` (the
    notifier's), frozen; no ``__dict__`` (48 bytes each, by the hundred thousand)."""
    now = T0 + timedelta(days=3)
    period = Period("2026-11", T0, T0 + timedelta(days=30))
    values = {
        "rule": "r",
        "member": Member("k1", "one (k1)", "api_key"),
        "window": "month",
        "period": period,
        "now": now,
        "unit": "usd",
        "spend": spend,
        "limit": limit + 1,
        "forecast": None,
        "conditions": (Condition(KEY, spend >= limit, "warning"),),
    }
    made = BudgetEvaluation(**values)  # type: ignore[arg-type]
    assert {f.name: getattr(made, f.name) for f in dataclasses.fields(made)} == {
        **values,
        "usage": None,
    }
    assert made == BudgetEvaluation(*values.values())  # type: ignore[arg-type]
    assert hash(made) == hash(BudgetEvaluation(*values.values()))  # type: ignore[arg-type]
    assert dataclasses.replace(made, spend=spend + 1).spend == spend + 1
    assert dataclasses.replace(made, spend=spend + 1) != made
    assert repr(made).startswith("BudgetEvaluation(rule='r', member=Member(")
    try:
        made.spend = Decimal(0)  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("a BudgetEvaluation must be frozen")
    assert not hasattr(made, "__dict__")


TZ = ZoneInfo("Europe/Berlin")


def reference_step_budget(
    result: EngineResult,
    rule: BudgetRule,
    table: BudgetTable,
    index: int,
    code: int,
    previous: Mapping[str, AlertState],
    now: datetime,
    seen: set[str],
) -> None:
    """How the engine stepped a budget member before outcomes: every condition of its
    evaluation, with `step`, the forecast come true superseded."""
    evaluation = table[index]
    stepped: dict[str, AlertState | None] = {}
    for condition in evaluation.conditions:
        key_id = condition.key.id
        seen.add(key_id)
        before = previous.get(key_id)
        state, transition = step(
            before,
            condition.key,
            condition.holds,
            now,
            for_=rule.for_,
            keep_firing_for=rule.keep_firing_for,
            severity=condition.severity,
        )
        if (
            condition.key.condition == "forecast"
            and before is not None
            and before.status == "firing"
            and evaluation.spend >= evaluation.limit
        ):
            state, transition = engine._forecast_reached(evaluation, before, stepped, now)
        stepped[condition.key.condition] = state
        if state is not None:
            result.states[key_id] = state
        if transition is not None:
            result.notices.append(Notice(transition, evaluation))


@settings(max_examples=examples(60), deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=3, max_size=3),  # each key's cents an hour
    st.sampled_from(["day", "week", "month", "24h", "7d"]),
    st.lists(st.integers(1, 60 * 24 * 3), min_size=1, max_size=4),  # minutes between cycles
    st.sampled_from(
        [
            [Decimal(100)],
            [Decimal(50), Decimal(100)],
            [Decimal(90), Decimal(80)],
            [Decimal(120), Decimal(100), Decimal(50)],
        ]
    ),
    st.booleans(),
    st.sampled_from([timedelta(0), H]),
    st.sampled_from([timedelta(0), 2 * H]),
)
def test_an_engine_run_stepping_outcomes_is_one_stepping_conditions(
    cents: list[int],
    window: str,
    gaps: list[int],
    thresholds: list[Decimal],
    forecast: bool,
    for_: timedelta,
    keep_firing_for: timedelta,
) -> None:
    """Cycles at random instants (across midnights, week and month ends), alert states
    carried from cycle to cycle: each cycle's result equals the one that steps every
    condition of every member's evaluation (`reference_step_budget`), and the one computed
    with nothing kept from the cycles before."""
    start = datetime(2026, 10, 25, tzinfo=UTC)
    end = datetime(2026, 12, 5, tzinfo=UTC)
    usage = index(
        *(
            hourly(start, end, lambda t, c=c: Decimal(c * (1 + t.hour % 3)) / 100, key=f"k{i}")
            for i, c in enumerate(cents)
        ),
        history_start=start,
    )
    calendar = window in ("day", "week", "month")
    rule = budget(
        name="fast",
        each="api_key",
        window=window,
        limit_usd=5,
        thresholds=thresholds,
        forecast=forecast and calendar,
        **{
            "for": f"{int(for_.total_seconds())}s",
            "keep_firing_for": f"{int(keep_firing_for.total_seconds())}s",
        },
    )
    now = datetime(2026, 11, 29, 20, 7, tzinfo=UTC)
    states: dict[str, AlertState] = {}
    for gap in gaps:
        now += timedelta(minutes=gap)
        kept = evaluate([rule], usage, states, now, TZ)
        with patch.object(engine, "_step_budget", reference_step_budget):
            reference = evaluate([rule], usage, states, now, TZ)
        assert kept.states == reference.states
        assert kept.notices == reference.notices
        kept_conditions._KEPT.clear()
        fresh = evaluate([rule], usage, states, now, TZ)
        assert kept.states == fresh.states
        assert kept.notices == fresh.notices
        assert kept.evaluations == fresh.evaluations
        assert list(kept.per_rule[0]) == list(fresh.per_rule[0])
        stateful = {state.key.member for state in states.values()}
        kept_conditions._KEPT.clear()
        assert list(evaluate_budget(rule, usage, now, TZ, stateful)) == list(fresh.per_rule[0])
        states = kept.states


@settings(max_examples=examples(60), deadline=None)
@given(
    st.lists(st.integers(0, 500), min_size=24 * 7, max_size=24 * 7),  # a week's cents by hour
    st.integers(0, 60 * 24 * 30),
    st.sampled_from(["day", "week", "month"]),
    st.lists(st.tuples(money, st.decimals(1, 5000, places=2)), min_size=1, max_size=5),
)
def test_forecasts_sharing_expected_values_are_forecasts_made_alone(
    week: list[int], minutes: int, window: str, spends_and_limits: list[tuple[Decimal, Decimal]]
) -> None:
    """The rules that forecast one member's window share its buckets' expected values; each
    forecast (any spend, any limit: the crossing differs) is the one made without sharing."""
    history = datetime(2026, 10, 1, tzinfo=UTC)
    points = {
        int((history + h * H).timestamp()): Decimal(week[h % len(week)]) / 100
        for h in range(24 * 75)
    }
    series = Series(points)
    now = history + timedelta(days=35, minutes=minutes)
    period = window_period(window, now, TZ)
    memo: ExpectedMemo = {}
    for spend, limit in spends_and_limits:
        assert project(series, period, now, TZ, spend, limit, history, memo) == project(
            series, period, now, TZ, spend, limit, history
        )
    assert len(memo) == (1 if now < period.end else 0)
