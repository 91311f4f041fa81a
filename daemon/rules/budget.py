"""Budget rules: spend (or requests, tokens) over a window against a limit, with a forecast."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from math import ceil
from typing import Literal, overload
from zoneinfo import ZoneInfo

from daemon.rules.budget_conditions import (
    NOTHING,
    BudgetConditions,
    budget_conditions,
    decode,
    outcome,
)
from daemon.rules.members import MemberUsage
from daemon.rules.schema import BudgetRule
from daemon.rules.series import NANOS, Raw, Series, ts
from daemon.rules.types import Condition, Member, Metric
from daemon.rules.usage import UsageIndex
from daemon.rules.windows import Period, bucket_start, buckets, is_calendar, window_period

Unit = Literal["usd", "requests", "tokens"]
WEEK = timedelta(days=7)
PROFILE_WEEKS = 4
LINEAR_MIN_ELAPSED = Decimal("0.1")  # a run-rate from the first minutes of a month is noise


@dataclass(frozen=True)
class Forecast:
    projected: Decimal
    method: Literal["hour_of_week", "linear"]
    crossing: datetime | None  # when the projection reaches the limit (None: not in this period)


@dataclass(frozen=True, slots=True)  # slots: 30,000-350,000 a cycle, 48 bytes each saved
class BudgetEvaluation:
    rule: str
    member: Member
    window: str
    period: Period
    now: datetime
    unit: Unit
    spend: Decimal
    limit: Decimal
    forecast: Forecast | None
    conditions: tuple[Condition, ...]
    usage: MemberUsage | None = field(default=None, compare=False, repr=False)

    @property
    def utilization(self) -> Decimal:
        return self.spend / self.limit

    @property
    def top_parts(self) -> tuple[tuple[str, Decimal], ...]:
        """Top contributors, computed on demand (only messages need them)."""
        if self.usage is None:
            return ()
        return self.usage.top_parts(self.period.start, min(self.now, self.period.end))


def rule_unit(rule: BudgetRule) -> tuple[Unit, Decimal]:
    if rule.limit_usd is not None:
        return "usd", rule.limit_usd
    if rule.limit_requests is not None:
        return "requests", Decimal(rule.limit_requests)
    assert rule.limit_tokens is not None
    return "tokens", Decimal(rule.limit_tokens)


_METRIC: dict[Unit, Metric] = {"usd": "cost_usd", "requests": "requests", "tokens": "tokens"}


def budget_metric(rule: BudgetRule) -> Metric:
    return _METRIC[rule_unit(rule)[0]]


@dataclass
class BudgetTable(Sequence[BudgetEvaluation]):
    """Every member of one budget rule, column-wise.

    A rule over 10,000 keys has 10,000 spends here, but only the members that can move an
    alert (at or above the lowest threshold, or with stored alert state) and the members of
    forecast rules have an `outcome` worked out (`daemon.rules.budget_conditions`); a
    member's `BudgetEvaluation`, its conditions with it, is made when a message, a report or
    the metrics ask for it (the engine steps alerts from the outcomes, and a steady cycle
    asks for almost none). As a sequence it holds every member's evaluation, by id.
    """

    rule: str
    window: str
    period: Period
    now: datetime
    unit: Unit
    limit: Decimal
    members: list[MemberUsage]
    raw_spends: list[Raw]  # in the members' series units (nano-dollars for usd)
    scale: int
    worked: array[int]  # the indexes of the members with an outcome, ascending
    outcomes: array[int]  # their outcomes, in the same order (`NOTHING`: no conditions)
    thresholds: BudgetConditions  # the rule's thresholds in this period
    forecasts: dict[int, Forecast | None]  # member index → its forecast (forecast rules)
    ranking: Callable[[], list[int]]  # member indexes, the biggest spend first
    indexes_of: Callable[[Iterable[str]], set[int]]  # member ids → their indexes
    _made: dict[int, BudgetEvaluation] = field(default_factory=dict, repr=False)

    @property
    def evaluated(self) -> dict[int, BudgetEvaluation]:
        """The evaluations of the members with an outcome worked out (made now)."""
        return {i: self[i] for i in self.worked}

    def conditions_of(self, index: int) -> tuple[Condition, ...]:
        """The conditions of member ``index`` (made now; none without an outcome)."""
        at = bisect_left(self.worked, index)
        if at == len(self.worked) or self.worked[at] != index:
            return ()
        code = self.outcomes[at]
        if code == NOTHING:
            return ()
        return self.thresholds.of_reached(self.members[index].member.id, *decode(code))

    def __len__(self) -> int:
        return len(self.members)

    @overload
    def __getitem__(self, index: int) -> BudgetEvaluation: ...

    @overload
    def __getitem__(self, index: slice) -> list[BudgetEvaluation]: ...

    def __getitem__(self, index: int | slice) -> BudgetEvaluation | list[BudgetEvaluation]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        made = self._made.get(index)
        if made is None:
            usage = self.members[index]
            made = self._made[index] = BudgetEvaluation(
                self.rule,
                usage.member,
                self.window,
                self.period,
                self.now,
                self.unit,
                Decimal(self.raw_spends[index]).scaleb(-self.scale),
                self.limit,
                self.forecasts.get(index),
                self.conditions_of(index),
                usage,
            )
        return made

    def top(self, n: int) -> list[BudgetEvaluation]:
        """The ``n`` members closest to (or over) the limit, the most used first."""
        return [self[i] for i in self.ranking()[:n]]


def evaluate_budget(
    rule: BudgetRule,
    usage: UsageIndex,
    now: datetime,
    tz: ZoneInfo,
    stateful: Collection[str] | None = None,
) -> BudgetTable:
    """Every member of ``rule`` at ``now``.

    ``stateful`` names the members with stored alert state (None: all of them). A member
    below its lowest threshold, with no forecast and no stored state gets no conditions:
    there is nothing to step, and with 10,000 keys most members are exactly that. Which
    thresholds a member reached is found on its raw total (integer nano-dollars), against
    the levels in the same units: no `Decimal` is made per member.
    """
    unit, limit = rule_unit(rule)
    metric = budget_metric(rule)
    scale = NANOS if unit == "usd" else 0
    period = window_period(rule.window, now, tz)
    start_ts, end_ts = ts(period.start), ts(min(now, period.end))
    forecasting = rule.forecast and is_calendar(rule.window)
    window = usage.window(rule, metric, start_ts, end_ts, series=forecasting)
    members, raw_spends = window.members, window.raws
    # per rule, not per member: the threshold's name, the spend it takes, its severity
    levels = [(_pct(t), limit * t / 100, rule.severity_for(t)) for t in rule.thresholds]
    forecast_severity = (
        rule.severity_for(max(rule.thresholds))
        if isinstance(rule.severity, dict)
        else rule.severity
    )
    kept = budget_conditions(rule.name, period.id, levels, forecast_severity)
    exact = [level.scaleb(scale) for level in kept.sorted_levels]  # in raw units
    whole = [ceil(level) for level in exact]  # an integer total reaches a level at its ceiling
    candidates: Iterable[int]
    if forecasting or stateful is None:
        candidates = range(len(members))
    else:
        hot = set(window.at_least(exact[0]))  # the lowest level
        if stateful:
            hot |= window.indexes_of(stateful)
        candidates = sorted(hot)
    # 8 bytes a member worked out (a dict of 330,000 members had cost 20 MB at 10,000 keys)
    worked, outcomes = array("i"), array("I")
    forecasts: dict[int, Forecast | None] = {}
    for i in candidates:
        raw = raw_spends[i]
        reached = bisect_right(whole, raw) if type(raw) is int else bisect_right(exact, raw)
        holds: bool | None = None  # the forecast condition's outcome (None: none)
        over = False  # the forecast reaches the limit
        if forecasting:
            spend = Decimal(raw).scaleb(-scale)
            forecast = forecasts[i] = project(
                members[i].value,
                period,
                now,
                tz,
                spend,
                limit,
                usage.history_start,
                usage.forecasts,
            )
            if forecast is not None:
                over = forecast.projected >= limit
                holds = over and spend < limit
        if (
            reached == 0
            and not over
            and stateful is not None
            and members[i].member.id not in stateful
        ):
            code = NOTHING
        else:
            code = outcome(reached, holds)
        worked.append(i)
        outcomes.append(code)
    return BudgetTable(
        rule.name,
        rule.window,
        period,
        now,
        unit,
        limit,
        members,
        raw_spends,
        scale,
        worked,
        outcomes,
        kept,
        forecasts,
        window.ranking,
        window.indexes_of,
    )


def _pct(threshold: Decimal) -> str:
    return format(threshold.normalize(), "f")  # 50 → "50", 80.5 → "80.5"


def project(
    series: Series,
    period: Period,
    now: datetime,
    tz: ZoneInfo,
    spend: Decimal,
    limit: Decimal,
    history_start: datetime | None,
    memo: ExpectedMemo | None = None,
) -> Forecast | None:
    """Projected total of ``period`` from the spend so far (``memo``: the buckets' expected
    values kept for the other rules that forecast the same series and period).

    With a week or more of history, each remaining bucket is expected to repeat the mean of
    the same hour of the week over the last (up to four) weeks; otherwise the run-rate so far
    is extended linearly (once a tenth of the period has passed). At the end of the period
    the projection is the spend.
    """
    if now >= period.end:
        return Forecast(spend, "linear", None)
    if history_start is not None and history_start <= now - WEEK:
        return _profile_forecast(series, period, now, tz, spend, limit, history_start, memo)
    elapsed = Decimal((now - period.start).total_seconds())
    length = Decimal(period.duration.total_seconds())
    if elapsed <= 0 or elapsed / length < LINEAR_MIN_ELAPSED:
        return None
    rate = spend / elapsed
    projected = spend + rate * Decimal((period.end - now).total_seconds())
    crossing = None
    if spend < limit <= projected and rate > 0:
        crossing = now + timedelta(seconds=float((limit - spend) / rate))
    return Forecast(projected, "linear", crossing)


# the expected value of each bucket still to come (start, end, expected), per (series, period,
# now, history start): the same for every rule that forecasts the same member and window
Expected = list[tuple[datetime, datetime, Decimal]]
ExpectedMemo = dict[tuple[int, datetime, datetime, datetime, datetime], tuple[Series, Expected]]


def _profile_forecast(
    series: Series,
    period: Period,
    now: datetime,
    tz: ZoneInfo,
    spend: Decimal,
    limit: Decimal,
    history_start: datetime,
    memo: ExpectedMemo | None = None,
) -> Forecast:
    key = (id(series), period.start, period.end, now, history_start)
    kept = memo.get(key) if memo is not None else None
    if kept is not None and kept[0] is series:
        expectations = kept[1]
    else:
        expectations = _expected(series, period, now, tz, history_start)
        if memo is not None:
            memo[key] = (series, expectations)  # the series kept: its id stays its own
    total = spend
    crossing = None
    for start, end, expected in expectations:
        if crossing is None and total < limit <= total + expected:
            share = (limit - total) / expected
            begin = max(start, now)
            crossing = begin + (end - begin) * float(share)
        total += expected
    if spend >= limit:
        crossing = None
    return Forecast(total, "hour_of_week", crossing)


def _expected(
    series: Series, period: Period, now: datetime, tz: ZoneInfo, history_start: datetime
) -> Expected:
    expectations = []
    current = bucket_start(now, tz)
    for bucket in buckets(current, period.end, tz):
        # the last PROFILE_WEEKS same hours of the week that are over (a bucket three weeks
        # ahead has no "one week earlier" yet: that hour is still to come, not zero)
        first = 1 + max(0, int((bucket.start - current) / WEEK))
        samples = [
            series.total(bucket.start - k * WEEK, bucket.end - k * WEEK)
            for k in range(first, first + PROFILE_WEEKS)
            if bucket.start - k * WEEK >= history_start
        ]
        if not samples:
            continue
        expected = sum(samples, Decimal(0)) / len(samples)
        if bucket.start < now:  # the running bucket: only its remaining part is still to come
            left = Decimal((bucket.end - now).total_seconds()) / Decimal(
                (bucket.end - bucket.start).total_seconds()
            )
            expected *= left
        expectations.append((bucket.start, bucket.end, expected))
    return expectations
