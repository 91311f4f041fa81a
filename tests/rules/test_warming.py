"""Rules warming up (history still being fetched): evaluated and shown, but their alerts
stand still, and reports show "warming up" instead of numbers nobody should trust yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.cli.rules_table import render_active, render_evaluations
from daemon.notify import plan
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.engine import evaluate
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.usage import KeyPoint
from tests.properties import examples
from tests.rules.helpers import H, anomaly, budget, hourly, index

UTCZ = ZoneInfo("UTC")
T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
LAST_HOUR = T0.replace(minute=0) - H
WHY = "baseline 40 % fetched"


def spike_usage() -> list[KeyPoint]:
    start = T0.replace(minute=0) - timedelta(days=15)
    return hourly(start, T0, lambda t: "100" if t == LAST_HOUR else "1")


def test_a_warming_rule_is_evaluated_but_cannot_fire() -> None:
    rules = [
        budget(name="b", window="day", limit_usd=5, thresholds=[50, 100], for_="10m"),
        anomaly(name="a", window="1h", baseline="14d"),
        budget(name="ready", window="day", limit_usd=5),
    ]
    usage = index(spike_usage())
    warming = {"b": WHY, "a": "hourly baseline 14 % fetched"}
    result = evaluate(rules, usage, {}, T0, UTCZ, warming=warming)
    assert result.warming == warming
    by_rule = {e.rule: e for e in result.all_evaluations()}
    assert isinstance(by_rule["a"], AnomalyEvaluation) and by_rule["a"].conditions[0].holds
    assert isinstance(by_rule["b"], BudgetEvaluation) and by_rule["b"].spend > 5
    # nothing moves for the warming rules: no firing, no pending, no notice
    assert {s.key.rule for s in result.states.values()} == {"ready"}
    assert [n.transition.state.key.rule for n in result.notices] == ["ready"]


def test_previous_states_of_a_warming_rule_are_carried_over_unchanged() -> None:
    rule = budget(name="b", window="month", limit_usd=1000, thresholds=[80])
    firing = AlertState(AlertKey("b", "*", "80", "2026-11"), "firing", T0 - H, T0 - H, T0 - H)
    ended = AlertState(AlertKey("b", "*", "80", "2026-10"), "firing", T0 - H, T0 - H, T0 - H)
    pending = AlertState(AlertKey("b", "k9", "80", "2026-11"), "pending", T0 - H, T0 - H)
    previous = {s.key.id: s for s in (firing, ended, pending)}
    usage = index(hourly(T0 - 3 * H, T0, lambda _: "1"))  # far below: would resolve them all
    result = evaluate([rule], usage, previous, T0, UTCZ, warming={"b": WHY})
    assert result.states == previous and result.notices == []
    # once warm, the same alerts move on: the period ended, the condition cleared
    warm = evaluate([rule], usage, previous, T0, UTCZ)
    assert {n.transition.reason for n in warm.notices} == {"period ended", "condition cleared"}


@settings(max_examples=examples(80), deadline=None)
@given(
    statuses=st.lists(st.sampled_from(["firing", "pending", "resolved"]), max_size=6),
    spend=st.integers(0, 30),
    warm=st.booleans(),
)
def test_warming_freezes_every_state_of_the_rule_whatever_the_usage(
    statuses: list[str], spend: int, warm: bool
) -> None:
    rules = [budget(name="b", window="24h", limit_usd=10, each="api_key", thresholds=[50, 100])]
    previous = {}
    for i, status in enumerate(statuses):
        key = AlertKey("b", f"k{i % 3}", "50" if i < 3 else "100", "rolling-24h")
        previous[key.id] = AlertState(key, status, T0 - H, T0 - H)  # type: ignore[arg-type]
    usage = index(
        *(hourly(T0 - 2 * H, T0, lambda _: Decimal(spend) / 2, key=f"k{i}") for i in range(4))
    )
    result = evaluate(rules, usage, previous, T0, UTCZ, warming={} if warm else {"b": WHY})
    if not warm:
        assert result.states == previous and result.notices == []
    elif spend >= 5:
        assert all(s.status == "firing" for s in result.states.values() if s.key.condition == "50")


def test_warming_rules_send_no_repeats() -> None:
    rule = budget(name="b", window="month", limit_usd=10, thresholds=[100])
    state = AlertState(
        AlertKey("b", "*", "100", "2026-11"), "firing", T0 - 9 * H, T0 - H, T0 - 9 * H
    )
    usage = index(hourly(T0 - 3 * H, T0, lambda _: "5"))
    args = ({"b": rule}, lambda _r: "console", {state.key.id: T0 - 9 * H}, T0, UTCZ)
    kw = {"repeat_interval": timedelta(hours=4), "send_resolved": True, "labels": {}}
    warm = evaluate([rule], usage, {state.key.id: state}, T0, UTCZ)
    assert [i.kind for i in plan(warm, *args, **kw)[0]] == ["repeat"]  # type: ignore[arg-type]
    held = evaluate([rule], usage, {state.key.id: state}, T0, UTCZ, warming={"b": WHY})
    assert plan(held, *args, **kw) == ([], {})  # type: ignore[arg-type]


def test_reports_show_warming_rules_without_numbers() -> None:
    rules = [
        budget(name="monthly", window="month", limit_usd=5),
        anomaly(name="spike", window="1h", baseline="14d"),
        budget(name="ready", window="day", limit_usd=1000),
    ]
    state = AlertState(AlertKey("monthly", "*", "100", "2026-11"), "firing", T0 - H, T0 - H, T0 - H)
    warming = {"monthly": "window not fully fetched yet", "spike": "hourly baseline 14 % fetched"}
    result = evaluate(rules, index(spike_usage()), {state.key.id: state}, T0, UTCZ, warming=warming)
    text = render_evaluations(result, UTCZ)
    lines = {line.split()[0]: line for line in text.splitlines() if line and line[0].isalpha()}
    monthly, spike = lines["monthly"], lines["spike"]
    assert "warming up (window not fully fetched yet)" in monthly
    assert "1 FIRING (held while warming up)" in monthly
    assert "$" + "5.00" in monthly and "$4" not in monthly  # the limit, not the spend
    assert "warming up (hourly baseline 14 % fetched)" in spike
    assert "$100.00" not in spike and "∞" not in spike and "+" in spike  # fires at +4, no score
    assert "$1,000.00" in lines["ready"]  # other rules as usual
    active = render_active(result.states, UTCZ, warming=result.warming)
    assert "held: rule warming up" in active


def test_a_warming_rule_without_members_is_still_listed() -> None:
    rules = [anomaly(name="quiet", window="1h", baseline="14d", scope={"model": "none-*"})]
    result = evaluate(rules, index(spike_usage()), {}, T0, UTCZ, warming={"quiet": WHY})
    assert render_evaluations(result, UTCZ) == f"quiet: warming up ({WHY})"
