"""A budget rule's thresholds in one period, and its members' outcomes against them.

What a budget member's conditions are depends only on the rule, the window's period, the
member and which thresholds its spend reached (and whether its forecast holds): not on the
spend itself. So a member's outcome is one small integer (`outcome`): the thresholds reached
and the forecast's outcome. The engine steps alerts from it without making a `Condition`
(an alert that holds no state and whose condition does not hold needs no step at all), and a
member's `Condition`s are made only when its evaluation is asked for (`of_reached`). With
10,000 keys, keeping every member's conditions from cycle to cycle had cost 86 MB
(docs/PERFORMANCE.md). tests/rules/test_fast_paths.py holds the conditions to the ones made
directly and the engine's steps to the steps of the conditions.
"""

from __future__ import annotations

from bisect import bisect_right
from decimal import Decimal

from daemon.rules.lifecycle import AlertKey
from daemon.rules.types import Condition, Severity

# (threshold name, the spend it takes, its severity), in the rule's order
Levels = list[tuple[str, Decimal, Severity]]

# (condition, holds, severity, the end of the alert id): one alert's step (`steps`)
Step = tuple[str, bool, Severity, str]

RULES_KEPT = 10_000  # rules with kept thresholds (renamed rules leave theirs behind)

NOTHING = 2**32 - 1  # the outcome of a member with nothing to step (in an array of "I")
_FORECASTS: tuple[bool | None, ...] = (None, False, True)


def outcome(reached: int, forecast: bool | None) -> int:
    """A member's outcome as one integer (kept in an unsigned 32-bit array)."""
    return reached * 3 + _FORECASTS.index(forecast)


def decode(code: int) -> tuple[int, bool | None]:
    """The thresholds reached and the forecast's outcome (None: no forecast condition)."""
    reached, forecast = divmod(code, 3)
    return reached, _FORECASTS[forecast]


class BudgetConditions:
    """The thresholds of one rule in one period."""

    __slots__ = (
        "forecast_severity",
        "holding",
        "levels",
        "period",
        "rule",
        "sorted_levels",
        "steps",
    )

    def __init__(self, rule: str, period: str, levels: Levels, forecast_severity: Severity) -> None:
        self.rule, self.period, self.levels = rule, period, levels
        self.forecast_severity = forecast_severity
        # which thresholds a spend reached is how many of the sorted levels it is at or over
        order = sorted(range(len(levels)), key=lambda i: levels[i][1])
        self.sorted_levels = [levels[i][1] for i in order]
        # thresholds reached → whether each threshold holds, in the rule's order
        self.holding = [
            tuple(i in order[:reached] for i in range(len(levels)))
            for reached in range(len(levels) + 1)
        ]
        # outcome → the engine's steps of a member (`daemon.rules.engine._step_budget`): per
        # condition, as its conditions list them, (condition, holds, severity, the end of its
        # alert id after "rule|member|")
        self.steps = [self._steps(*decode(code)) for code in range(3 * (len(levels) + 1))]

    def _steps(self, reached: int, forecast: bool | None) -> tuple[Step, ...]:
        steps = [
            (name, holds, severity, f"{name}|{self.period}")
            for (name, _, severity), holds in zip(self.levels, self.holding[reached], strict=True)
        ]
        if forecast is not None:
            steps.append(("forecast", forecast, self.forecast_severity, f"forecast|{self.period}"))
        return tuple(steps)

    def of(self, member_id: str, spend: Decimal, forecast: bool | None) -> tuple[Condition, ...]:
        """The member's conditions at ``spend``: each threshold holds when ``spend`` is at or
        over its level; ``forecast`` (None: no forecast condition) is the forecast's."""
        return self.of_reached(member_id, bisect_right(self.sorted_levels, spend), forecast)

    def of_reached(
        self, member_id: str, reached: int, forecast: bool | None
    ) -> tuple[Condition, ...]:
        """`of`, for a spend that reached the ``reached`` lowest levels (`sorted_levels`)."""
        conditions = [
            Condition(AlertKey(self.rule, member_id, name, self.period), holds, severity)
            for (name, _, severity), holds in zip(self.levels, self.holding[reached], strict=True)
        ]
        if forecast is not None:
            conditions.append(
                Condition(
                    AlertKey(self.rule, member_id, "forecast", self.period),
                    forecast,
                    self.forecast_severity,
                )
            )
        return tuple(conditions)


_KEPT: dict[str, BudgetConditions] = {}


def budget_conditions(
    rule: str, period: str, levels: Levels, forecast_severity: Severity
) -> BudgetConditions:
    """The kept thresholds of ``rule`` in ``period`` (new ones when the period or the rule's
    thresholds changed)."""
    kept = _KEPT.get(rule)
    if (
        kept is None
        or kept.period != period
        or kept.levels != levels
        or kept.forecast_severity != forecast_severity
    ):
        if len(_KEPT) >= RULES_KEPT:
            _KEPT.clear()
        kept = _KEPT[rule] = BudgetConditions(rule, period, levels, forecast_severity)
    return kept
