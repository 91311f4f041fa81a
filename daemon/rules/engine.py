"""One evaluation cycle: every rule against the usage, then every alert through its lifecycle.

Input: rules, a `UsageIndex`, the previous alert states and ``now``. Output: the evaluations
(for reports and metrics), the new states (for the store) and the transitions (for the
notifier). Pure: same input, same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.rules.anomaly import AnomalyEvaluation, evaluate_anomaly
from daemon.rules.budget import (
    PROFILE_WEEKS,
    BudgetEvaluation,
    BudgetTable,
    budget_metric,
    evaluate_budget,
)
from daemon.rules.lifecycle import AlertState, Transition, end_period, step
from daemon.rules.new_member import NewMemberEvaluation, evaluate_new_member
from daemon.rules.schema import AnomalyRule, AnyRule, BudgetRule
from daemon.rules.usage import UsageIndex, UsageNeed
from daemon.rules.windows import bucket_end, bucket_start, is_calendar, window_period

Evaluation = BudgetEvaluation | AnomalyEvaluation | NewMemberEvaluation


@dataclass(frozen=True)
class Notice:
    """A transition with the evaluation that caused it (None: the rule's period ended)."""

    transition: Transition
    evaluation: Evaluation | None


@dataclass
class EngineResult:
    # the evaluations made up front: every anomaly and new-member evaluation, and the budget
    # members that can move an alert (see `BudgetTable`)
    evaluations: list[Evaluation] = field(default_factory=list)
    states: dict[str, AlertState] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    # per rule, in config order: every member's evaluation (a `BudgetTable` for budgets)
    per_rule: list[Sequence[Evaluation]] = field(default_factory=list)

    @property
    def budget_tables(self) -> list[BudgetTable]:
        return [t for t in self.per_rule if isinstance(t, BudgetTable)]

    def all_evaluations(self) -> list[Evaluation]:
        """Every member of every rule (for reports: a 10,000-key rule makes 10,000 rows)."""
        return [e for evaluations in self.per_rule for e in evaluations]

    @property
    def firing(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.status == "firing"]


def usage_wanted(rules: Sequence[AnyRule], now: datetime, tz: ZoneInfo) -> list[UsageNeed]:
    """What `evaluate` will read from the `UsageIndex` at ``now``, rule by rule, so the shell
    loads just that: one total per member for a budget window, hourly series where a
    forecast, a baseline or first-seen times need them."""
    current = bucket_start(now, tz)
    end = bucket_end(now, tz)
    wanted: list[UsageNeed] = []
    for rule in rules:
        if isinstance(rule, BudgetRule):
            period = window_period(rule.window, now, tz)
            if rule.forecast and is_calendar(rule.window):
                start = period.start - timedelta(weeks=PROFILE_WEEKS)
                wanted.append(UsageNeed(rule, budget_metric(rule), start, end, True))
            else:
                last = min(now, period.end)
                wanted.append(UsageNeed(rule, budget_metric(rule), period.start, last, False))
        elif isinstance(rule, AnomalyRule):
            start = current - rule.window - rule.baseline
            wanted.append(UsageNeed(rule, rule.metric, start, end, True))
        else:  # new members: who was first seen lately
            start = now - rule.window - timedelta(hours=2)
            wanted.append(UsageNeed(rule, "cost_usd", start, end, True))
    return wanted


def evaluate(
    rules: Sequence[AnyRule],
    usage: UsageIndex,
    previous: dict[str, AlertState],
    now: datetime,
    tz: ZoneInfo,
) -> EngineResult:
    result = EngineResult()
    seen: set[str] = set()
    stateful: dict[str, set[str]] = {}
    for previous_state in previous.values():
        stateful.setdefault(previous_state.key.rule, set()).add(previous_state.key.member)
    by_name = {rule.name: rule for rule in rules}
    for rule in rules:
        evaluations: Sequence[Evaluation]
        if isinstance(rule, BudgetRule):
            table = evaluate_budget(rule, usage, now, tz, stateful.get(rule.name, set()))
            result.per_rule.append(table)
            evaluations = list(table.evaluated.values())
        elif isinstance(rule, AnomalyRule):
            evaluations = evaluate_anomaly(rule, usage, now, tz)
            result.per_rule.append(evaluations)
        else:
            evaluations = evaluate_new_member(rule, usage, now)
            result.per_rule.append(evaluations)
        for evaluation in evaluations:
            result.evaluations.append(evaluation)
            for condition in evaluation.conditions:
                key_id = condition.key.id
                seen.add(key_id)
                state, transition = step(
                    previous.get(key_id),
                    condition.key,
                    condition.holds,
                    now,
                    for_=rule.for_,
                    keep_firing_for=rule.keep_firing_for,
                    severity=condition.severity,
                )
                if (
                    transition is not None
                    and transition.kind == "resolved"
                    and condition.key.condition == "forecast"
                    and isinstance(evaluation, BudgetEvaluation)
                    and evaluation.spend >= evaluation.limit
                ):
                    transition = replace(transition, reason="spend reached the limit")
                _keep(result, key_id, state, transition, evaluation)
    for key_id, state in previous.items():
        if key_id in seen:
            continue
        known = by_name.get(state.key.rule)
        if known is None:
            continue  # the rule was removed from the config: forget its alerts
        rule = known
        if (
            isinstance(rule, BudgetRule)
            and state.key.period != window_period(rule.window, now, tz).id
        ):
            new_state, transition = end_period(state, now)
        else:  # the member has no usage in the window any more, or could not be judged
            new_state, transition = step(
                state,
                state.key,
                False,
                now,
                for_=rule.for_,
                keep_firing_for=rule.keep_firing_for,
                severity=state.severity,
            )
        _keep(result, key_id, new_state, transition, None)
    return result


def _keep(
    result: EngineResult,
    key_id: str,
    state: AlertState | None,
    transition: Transition | None,
    evaluation: Evaluation | None,
) -> None:
    if state is not None:
        result.states[key_id] = state
    if transition is not None:
        result.notices.append(Notice(transition, evaluation))
