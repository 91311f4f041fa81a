"""What the status page shows, computed from the last cycle's result (pure: no I/O, and
``now`` is the cycle's instant).

Budget bars come in risk order, what crosses next first: members over their limit (the most
over first), then members whose forecast crosses the limit (the soonest first), then the
rest by how close their spend or forecast is to the limit; rules still warming up come last
and say so. Anomaly members show their observed value against the expected band (the
median ± the rule's sensitivity in spread units).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from daemon.metric_series import LABEL_MAX, bounded, scope_id
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, BudgetTable
from daemon.rules.windows import is_calendar

_DAY = 86_400
SHOWN_CHARS = LABEL_MAX  # as in metric labels
# bidirectional overrides and isolates: "prod-\u202eevil" must not read as "prod-live"
_BIDI = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)], "\ufffd")


def shown_text(text: object, limit: int = SHOWN_CHARS) -> str:
    """A name from Langdock (or a user) as the page shows it: bidi controls made visible,
    at most ``limit`` characters (the ids are shown beside it whole)."""
    return bounded(str(text).translate(_BIDI), limit)


SCALE_CAP = 2.0  # a bar's axis runs to at most twice the limit


@dataclass(frozen=True)
class Bar:
    """One budget rule's member: spend against the limit, thresholds, forecast."""

    rule: str
    scope: str  # the stable id (`workspace`, a key id, a model): the metrics' label
    label: str  # for people: ``name (id)``, a model, or the rule's scope
    window: str
    unit: str
    spend: Decimal
    limit: Decimal
    thresholds: tuple[Decimal, ...]  # percent
    forecast: Decimal | None
    crossing: datetime | None  # when the forecast reaches the limit
    period_end: datetime | None  # calendar windows only
    now: datetime
    warming: str | None = None  # why the rule's history is incomplete
    firing: bool = False
    silenced: bool = False

    @property
    def utilization(self) -> Decimal:
        return self.spend / self.limit

    @property
    def forecast_ratio(self) -> Decimal | None:
        return None if self.forecast is None else self.forecast / self.limit

    @property
    def axis(self) -> float:
        """The ratio the bar's full width stands for: 1 (the limit), more when spend or the
        forecast is past it, at most `SCALE_CAP`."""
        peak = max(float(self.utilization), float(self.forecast_ratio or 0), 1.0)
        return min(peak, SCALE_CAP)

    def position(self, ratio: Decimal | float) -> float:
        """Where ``ratio`` (of the limit) lies on the bar, in percent of its width."""
        return round(min(float(ratio) / self.axis, 1.0) * 100, 2)

    @property
    def days_left(self) -> float | None:
        if self.period_end is None:
            return None
        return max((self.period_end - self.now).total_seconds(), 0.0) / _DAY

    @property
    def risk(self) -> tuple[int, float]:
        """Sort key: lower is riskier (see the module's docstring)."""
        if self.warming is not None:
            return (3, -float(self.utilization))
        if self.utilization >= 1:
            return (0, -float(self.utilization))
        if self.crossing is not None:
            return (1, self.crossing.timestamp())
        return (2, -max(float(self.utilization), float(self.forecast_ratio or 0)))

    @property
    def level(self) -> str:
        """``over``, ``warn`` (a threshold reached or the forecast crosses), or ``ok``."""
        if self.utilization >= 1:
            return "over"
        lowest = min(self.thresholds) / 100
        if self.utilization >= lowest or (self.forecast_ratio or 0) >= 1:
            return "warn"
        return "ok"


def bar(
    evaluation: BudgetEvaluation,
    thresholds: Iterable[Decimal],
    warming: str | None = None,
    firing: Collection[tuple[str, str]] = (),
    silenced: Collection[tuple[str, str]] = (),
) -> Bar:
    forecast = evaluation.forecast
    key = (evaluation.rule, evaluation.member.id)
    return Bar(
        rule=evaluation.rule,
        scope=scope_id(evaluation.member),
        label=evaluation.member.label,
        window=evaluation.window,
        unit=evaluation.unit,
        spend=evaluation.spend,
        limit=evaluation.limit,
        thresholds=tuple(sorted(thresholds)),
        forecast=None if forecast is None else forecast.projected,
        crossing=None if forecast is None else forecast.crossing,
        period_end=evaluation.period.end if is_calendar(evaluation.window) else None,
        now=evaluation.now,
        warming=warming,
        firing=key in firing,
        silenced=key in silenced,
    )


def budget_bars(
    tables: Iterable[BudgetTable],
    thresholds: Mapping[str, Iterable[Decimal]],
    warming: Mapping[str, str],
    firing: Collection[tuple[str, str]] = (),
    silenced: Collection[tuple[str, str]] = (),
    per_rule: int = 25,
) -> tuple[list[Bar], dict[str, int]]:
    """The ``per_rule`` biggest members of every budget rule as bars in risk order, and per
    rule how many members were left out."""
    bars: list[Bar] = []
    hidden: dict[str, int] = {}
    for table in tables:
        shown = table.top(per_rule)
        hidden[table.rule] = len(table) - len(shown)
        marks = tuple(thresholds.get(table.rule, (Decimal(100),)))
        bars += (bar(e, marks, warming.get(table.rule), firing, silenced) for e in shown)
    bars.sort(key=lambda b: (b.risk, b.rule, b.scope))
    return bars, hidden


@dataclass(frozen=True)
class Band:
    """An anomaly member: the observed value against the expected band."""

    rule: str
    scope: str
    label: str
    metric: str
    observed: Decimal | None
    expected: Decimal | None
    low: Decimal | None
    high: Decimal | None
    score: float | None
    sensitivity: float
    note: str
    firing: bool = False

    def positions(self) -> dict[str, float] | None:
        """Percent positions of low, expected, high and observed on a shared axis."""
        values = [v for v in (self.low, self.expected, self.high, self.observed) if v is not None]
        if self.observed is None or self.expected is None or not values:
            return None
        lo, hi = float(min(values)), float(max(values))
        pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad

        def at(value: Decimal | None, default: float) -> float:
            if value is None:
                return default
            return round((float(value) - lo) / (hi - lo) * 100, 2)

        return {
            "low": at(self.low, 0.0),
            "expected": at(self.expected, 50.0),
            "high": at(self.high, 100.0),
            "observed": at(self.observed, 50.0),
        }


def band(evaluation: AnomalyEvaluation, firing: Collection[tuple[str, str]] = ()) -> Band:
    """The band is the median ± sensitivity x the score's unit, (observed - expected) / score;
    with no spread (an infinite or zero score) it is the median alone."""
    low = high = None
    observed, expected, score = evaluation.observed, evaluation.expected, evaluation.score
    if observed is not None and expected is not None and score and math.isfinite(score):
        unit = abs((observed - expected) / Decimal(score))
        width = unit * Decimal(str(evaluation.sensitivity))
        # every metric is a sum, a ratio or a time: none goes below zero
        low, high = max(expected - width, Decimal(0)), expected + width
    return Band(
        rule=evaluation.rule,
        scope=scope_id(evaluation.member),
        label=evaluation.member.label,
        metric=evaluation.metric,
        observed=observed,
        expected=expected,
        low=low,
        high=high,
        score=score,
        sensitivity=evaluation.sensitivity,
        note=evaluation.note,
        firing=(evaluation.rule, evaluation.member.id) in firing,
    )


def anomaly_bands(
    evaluations: Iterable[AnomalyEvaluation],
    firing: Collection[tuple[str, str]] = (),
    limit: int = 25,
) -> list[Band]:
    """The members with the largest |score| first (unjudged ones last), ``limit`` per rule."""
    per_rule: dict[str, list[AnomalyEvaluation]] = {}
    for evaluation in evaluations:
        per_rule.setdefault(evaluation.rule, []).append(evaluation)
    bands: list[Band] = []
    for rule_evaluations in per_rule.values():
        rule_evaluations.sort(key=lambda e: (e.score is None, -abs(e.score or 0.0), e.member.label))
        bands += (band(e, firing) for e in rule_evaluations[:limit])
    return bands
