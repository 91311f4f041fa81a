"""Anomaly rules: the last complete window of a series against its own robust baseline.

The baseline is the preceding ``baseline`` period cut into windows of the same length. The
expected value is the median of the baseline windows in the same seasonal slot (same local
hour of the week, or of the day, or all of them); the spread is the median absolute deviation
of every baseline window from the median of its own slot, scaled by 1.4826 so it estimates a
standard deviation. The score is (observed - expected) / spread: scaling the whole series by
any positive factor leaves it unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from daemon.rules.lifecycle import AlertKey
from daemon.rules.members import MemberUsage
from daemon.rules.schema import AnomalyRule
from daemon.rules.types import Condition, Member
from daemon.rules.usage import UsageIndex
from daemon.rules.windows import Period, bucket_start

Seasonality = Literal["hour_of_week", "hour_of_day", "none"]
MAD_SCALE = Decimal("1.4826")
_TWO_WEEKS = timedelta(days=14)
_TWO_DAYS = timedelta(days=2)


@dataclass(frozen=True)
class AnomalyEvaluation:
    rule: str
    member: Member
    metric: str
    window: Period
    baseline: Period
    seasonality: Seasonality
    points: int
    observed: Decimal | None
    expected: Decimal | None
    score: float | None
    conditions: tuple[Condition, ...]
    note: str = ""  # why the rule could not judge (cold start, no data)
    usage: MemberUsage | None = field(default=None, compare=False, repr=False)
    sensitivity: float = 4.0  # the rule's: |score| it fires at
    direction: Literal["up", "down", "both"] = "up"

    @property
    def contributors(self) -> tuple[tuple[str, Decimal], ...]:
        """Top contributors in the window, computed on demand (only messages need them)."""
        if self.usage is None:
            return ()
        return self.usage.top_parts(self.window.start, self.window.end)


def median(values: Sequence[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def robust_score(
    observed: Decimal, samples: Sequence[tuple[Hashable, Decimal]], slot: Hashable
) -> tuple[Decimal, Decimal, float]:
    """(expected, spread, score) of ``observed`` against slotted baseline ``samples``.

    ``expected`` is the median of the samples in ``slot`` (of all samples when the slot has
    none). ``spread`` is the scaled MAD of the samples around their own slot medians; a
    deviation from the median of n samples understates the spread by about sqrt((n-1)/n), so
    each is scaled back (slots of one sample say nothing about spread and are skipped). The
    score divides by the spread of a *new* value against an n-sample estimate,
    spread * sqrt(1 + 1/n), so two weeks of hour-of-week history (n = 2) is not overconfident.
    """
    by_slot: dict[Hashable, list[Decimal]] = defaultdict(list)
    for sample_slot, value in samples:
        by_slot[sample_slot].append(value)
    deviations = []
    for values in by_slot.values():
        if len(values) > 1:
            centre = median(values)
            correction = (Decimal(len(values)) / (len(values) - 1)).sqrt()
            deviations += [abs(v - centre) * correction for v in values]
    reference = by_slot.get(slot) or [v for _, v in samples]
    expected = median(reference)
    spread = median(deviations) * MAD_SCALE if deviations else Decimal(0)
    delta = observed - expected
    scale = spread * (1 + Decimal(1) / len(reference)).sqrt()
    if scale == 0:
        score = 0.0 if delta == 0 else (float("inf") if delta > 0 else float("-inf"))
    else:
        score = float(delta / scale)
    return expected, spread, score


def _slot(start: datetime, tz: ZoneInfo, seasonality: Seasonality) -> Hashable:
    local = start.astimezone(tz)
    if seasonality == "hour_of_week":
        return (local.weekday(), local.hour, local.minute)
    if seasonality == "hour_of_day":
        return (local.hour, local.minute)
    return None


def resolve_seasonality(
    rule: AnomalyRule, end: datetime, history_start: datetime | None
) -> Seasonality:
    if rule.seasonality != "auto":
        return rule.seasonality
    span = end - history_start if history_start is not None else timedelta(0)
    if span >= _TWO_WEEKS and rule.baseline >= _TWO_WEEKS:
        return "hour_of_week"
    if span >= _TWO_DAYS and rule.baseline >= _TWO_DAYS:
        return "hour_of_day"
    return "none"


def evaluate_anomaly(
    rule: AnomalyRule, usage: UsageIndex, now: datetime, tz: ZoneInfo
) -> list[AnomalyEvaluation]:
    """One evaluation per member: the last complete window against the baseline."""
    end = bucket_start(now, tz)
    window = Period(f"{(end - rule.window).isoformat()}", end - rule.window, end)
    baseline = Period("baseline", window.start - rule.baseline, window.start)
    seasonality = resolve_seasonality(rule, end, usage.history_start)
    min_delta = rule.min_delta_usd if rule.metric == "cost_usd" else Decimal(str(rule.min_delta))
    results = []
    for member_usage in usage.members(rule, rule.metric):
        results.append(
            _evaluate_member(
                rule,
                member_usage,
                window,
                baseline,
                seasonality,
                min_delta,
                usage.history_start,
                tz,
            )
        )
    return results


def _evaluate_member(
    rule: AnomalyRule,
    member_usage: MemberUsage,
    window: Period,
    baseline: Period,
    seasonality: Seasonality,
    min_delta: Decimal,
    history_start: datetime | None,
    tz: ZoneInfo,
) -> AnomalyEvaluation:
    samples: list[tuple[Hashable, Decimal]] = []
    count = int(rule.baseline / rule.window)
    for k in range(1, count + 1):
        start = window.start - k * rule.window
        if history_start is not None and start < history_start:
            break
        value = member_usage.total(start, start + rule.window)
        if value is not None:
            samples.append((_slot(start, tz, seasonality), value))
    observed = member_usage.total(window.start, window.end)

    def result(
        expected: Decimal | None, score: float | None, holds: dict[str, bool], note: str = ""
    ) -> AnomalyEvaluation:
        directions = ("up", "down") if rule.direction == "both" else (rule.direction,)
        conditions = tuple(
            Condition(
                AlertKey(rule.name, member_usage.member.id, d, ""),
                holds.get(d, False),
                rule.severity,
            )
            for d in directions
        )
        return AnomalyEvaluation(
            rule.name,
            member_usage.member,
            rule.metric,
            window,
            baseline,
            seasonality,
            len(samples),
            observed,
            expected,
            score,
            conditions,
            note,
            member_usage,
            rule.sensitivity,
            rule.direction,
        )

    if observed is None:
        return result(None, None, {}, "no requests in the window")
    if len(samples) < rule.min_baseline_points:
        return result(
            None,
            None,
            {},
            f"cold start: {len(samples)} of {rule.min_baseline_points} baseline points",
        )
    expected, _spread, score = robust_score(observed, samples, _slot(window.start, tz, seasonality))
    if observed == 0 and expected == 0:
        return result(expected, None, {})  # nothing against nothing: no score to show
    delta = observed - expected
    holds = {
        "up": score >= rule.sensitivity and delta >= min_delta and delta > 0,
        "down": score <= -rule.sensitivity and -delta >= min_delta and delta < 0,
    }
    return result(expected, score, holds)
