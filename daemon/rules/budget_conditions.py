"""A budget rule's conditions per member, made once and reused from cycle to cycle.

What a budget member's conditions are depends only on the rule, the window's period, the
member and which thresholds its spend reached (and whether its forecast holds): not on the
spend itself. With 10,000 keys a cycle makes the same 20,000-330,000 conditions as the cycle
before (a member over its limit stays there for days), so each (member, outcome) gets its
tuple of `Condition`s once per period and later cycles reuse it: equal values (conditions are
immutable), no new objects to make or for the garbage collector to walk. The engine stays
pure: the same input gives equal output whether the tuple is new or kept.
tests/rules/test_fast_paths.py holds it to the conditions made directly.
"""

from __future__ import annotations

from bisect import bisect_right
from decimal import Decimal

from daemon.rules.lifecycle import AlertKey
from daemon.rules.types import Condition, Severity

# (threshold name, the spend it takes, its severity), in the rule's order
Levels = list[tuple[str, Decimal, Severity]]

RULES_KEPT = 10_000  # rules with kept conditions (renamed rules leave theirs behind)


class BudgetConditions:
    """The conditions of one rule's members in one period."""

    __slots__ = (
        "_made",
        "_order",
        "forecast_severity",
        "levels",
        "period",
        "rule",
        "sorted_levels",
    )

    def __init__(self, rule: str, period: str, levels: Levels, forecast_severity: Severity) -> None:
        self.rule, self.period, self.levels = rule, period, levels
        self.forecast_severity = forecast_severity
        # which thresholds a spend reached is how many of the sorted levels it is at or over
        self._order = sorted(range(len(levels)), key=lambda i: levels[i][1])
        self.sorted_levels = [levels[i][1] for i in self._order]
        # member → (thresholds reached, the forecast's outcome, its conditions): the last made
        self._made: dict[str, tuple[int, bool | None, tuple[Condition, ...]]] = {}

    def of(self, member_id: str, spend: Decimal, forecast: bool | None) -> tuple[Condition, ...]:
        """The member's conditions at ``spend``: each threshold holds when ``spend`` is at or
        over its level; ``forecast`` (None: no forecast condition) is the forecast's."""
        return self.of_reached(member_id, bisect_right(self.sorted_levels, spend), forecast)

    def of_reached(
        self, member_id: str, reached: int, forecast: bool | None
    ) -> tuple[Condition, ...]:
        """`of`, for a spend that reached the ``reached`` lowest levels (`sorted_levels`)."""
        made = self._made.get(member_id)
        if made is None or made[0] != reached or made[1] is not forecast:
            made = self._made[member_id] = (
                reached,
                forecast,
                self._make(member_id, reached, forecast),
            )
        return made[2]

    def forget_beyond(self, members: int) -> None:
        """Members come and go (a rolling window's period never ends): past twice the
        members evaluated, start afresh."""
        if len(self._made) > 2 * members + 1_000:
            self._made.clear()

    def _make(self, member_id: str, reached: int, forecast: bool | None) -> tuple[Condition, ...]:
        holding = set(self._order[:reached])
        conditions = [
            Condition(AlertKey(self.rule, member_id, name, self.period), i in holding, severity)
            for i, (name, _, severity) in enumerate(self.levels)
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
    """The kept conditions of ``rule`` in ``period`` (new ones when the period or the rule's
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
