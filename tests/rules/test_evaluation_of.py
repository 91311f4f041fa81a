"""`EngineResult.evaluation_of`: the evaluation that holds an alert's condition, looked up on
demand (budget members are made when asked for), against the evaluations of every rule's
members walked one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.rules.engine import evaluate
from daemon.rules.lifecycle import AlertKey
from tests.rules.helpers import H, anomaly, budget, hourly, index

T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


def test_every_condition_finds_its_evaluation_and_no_other_key_does() -> None:
    start = T0.replace(minute=0) - timedelta(days=15)
    spike = T0.replace(minute=0) - H
    usage = index(
        hourly(start, T0, lambda t: "100" if t == spike else "1", key="k1"),
        hourly(start, T0, lambda t: "0.01", key="k2", model="m2"),
    )
    rules = [
        budget(name="keys", each="api_key", window="day", limit_usd=5, thresholds=[50, 100]),
        budget(name="ws", window="month", limit_usd=600, thresholds=[100], forecast=True),
        anomaly(name="spike", each="model", window="1h", baseline="14d"),
    ]
    result = evaluate(rules, usage, {}, T0, ZoneInfo("UTC"))
    expected = {
        condition.key.id: evaluation
        for evaluation in result.all_evaluations()
        for condition in evaluation.conditions
    }
    assert expected and result.states  # conditions of all three kinds, some of them firing
    assert {key.split("|")[0] for key in expected} == {"keys", "ws", "spike"}
    for key_id, evaluation in expected.items():
        assert result.evaluation_of(AlertKey.parse(key_id)) == evaluation
    for state in result.states.values():
        assert result.evaluation_of(state.key) == expected[state.key.id]
    day = result.per_rule[0][0].period.id  # type: ignore[attr-defined]
    assert result.evaluation_of(AlertKey("keys", "k9", "50", day)) is None  # no such member
    assert result.evaluation_of(AlertKey("keys", "k1", "50", "2026-01-01")) is None  # period
    assert result.evaluation_of(AlertKey("gone", "k1", "50", day)) is None  # no such rule
