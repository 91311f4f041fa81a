"""One evaluation cycle: every rule against the usage, then every alert through its lifecycle.

Input: rules, a `UsageIndex`, the previous alert states and ``now`` (and the rules still
warming up, whose alerts stand still). Output: the evaluations (for reports and metrics), the
new states (for the store) and the transitions (for the notifier). A firing forecast alert
whose budget is reached is superseded by the threshold alert that takes over, never resolved.
Pure: same input, same output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from daemon.rules.budget_conditions import NOTHING
from daemon.rules.lifecycle import (
    AlertKey,
    AlertState,
    Transition,
    end_period,
    step,
    step_firing,
    supersede,
    threshold_of,
)
from daemon.rules.new_member import NewMemberEvaluation, evaluate_new_member
from daemon.rules.schema import AnomalyRule, AnyRule, BudgetRule
from daemon.rules.selection import UsageNeed
from daemon.rules.usage import UsageIndex
from daemon.rules.windows import bucket_end, bucket_start, is_calendar, window_period

Evaluation = BudgetEvaluation | AnomalyEvaluation | NewMemberEvaluation


@dataclass(frozen=True)
class Notice:
    """A transition with the evaluation that caused it (None: the rule's period ended)."""

    transition: Transition
    evaluation: Evaluation | None


@dataclass
class EngineResult:
    # every anomaly and new-member evaluation (a budget member's is made when asked for:
    # `per_rule`'s `BudgetTable`s, `evaluation_of`)
    evaluations: list[Evaluation] = field(default_factory=list)
    states: dict[str, AlertState] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    # per rule, in config order: every member's evaluation (a `BudgetTable` for budgets)
    per_rule: list[Sequence[Evaluation]] = field(default_factory=list)
    # rules whose history is still being fetched (rule → why): evaluated, alerts held still
    warming: dict[str, str] = field(default_factory=dict)
    # rule → its budget table, or its members' evaluations one by one (`evaluation_of`)
    _by_rule: dict[str, list[Sequence[Evaluation]]] | None = field(
        default=None, repr=False, compare=False
    )

    def evaluation_of(self, key: AlertKey) -> Evaluation | None:
        """The evaluation with the condition ``key`` (None: no member of this cycle has it)."""
        if self._by_rule is None:  # a rule's entry of `per_rule` (all of one rule's members)
            self._by_rule = {}
            for entry in self.per_rule:
                rule = (
                    entry.rule if isinstance(entry, BudgetTable) else entry[0].rule if entry else ""
                )
                self._by_rule.setdefault(rule, []).append(entry)
        for evaluations in self._by_rule.get(key.rule, []):
            found: list[Evaluation]
            if isinstance(evaluations, BudgetTable):
                found = [evaluations[i] for i in evaluations.indexes_of((key.member,))]
            else:
                found = [e for e in evaluations if e.member.id == key.member]
            for evaluation in found:
                if any(c.key.id == key.id for c in evaluation.conditions):
                    return evaluation
        return None

    @property
    def budget_tables(self) -> list[BudgetTable]:
        return [t for t in self.per_rule if isinstance(t, BudgetTable)]

    def anomalies(self) -> list[AnomalyEvaluation]:
        """Every anomaly rule's members (budget tables are not walked: their members are
        made on demand)."""
        return [
            e
            for evaluations in self.per_rule
            if not isinstance(evaluations, BudgetTable)
            for e in evaluations
            if isinstance(e, AnomalyEvaluation)
        ]

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
    warming: Mapping[str, str] = {},  # never mutated
) -> EngineResult:
    """Every rule at ``now`` and every alert one step on.

    ``warming`` names rules whose history is still being fetched (rule → why, e.g. "baseline
    40 % fetched"): they are evaluated for display, but their alerts stand still: previous
    states carried over as they are, no transitions, nothing pending starts.
    """
    result = EngineResult(warming=dict(warming))
    seen: set[str] = set()
    stateful: dict[str, set[str]] = {}
    for previous_state in previous.values():
        stateful.setdefault(previous_state.key.rule, set()).add(previous_state.key.member)
    by_name = {rule.name: rule for rule in rules}
    for rule in rules:
        if isinstance(rule, BudgetRule):
            table = evaluate_budget(rule, usage, now, tz, stateful.get(rule.name, set()))
            result.per_rule.append(table)
            if rule.name not in warming:  # else its alerts stand still (carried over below)
                for i, code in zip(table.worked, table.outcomes, strict=True):
                    if code != NOTHING:
                        _step_budget(result, rule, table, i, code, previous, now, seen)
            continue
        evaluations: Sequence[Evaluation]
        if isinstance(rule, AnomalyRule):
            evaluations = evaluate_anomaly(rule, usage, now, tz)
        else:
            evaluations = evaluate_new_member(rule, usage, now)
        result.per_rule.append(evaluations)
        result.evaluations.extend(evaluations)
        if rule.name not in warming:
            for evaluation in evaluations:
                _step(result, rule, evaluation, previous, now, seen)
    for key_id, state in previous.items():
        if key_id in seen:
            continue
        known = by_name.get(state.key.rule)
        if known is None:
            continue  # the rule was removed from the config: forget its alerts
        rule = known
        if rule.name in warming:
            result.states[key_id] = state
            continue
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


def _step(
    result: EngineResult,
    rule: AnyRule,
    evaluation: Evaluation,
    previous: Mapping[str, AlertState],
    now: datetime,
    seen: set[str],
) -> None:
    """One anomaly or new member's alerts one step on."""
    for condition in evaluation.conditions:
        key_id = condition.key.id
        seen.add(key_id)
        before = previous.get(key_id)
        if before is None:
            state, transition = step(
                None,
                condition.key,
                condition.holds,
                now,
                for_=rule.for_,
                keep_firing_for=rule.keep_firing_for,
                severity=condition.severity,
            )
        else:
            state, transition = step_firing(
                before,
                condition.key,
                condition.holds,
                now,
                rule.for_,
                rule.keep_firing_for,
                condition.severity,
            )
        _keep(result, key_id, state, transition, evaluation)


def _step_budget(
    result: EngineResult,
    rule: BudgetRule,
    table: BudgetTable,
    index: int,
    code: int,
    previous: Mapping[str, AlertState],
    now: datetime,
    seen: set[str],
) -> None:
    """One budget member's alerts one step on, from its outcome (the thresholds it reached,
    the forecast's outcome): its thresholds in the rule's order, then its forecast, as its
    conditions list them. An alert with no state whose condition does not hold is not
    stepped (`step` would keep nothing and say nothing); the others are looked up by id, and
    a key is made only for an alert that starts. The member's evaluation is made only where
    a transition or a forecast needs it. The same as stepping the member's conditions
    (tests/rules/test_fast_paths.py)."""
    thresholds = table.thresholds
    member = table.members[index].member.id
    stepped: dict[str, AlertState | None] = {}  # condition → its new state
    id_start = f"{rule.name}|{member}|"  # `alert_id`: the rule, the member, the condition...
    for name, holds, severity, id_end in thresholds.steps[code]:
        before = previous.get(id_start + id_end)
        if before is None:
            if not holds:
                continue
            key = AlertKey(rule.name, member, name, thresholds.period)
            state, transition = step(
                None,
                key,
                True,
                now,
                for_=rule.for_,
                keep_firing_for=rule.keep_firing_for,
                severity=severity,
            )
        else:
            seen.add(before.key.id)
            state, transition = step_firing(
                before, before.key, holds, now, rule.for_, rule.keep_firing_for, severity
            )
            if name == "forecast":
                evaluation = table[index]
                if before.status == "firing" and evaluation.spend >= evaluation.limit:
                    state, transition = _forecast_reached(evaluation, before, stepped, now)
        stepped[name] = state
        if state is not None:
            result.states[state.key.id] = state
        if transition is not None:
            result.notices.append(Notice(transition, table[index]))


def _forecast_reached(
    evaluation: BudgetEvaluation,
    forecast: AlertState,
    stepped: Mapping[str, AlertState | None],
    now: datetime,
) -> tuple[AlertState | None, Transition | None]:
    """A firing forecast alert whose spend reached the limit: it came true, so it does not
    "resolve". It stays as it is while the threshold alert that takes over (100 % or more) is
    still pending (`for`), then is superseded by it, whatever ``keep_firing_for`` says."""
    for condition in evaluation.conditions:
        threshold = threshold_of(condition.key)
        taking_over = stepped.get(condition.key.condition)
        if (
            threshold is not None
            and threshold >= 100
            and condition.holds
            and taking_over is not None
            and taking_over.status == "pending"
        ):
            return forecast, None
    return supersede(forecast, now, "spend reached the limit")


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
