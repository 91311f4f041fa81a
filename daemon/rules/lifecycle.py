"""Alert lifecycle shared by budget and anomaly rules: inactive → pending → firing → resolved.

`for` is how long a condition must hold before the alert fires (as in Prometheus);
`keep_firing_for` holds a firing alert that long after its condition cleared, to stop
flapping. An alert of a calendar period that has ended resolves at once (reason
``period ended``): a new period starts fresh. A forecast alert whose budget is then reached
is ``superseded`` (its state is resolved, but nothing went back under: the threshold alert
took over). The notifier acts on the transitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

ZERO = timedelta(0)
Status = Literal["inactive", "pending", "firing", "resolved"]
TransitionKind = Literal["firing", "resolved", "superseded"]


@dataclass(frozen=True, slots=True)  # slots: kept by the hundred thousand (budget_conditions)
class AlertKey:
    """Identity of an alert: (rule, member, threshold or direction, window period)."""

    rule: str
    member: str
    condition: str  # "80" (percent), "forecast", "up", "down"
    period: str  # calendar period id, "rolling-24h", or "" for anomalies
    id: str = field(init=False, compare=False, repr=False)  # the four joined, computed once

    def __post_init__(self) -> None:
        joined = alert_id(self.rule, self.member, self.condition, self.period)
        object.__setattr__(self, "id", joined)

    @classmethod
    def parse(cls, alert_id: str) -> AlertKey:
        """The key of an ``id`` (rule names, conditions and periods never hold ``|``; a member
        may)."""
        rule, _, rest = alert_id.partition("|")
        member, condition, period = rest.rsplit("|", 2) if rest.count("|") >= 2 else (rest, "", "")
        return cls(rule, member, condition, period)


def alert_id(rule: str, member: str, condition: str, period: str) -> str:
    """The `AlertKey.id` of these four, without a key (the engine looks states up by it)."""
    return "|".join((rule, member, condition, period))


@dataclass(frozen=True, slots=True)
class AlertState:
    key: AlertKey
    status: Status
    since: datetime  # when the current status began
    # the last evaluation at which the condition held; moved on every cycle only where it is
    # read: a firing alert of a rule with `keep_firing_for` (else: when it began to hold)
    last_true: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    severity: str = "warning"


@dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    state: AlertState
    reason: str = ""


def step(
    previous: AlertState | None,
    key: AlertKey,
    holds: bool,
    now: datetime,
    *,
    for_: timedelta = timedelta(0),
    keep_firing_for: timedelta = timedelta(0),
    severity: str = "warning",
) -> tuple[AlertState | None, Transition | None]:
    """Advance one alert by one evaluation; ``None`` state means nothing worth keeping."""
    status = previous.status if previous is not None else "inactive"
    if status in ("inactive", "resolved"):
        if not holds:
            # A resolved alert of a period is remembered until the period ends, so it can't
            # fire twice in one period from a jittery value; an anomaly's is dropped.
            keep = previous is not None and status == "resolved" and previous.key.period != ""
            return (previous if keep else None), None
        if for_ <= timedelta(0):
            fired = AlertState(key, "firing", now, now, now, None, severity)
            return fired, Transition("firing", fired)
        return AlertState(key, "pending", now, now, severity=severity), None
    assert previous is not None
    if status == "pending":
        if not holds:
            return None, None
        if now - previous.since >= for_:
            fired = replace(
                previous, status="firing", since=now, last_true=now, fired_at=now, severity=severity
            )
            return fired, Transition("firing", fired)
        return _still_true(previous, now, severity, keep_firing_for), None
    # firing
    if holds:
        return _still_true(previous, now, severity, keep_firing_for), None
    last_true = previous.last_true or previous.since
    if now - last_true < keep_firing_for:
        return previous, None
    resolved = replace(previous, status="resolved", since=now, resolved_at=now)
    return resolved, Transition("resolved", resolved, "condition cleared")


def step_firing(
    previous: AlertState,
    key: AlertKey,
    holds: bool,
    now: datetime,
    for_: timedelta,
    keep_firing_for: timedelta,
    severity: str,
) -> tuple[AlertState | None, Transition | None]:
    """`step`, with the steady case first: a firing alert whose condition still holds (most
    of the 20,000-200,000 stateful alerts of a large workspace, every cycle) gets its new
    state without the keyword call. Equal to `step` (tests/rules/test_fast_paths.py)."""
    if holds and previous.status == "firing":
        return _still_true(previous, now, severity, keep_firing_for), None
    return step(
        previous, key, holds, now, for_=for_, keep_firing_for=keep_firing_for, severity=severity
    )


def _still_true(
    previous: AlertState, now: datetime, severity: str, keep_firing_for: timedelta
) -> AlertState:
    """``previous`` with its condition true at ``now``: the same state where nothing read
    changes (a pending alert counts from ``since``, a firing one without `keep_firing_for`
    never looks at ``last_true``), so the 20,000-200,000 firing alerts of a large workspace
    are neither made again nor written again every cycle; else a new one (the constructor,
    not `dataclasses.replace`)."""
    if severity == previous.severity and (previous.status == "pending" or keep_firing_for <= ZERO):
        return previous
    return AlertState(
        previous.key,
        previous.status,
        previous.since,
        now,
        previous.fired_at,
        previous.resolved_at,
        severity,
    )


def end_period(state: AlertState, now: datetime) -> tuple[AlertState | None, Transition | None]:
    """The calendar period of ``state`` is over: a firing alert resolves, the rest is dropped."""
    if state.status != "firing":
        return None, None
    resolved = replace(state, status="resolved", since=now, resolved_at=now)
    return resolved, Transition("resolved", resolved, "period ended")


def supersede(state: AlertState, now: datetime, reason: str) -> tuple[AlertState, Transition]:
    """A firing alert that another alert of its member took over (a forecast come true)."""
    resolved = replace(state, status="resolved", since=now, resolved_at=now)
    return resolved, Transition("superseded", resolved, reason)


# ------------------------------------------------------------------------------ alert groups
#
# The thresholds (and the forecast) of one budget rule, member and period are one *group*:
# people hear about its highest firing alert only (its *lead*), as Alertmanager users get with
# an inhibition of the lower severities. Every other alert is a group of its own.

GroupKey = tuple[str, str, str, str]


def threshold_of(key: AlertKey) -> Decimal | None:
    """The percentage of a budget threshold alert (None for forecast, anomaly, new member)."""
    if not key.condition[:1].isdigit():
        return None
    try:
        return Decimal(key.condition)
    except InvalidOperation:
        return None


def group_of(key: AlertKey) -> GroupKey:
    budget = key.condition == "forecast" or threshold_of(key) is not None
    return (key.rule, key.member, key.period, "" if budget else key.condition)


def rank(key: AlertKey) -> tuple[Decimal, int]:
    """Order within a group: thresholds below 100 %, the forecast (a predicted 100 %), then
    thresholds of 100 % and more."""
    threshold = threshold_of(key)
    if threshold is not None:
        return (threshold, 1)
    if key.condition == "forecast":
        return (Decimal(100), 0)
    return (Decimal(0), 0)


def lead(states: Iterable[AlertState]) -> AlertState | None:
    """The highest firing alert among ``states`` (None: none fires)."""
    firing = [s for s in states if s.status == "firing"]
    return max(firing, key=lambda s: rank(s.key)) if firing else None
