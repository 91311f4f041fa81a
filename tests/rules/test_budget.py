"""Budget rules: scopes, members, windows, thresholds, forecasts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.rules.budget import evaluate_budget, project
from daemon.rules.engine import evaluate
from daemon.rules.series import Series
from daemon.rules.usage import KeyPoint
from daemon.rules.windows import calendar_period
from tests.properties import examples
from tests.rules.helpers import H, budget, hourly, index

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)  # 372 hours into November


def holding(evaluation: object) -> set[str]:
    return {c.key.condition for c in evaluation.conditions if c.holds}  # type: ignore[attr-defined]


def test_workspace_monthly_thresholds() -> None:
    usage = index(
        hourly(MONTH_START, NOW, lambda _: "1"), hourly(MONTH_START, NOW, lambda _: "0.5", key="k2")
    )
    (ev,) = evaluate_budget(
        budget(window="month", limit_usd=620, thresholds=[50, 80, 100]), usage, NOW, UTC_ZONE
    )
    assert ev.member.id == "*" and ev.member.label == "workspace"
    assert ev.spend == Decimal(558)  # 372 hours x 1.5
    assert ev.utilization == Decimal("0.9")
    assert ev.period.id == "2026-11"
    assert holding(ev) == {"50", "80"}
    assert [c.severity for c in ev.conditions] == ["warning"] * 3


def test_each_api_key_with_glob_on_name_or_id_and_exclude() -> None:
    names = {"k1": "prod-web", "k2": "prod-legacy", "k3": "staging", "prod-raw-id": "unnamed"}
    usage = index(*(hourly(NOW - 3 * H, NOW, lambda _: "2", key=k) for k in names), names=names)
    rule = budget(
        window="day", limit_usd=5, scope={"api_key": "prod-*"}, each="api_key", exclude=["*legacy*"]
    )
    evs = evaluate_budget(rule, usage, NOW, UTC_ZONE)
    assert [(e.member.id, e.member.label) for e in evs] == [
        ("k1", "prod-web (k1)"),
        ("prod-raw-id", "unnamed (prod-raw-id)"),
    ]
    assert all(holding(e) == {"100"} for e in evs)  # $6 of $5


def test_each_model_with_model_scope_and_top_contributors() -> None:
    usage = index(
        hourly(NOW - 2 * H, NOW, lambda _: "3", key="a", model="gpt-4o"),
        hourly(NOW - 2 * H, NOW, lambda _: "1", key="b", model="gpt-4o"),
        hourly(NOW - 2 * H, NOW, lambda _: "9", key="a", model="claude-3"),
        names={"a": "alpha", "b": "beta"},
    )
    evs = evaluate_budget(
        budget(window="24h", limit_usd=100, scope={"model": "gpt-*"}, each="model"),
        usage,
        NOW,
        UTC_ZONE,
    )
    (ev,) = evs
    assert ev.member.id == "gpt-4o" and ev.spend == Decimal(8)
    assert ev.top_parts == (("alpha (a)", Decimal(6)), ("beta (b)", Decimal(2)))
    assert ev.period.id == "rolling-24h"


def test_request_and_token_limits() -> None:
    usage = index(hourly(NOW - 5 * H, NOW, lambda _: "0", requests=30))
    (by_requests,) = evaluate_budget(budget(window="day", limit_requests=100), usage, NOW, UTC_ZONE)
    assert (by_requests.unit, by_requests.spend, holding(by_requests)) == ("requests", 150, {"100"})
    (by_tokens,) = evaluate_budget(budget(window="day", limit_tokens=20000), usage, NOW, UTC_ZONE)
    assert by_tokens.spend == 15000 and holding(by_tokens) == set()


def test_rolling_window_only_sums_its_buckets() -> None:
    usage = index(hourly(NOW - 48 * H, NOW, lambda _: "1"))
    (ev,) = evaluate_budget(budget(window="24h", limit_usd=1000), usage, NOW, UTC_ZONE)
    assert ev.spend == 24


def test_calendar_day_in_berlin_follows_local_midnight() -> None:
    now = datetime(2026, 10, 25, 23, 30, tzinfo=UTC)  # 00:30 on 26 Oct in Berlin
    usage = index(hourly(datetime(2026, 10, 24, 20, tzinfo=UTC), now, lambda _: "1"))
    (ev,) = evaluate_budget(budget(window="day", limit_usd=1000), usage, now, BERLIN)
    assert ev.period.id == "2026-10-26" and ev.spend == 1
    (yesterday,) = evaluate_budget(
        budget(window="day", limit_usd=1000), usage, now - timedelta(hours=1), BERLIN
    )
    assert yesterday.period.id == "2026-10-25" and yesterday.spend == 25  # the 25-hour day


def test_linear_forecast_and_crossing_date() -> None:
    day_start = datetime(2026, 11, 10, tzinfo=UTC)
    now = day_start + 12 * H
    usage = index(hourly(day_start, now, lambda _: "1"), history_start=day_start)
    (ev,) = evaluate_budget(budget(window="day", limit_usd=20, forecast=True), usage, now, UTC_ZONE)
    assert ev.forecast is not None and ev.forecast.method == "linear"
    assert ev.forecast.projected == 24
    assert ev.forecast.crossing == day_start + 20 * H
    assert holding(ev) == {"forecast"}


def test_linear_forecast_waits_for_a_tenth_of_the_window() -> None:
    usage = index(hourly(MONTH_START, MONTH_START + 2 * H, lambda _: "50"))
    rule = budget(window="month", limit_usd=100, forecast=True)
    (ev,) = evaluate_budget(rule, usage, MONTH_START + 2 * H, UTC_ZONE)
    assert ev.forecast is None and holding(ev) == {"100"}


def test_hour_of_week_forecast_uses_recent_weeks() -> None:
    # office hours only: 09-17 UTC cost 10, otherwise 0; two weeks of history
    def office(t: datetime) -> str:
        return "10" if 9 <= t.hour < 17 else "0"

    start = datetime(2026, 11, 2, tzinfo=UTC)
    now = datetime(2026, 11, 18, 12, tzinfo=UTC)  # Wednesday noon
    usage = index(hourly(start, now, office))
    (ev,) = evaluate_budget(
        budget(window="day", limit_usd=1000, forecast=True), usage, now, UTC_ZONE
    )
    assert ev.forecast is not None and ev.forecast.method == "hour_of_week"
    assert ev.spend == 30 and ev.forecast.projected == 80  # 5 more office hours to come
    (linear,) = evaluate_budget(
        budget(window="day", limit_usd=1000, forecast=True),
        index(hourly(start, now, office), history_start=now - 2 * H),
        now,
        UTC_ZONE,
    )
    assert linear.forecast is not None and linear.forecast.projected == 60


@settings(max_examples=examples(60), deadline=None)
@given(
    values=st.lists(st.decimals(min_value=0, max_value=1000, places=4), min_size=1, max_size=200),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
    history_weeks=st.integers(0, 3),
)
def test_forecast_equals_spend_at_the_end_of_the_window(
    values: list[Decimal], zone: str, history_weeks: int
) -> None:
    tz = ZoneInfo(zone)
    period = calendar_period("week", datetime(2026, 11, 12, tzinfo=UTC), tz)
    points = {int((period.start + i * H).timestamp()): v for i, v in enumerate(values)}
    series = Series(points)
    spend = series.total(period.start, period.end)
    history = period.start - timedelta(weeks=history_weeks)
    forecast = project(series, period, period.end, tz, spend, Decimal(100), history)
    assert forecast is not None and forecast.projected == spend


@settings(max_examples=examples(30), deadline=None)
@given(
    chunks=st.lists(
        st.tuples(st.integers(0, 28 * 24 - 1), st.decimals(min_value=0, max_value=60, places=2)),
        min_size=1,
        max_size=15,
    ),
    threshold=st.sampled_from([50, 80, 100]),
)
def test_a_threshold_fires_once_per_period_however_the_spend_arrives(
    chunks: list[tuple[int, Decimal]], threshold: int
) -> None:
    rule = budget(window="month", limit_usd=200, thresholds=[threshold])
    month = datetime(2026, 2, 1, tzinfo=UTC)
    arrivals = sorted(chunks)
    points: dict[datetime, Decimal] = {}
    states: dict = {}
    fired = 0
    for hour, amount in arrivals:
        at = month + hour * H
        points[at] = points.get(at, Decimal(0)) + amount
        usage = index(
            [KeyPoint(t, "k", "m", v, 1, 1) for t, v in points.items()], history_start=month
        )
        result = evaluate([rule], usage, states, at + timedelta(minutes=30), UTC_ZONE)
        states = result.states
        fired += sum(n.transition.kind == "firing" for n in result.notices)
    total = sum((a for _, a in arrivals), Decimal(0))
    assert fired == (1 if total >= Decimal(200) * threshold / 100 else 0)
    # the next month starts fresh: the old alert resolves, nothing new fires without spend
    march = datetime(2026, 3, 1, 1, tzinfo=UTC)
    usage = index([KeyPoint(t, "k", "m", v, 1, 1) for t, v in points.items()], history_start=month)
    after = evaluate([rule], usage, states, march, UTC_ZONE)
    assert [n.transition.reason for n in after.notices] == (["period ended"] if fired else [])
    assert not after.firing


def test_per_threshold_severity() -> None:
    rule = budget(
        window="day", limit_usd=10, thresholds=[50, 100], severity={50: "info", 100: "critical"}
    )
    usage = index(hourly(NOW - 2 * H, NOW, lambda _: "3"))
    (ev,) = evaluate_budget(rule, usage, NOW, UTC_ZONE)
    assert [(c.key.condition, c.severity, c.holds) for c in ev.conditions] == [
        ("50", "info", True),
        ("100", "critical", False),
    ]


def test_forecast_on_a_rolling_window_is_refused() -> None:
    with pytest.raises(ValueError, match="forecast needs a calendar window"):
        budget(window="24h", limit_usd=1, forecast=True)


def test_members_below_every_threshold_without_state_carry_no_conditions() -> None:
    usage = index(
        hourly(NOW - 3 * H, NOW, lambda _: "1", key="small"),
        hourly(NOW - 3 * H, NOW, lambda _: "9", key="big"),
    )
    rule = budget(window="day", limit_usd=20, thresholds=[80, 100], each="api_key")
    small, big = evaluate_budget(rule, usage, NOW, UTC_ZONE, stateful=set())
    assert small.member.id == "big" or big.member.id == "big"
    by_id = {e.member.id: e for e in (small, big)}
    assert by_id["small"].conditions == () and by_id["small"].spend == 3
    assert [c.holds for c in by_id["big"].conditions] == [True, True]
    # with a stored alert the member is judged in full, so its alert can resolve
    (_, with_state) = evaluate_budget(rule, usage, NOW, UTC_ZONE, stateful={"big", "small"})
    assert len(with_state.conditions) == 2


def test_reports_show_the_top_members_and_every_alerting_one() -> None:
    from daemon.cli.rules_table import render_evaluations, shown_budget_members
    from daemon.rules.lifecycle import AlertKey, AlertState

    usage = index(
        *(hourly(NOW - 2 * H, NOW, lambda _, i=i: str(i), key=f"k{i:02d}") for i in range(30))
    )
    rule = budget(window="day", limit_usd=50, each="api_key")
    table = evaluate_budget(rule, usage, NOW, UTC_ZONE, stateful={"k03"})
    shown = [e.member.id for e in shown_budget_members(table)]
    # the 20 biggest (k29 ... k10) and k03, whose stored alert must be seen resolving
    assert shown == [f"k{i:02d}" for i in range(29, 9, -1)] + ["k03"]
    period = table.period.id
    stored = AlertState(AlertKey("r", "k03", "80", period), "firing", NOW - H, NOW - H, NOW - H)
    result = evaluate([rule], usage, {stored.key.id: stored}, NOW, UTC_ZONE)
    text = render_evaluations(result, UTC_ZONE)
    assert "... 9 more members below these" in text and "k03" in text and "k05" not in text


@pytest.mark.parametrize(("window", "hours"), [("month", 31 * 24), ("week", 7 * 24)])
def test_profile_forecast_never_counts_hours_still_to_come_as_zero(window: str, hours: int) -> None:
    """$1 an hour for 35 days, on the 1st of a month: the month projects to $744 (31 days),
    not less because the hours one week ahead of a bucket three weeks out are in the future."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    usage = index(hourly(now - timedelta(days=35), now, lambda _: 1))
    rule = budget(window=window, limit_usd=10_000, forecast=True)
    (ev,) = evaluate_budget(rule, usage, now, UTC_ZONE)
    assert ev.forecast is not None and ev.forecast.method == "hour_of_week"
    assert ev.forecast.projected == hours
