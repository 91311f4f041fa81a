"""The page's pure parts: risk order of the budget bars, bar geometry, anomaly bands, charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.types import Member
from daemon.rules.windows import Period
from daemon.web.charts import cumulative_chart, hourly_chart
from daemon.web.view import Bar, band

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def make_bar(
    spend: Decimal,
    forecast: Decimal | None = None,
    crossing: datetime | None = None,
    warming: str | None = None,
    scope: str = "k",
) -> Bar:
    return Bar(
        rule="r",
        scope=scope,
        label=scope,
        window="month",
        unit="usd",
        spend=spend,
        limit=Decimal(100),
        thresholds=(Decimal(80), Decimal(100)),
        forecast=forecast,
        crossing=crossing,
        period_end=END,
        now=NOW,
        warming=warming,
    )


amounts = st.decimals(min_value=0, max_value=500, places=2)
bars = st.builds(
    make_bar,
    spend=amounts,
    forecast=st.none() | amounts,
    crossing=st.none()
    | st.datetimes(
        min_value=NOW.replace(tzinfo=None),
        max_value=END.replace(tzinfo=None),
        timezones=st.just(UTC),
    ),
    warming=st.none() | st.just("history"),
    scope=st.text("abcdef", min_size=1, max_size=4),
)


@given(st.lists(bars, max_size=30))
def test_what_crosses_next_comes_first(shown: list[Bar]) -> None:
    ordered = sorted(shown, key=lambda b: b.risk)
    groups = [b.risk[0] for b in ordered]
    assert groups == sorted(groups)
    over = [b for b in ordered if b.risk[0] == 0]
    assert all(b.utilization >= 1 and b.warming is None for b in over)
    assert [b.utilization for b in over] == sorted((b.utilization for b in over), reverse=True)
    crossing = [b.crossing for b in ordered if b.risk[0] == 1]
    assert crossing == sorted(crossing)  # type: ignore[type-var]
    assert all(b.warming for b in ordered if b.risk[0] == 3)


@given(bars)
def test_marks_stay_on_the_bar(shown: Bar) -> None:
    for ratio in (shown.utilization, Decimal(1), shown.forecast_ratio or Decimal(0)):
        assert 0 <= shown.position(ratio) <= 100
    assert shown.position(1) == round(100 / shown.axis, 2)
    assert shown.days_left == (END - NOW).total_seconds() / 86400


def test_a_band_is_the_median_plus_minus_the_sensitivity_and_never_below_zero() -> None:
    evaluation = AnomalyEvaluation(
        rule="spike",
        member=Member("gpt-4o", "gpt-4o", "model"),
        metric="cost_usd",
        window=Period("w", NOW - timedelta(hours=1), NOW),
        baseline=Period("b", NOW - timedelta(days=7), NOW),
        seasonality="none",
        points=100,
        observed=Decimal(30),
        expected=Decimal(10),
        score=5.0,  # one spread unit is (30 - 10) / 5 = 4
        conditions=(),
        sensitivity=4.0,
    )
    shown = band(evaluation)
    assert (shown.low, shown.high) == (Decimal(0), Decimal(26))  # 10 - 16 is cut at 0
    positions = shown.positions()
    assert positions is not None and positions["observed"] > positions["high"]


def test_the_cumulative_curve_ends_at_the_total_and_escapes_nothing_it_did_not_make() -> None:
    points = [(NOW - timedelta(hours=h), Decimal(5)) for h in range(1, 5)]
    start = NOW - timedelta(hours=6)
    svg = str(
        cumulative_chart(
            points, start, NOW, END, Decimal(100), Decimal(80), "usd", ZoneInfo("Europe/Berlin")
        )
    )
    assert svg.startswith("<svg") and "limit $100.00" in svg and "forecast $80.00" in svg
    hourly = str(hourly_chart(points, start, NOW, "usd", ZoneInfo("UTC")))
    assert hourly.count('class="hour"') == 4
