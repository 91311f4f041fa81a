"""Anomaly rules: robust scores, seasonality, guards, directions, per-model metrics."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules.anomaly import evaluate_anomaly, robust_score
from daemon.rules.usage import ModelPoint, UsageIndex
from tests.properties import examples
from tests.rules.helpers import H, anomaly, hourly, index

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 11, 20, 10, 20, tzinfo=UTC)
LAST_HOUR = NOW.replace(minute=0) - H
START = NOW.replace(minute=0) - timedelta(days=15)  # buckets start on the hour


def noisy(spike_at: datetime | None = None, factor: int = 10, base: int = 100):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    values = {}

    def cost(t: datetime) -> Decimal:
        if t not in values:
            daily = 1 + 0.5 * math.sin(2 * math.pi * t.hour / 24)
            values[t] = Decimal(str(round(base * daily * rng.uniform(0.9, 1.1), 2)))
        return values[t] * (factor if t == spike_at else 1)

    return cost


def test_a_spike_fires_up_with_observed_expected_and_baseline() -> None:
    usage = index(hourly(START, NOW, noisy(spike_at=LAST_HOUR)))
    (ev,) = evaluate_anomaly(
        anomaly(window="1h", baseline="14d", min_delta_usd=5), usage, NOW, UTC_ZONE
    )
    assert ev.window.start == LAST_HOUR and ev.window.end == LAST_HOUR + H
    assert ev.seasonality == "hour_of_week" and ev.points == 336
    assert ev.observed is not None and ev.expected is not None
    assert ev.observed > 5 * ev.expected and ev.score is not None and ev.score > 10
    assert [(c.key.condition, c.holds) for c in ev.conditions] == [("up", True)]
    assert ev.contributors == (("k1 (k1)", ev.observed),)


def test_normal_traffic_does_not_fire() -> None:
    usage = index(hourly(START, NOW, noisy()))
    (ev,) = evaluate_anomaly(anomaly(window="1h", baseline="14d"), usage, NOW, UTC_ZONE)
    assert ev.score is not None and abs(ev.score) < 4
    assert not any(c.holds for c in ev.conditions)


def test_min_delta_keeps_tiny_keys_quiet() -> None:
    usage = index(hourly(START, NOW, lambda t: "0.05" if t == LAST_HOUR else "0.01"))
    (ev,) = evaluate_anomaly(
        anomaly(window="1h", baseline="14d", min_delta_usd=5), usage, NOW, UTC_ZONE
    )
    assert ev.score == float("inf") and not any(c.holds for c in ev.conditions)


def test_cold_start_never_alerts() -> None:
    usage = index(hourly(NOW - 5 * H, NOW, lambda t: "100" if t == LAST_HOUR else "1"))
    (ev,) = evaluate_anomaly(anomaly(window="1h", baseline="14d"), usage, NOW, UTC_ZONE)
    assert ev.note == "cold start: 3 of 24 baseline points"
    assert ev.score is None and not any(c.holds for c in ev.conditions)


def test_traffic_stop_fires_down() -> None:
    usage = index(hourly(START, NOW, lambda t: "0" if t == LAST_HOUR else "50", requests=100))
    rule = anomaly(
        window="1h", baseline="7d", metric="cost_usd", direction="both", min_delta_usd=10
    )
    (ev,) = evaluate_anomaly(rule, usage, NOW, UTC_ZONE)
    assert ev.seasonality == "hour_of_day"  # baseline of 7 days: not enough for hour_of_week
    assert [(c.key.condition, c.holds) for c in ev.conditions] == [("up", False), ("down", True)]


def test_requests_and_tokens_metrics() -> None:
    points = hourly(START, NOW, lambda _: "1", requests=10)
    points[-1] = type(points[-1])(points[-1].bucket_start, "k1", "gpt-4o", Decimal(1), 500, 50000)
    usage = index(points)
    for metric in ("requests", "tokens"):
        rule = anomaly(window="1h", baseline="14d", metric=metric, min_delta=100)
        (ev,) = evaluate_anomaly(rule, usage, NOW + H, UTC_ZONE)  # the spike hour is now complete
        assert ev.conditions[0].holds, metric


def test_error_rate_per_model_from_the_models_export() -> None:
    points = []
    t = START
    while t < NOW:
        errors = Decimal(30) if t == LAST_HOUR else Decimal(1)
        points.append(ModelPoint(t, "gpt-4o", 100, errors, Decimal(900)))
        points.append(ModelPoint(t, "mistral", 100, Decimal(1), Decimal(500)))
        t += H
    usage = UsageIndex([], points, history_start=START)
    rule = anomaly(window="1h", baseline="14d", metric="error_rate", each="model", min_delta=0.05)
    evs = evaluate_anomaly(rule, usage, NOW, UTC_ZONE)
    assert [(e.member.id, e.observed, e.conditions[0].holds) for e in evs] == [
        ("gpt-4o", Decimal("0.3"), True),
        ("mistral", Decimal("0.01"), False),
    ]
    latency = anomaly(window="1h", baseline="14d", metric="response_time_ms", each="model")
    assert [e.observed for e in evaluate_anomaly(latency, usage, NOW, UTC_ZONE)] == [900, 500]


samples = st.lists(
    st.tuples(st.integers(0, 3), st.decimals(min_value=0, max_value=10**6, places=3)),
    min_size=2,
    max_size=60,
)


@settings(max_examples=examples(100), deadline=None)
@given(
    samples,
    st.decimals(min_value=0, max_value=10**6, places=3),
    st.decimals(min_value=Decimal("0.001"), max_value=10**4, places=3),
    st.integers(0, 3),
)
def test_scores_are_invariant_to_scaling_the_series(
    baseline: list[tuple[int, Decimal]], observed: Decimal, factor: Decimal, slot: int
) -> None:
    _, _, score = robust_score(observed, baseline, slot)
    _, _, scaled = robust_score(observed * factor, [(s, v * factor) for s, v in baseline], slot)
    if math.isinf(score):
        assert scaled == score
    else:
        assert math.isclose(score, scaled, rel_tol=1e-9, abs_tol=1e-9)


def test_robust_score_ignores_outliers_in_the_baseline() -> None:
    baseline = [(0, Decimal(10))] * 20 + [(0, Decimal(11))] * 20 + [(0, Decimal(10_000))]
    expected, spread, score = robust_score(Decimal(12), baseline, 0)
    assert expected == 11
    assert spread == Decimal("1.4826") * (Decimal(41) / 40).sqrt()  # the outlier changes nothing
    assert 0 < score < 1


def test_nothing_against_nothing_has_no_score() -> None:
    usage = index(hourly(START, NOW, lambda t: "0"))
    (ev,) = evaluate_anomaly(
        anomaly(window="1h", baseline="14d", direction="both"), usage, NOW, UTC_ZONE
    )
    assert ev.observed == 0 and ev.expected == 0 and ev.score is None and ev.note == ""
    assert not any(c.holds for c in ev.conditions)


def test_the_anomaly_table_shows_no_score_for_zero_against_zero_and_the_sensitivity() -> None:
    from daemon.cli.rules_table import render_evaluations
    from daemon.rules.engine import evaluate

    # sub-cent amounts: both show as $0.00, so a score of +2.5 would only confuse
    tiny = hourly(START, NOW, noisy(base=1), key="tiny")
    tiny = [
        p.__class__(p.bucket_start, p.api_key_id, p.model, p.cost_usd / 1000, 1, 1) for p in tiny
    ]
    usage = index(tiny, hourly(START, NOW, noisy(spike_at=LAST_HOUR), key="big"))
    rules = [
        anomaly(name="up", window="1h", baseline="14d", each="api_key", sensitivity=4.5),
        anomaly(name="both", window="1h", baseline="14d", each="api_key", direction="both"),
    ]
    text = render_evaluations(evaluate(rules, usage, {}, NOW, UTC_ZONE), UTC_ZONE)
    cells = {(row["Anomaly rule"], row["member"]): row for row in table(text)}
    small = cells[("up", "tiny (tiny)")]
    assert (small["observed"], small["expected"], small["score"]) == ("$0.00", "$0.00", "-")
    assert small["fires at"] == "+4.5"
    big = cells[("up", "big (big)")]
    assert float(big["score"]) > 10 and big["fires at"] == "+4.5"
    assert cells[("both", "big (big)")]["fires at"] == "±4"


def table(text: str) -> list[dict[str, str]]:
    """The rows of a rendered grid as {header: cell}, cut at the columns of the dashes line."""
    lines = text.splitlines()
    spans, start = [], 0
    for dashes in lines[1].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    headers = [lines[0][a:b].strip() for a, b in spans]
    return [
        {h: line[a:b].strip() for h, (a, b) in zip(headers, spans, strict=True)}
        for line in lines[2:]
    ]


def test_an_anomaly_message_without_a_score_still_renders() -> None:
    from daemon.notify.slack.blocks import anomaly_message
    from daemon.rules.lifecycle import AlertState

    usage = index(hourly(START, NOW, lambda t: "0"))
    (ev,) = evaluate_anomaly(anomaly(window="1h", baseline="14d"), usage, NOW, UTC_ZONE)
    state = AlertState(ev.conditions[0].key, "firing", NOW, NOW, NOW)
    message = anomaly_message(ev, state, UTC_ZONE, repeat=True)  # kept firing, now no score
    assert "(score -)" in message.text


def test_scores_for_people() -> None:
    from daemon.formatting import format_score, format_sensitivity

    assert [format_score(s) for s in (None, 2.46, -0.01, float("inf"), float("-inf"))] == [
        "-",
        "+2.5",
        "+0.0",
        "∞",
        "-∞",
    ]
    assert [format_sensitivity(4.5, d) for d in ("up", "down", "both")] == ["+4.5", "-4.5", "±4.5"]
