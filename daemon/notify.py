"""Turning alert transitions into Slack messages (`plan`, pure); delivery is `daemon.delivery`.

People hear about a budget rule's member once per evaluation, about its highest alert: the
thresholds (and the forecast) of one rule, member and period are one group (see
`rules.lifecycle.group_of`) and only the group's *lead*, its highest firing alert, is
announced and repeated. Lower thresholds crossed with it are recorded as reached (named in
the message) and never sent on their own in that period. Going back under is said once, for
the highest alert that cleared; a forecast that came true is folded into the message of the
threshold that took over (threaded under the forecast's message on bot token routes), never
announced as "resolved". More than `GROUP_AT` messages to one route in one cycle become one
grouped message. The cycle stores the new alert states and these messages in one transaction
(`Store.save_alerts`); `deliver` then sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from daemon.delivery import (
    CONSOLE,
    MAX_WAIT,
    TRIES_PER_ATTEMPT,
    ConsoleSender,
    DeliveryReport,
    Sender,
    SendResult,
    SlackSender,
    Sleep,
    deliver,
    render_readable,
    requeue_dead_letters,
    route_for,
    silence_matcher,
)
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, Forecast
from daemon.rules.engine import EngineResult, Evaluation, Notice
from daemon.rules.lifecycle import AlertKey, AlertState, GroupKey, group_of, lead, rank
from daemon.rules.new_member import NewMemberEvaluation
from daemon.rules.schema import AnyRule, NewMemberRule
from daemon.rules.usage import Member, MemberUsage, Series
from daemon.rules.windows import Period, bucket_start, calendar_period
from daemon.slack_messages import (
    SlackMessage,
    anomaly_message,
    budget_message,
    group_message,
    new_member_message,
    resolved_message,
    summary_line,
)
from daemon.store import OutboxItem

__all__ = [
    "CONSOLE",
    "GROUP_AT",
    "MAX_WAIT",
    "TRIES_PER_ATTEMPT",
    "ConsoleSender",
    "DeliveryReport",
    "SendResult",
    "Sender",
    "SlackSender",
    "Sleep",
    "deliver",
    "message_for",
    "plan",
    "render_readable",
    "requeue_dead_letters",
    "route_for",
    "sample_messages",
    "silence_matcher",
]

GROUP_AT = 5  # more messages than this to one route in one cycle become one grouped message
Rule = AnyRule

_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class _Draft:
    route: str
    kind: str  # firing | repeat | resolved | superseded
    alert_id: str  # the alert the message is about (its thread, on bot routes)
    severity: str
    message: SlackMessage
    also: tuple[str, ...] = ()  # other alerts the message covers (a superseded forecast)
    thread_alert: str | None = None  # default: alert_id


def message_for(
    state: AlertState,
    evaluation: Evaluation,
    tz: ZoneInfo,
    *,
    repeat: bool,
    mention: str | None,
    reached: Sequence[str] = (),
    came_true: bool = False,
) -> SlackMessage:
    if isinstance(evaluation, BudgetEvaluation):
        return budget_message(
            evaluation,
            state,
            tz,
            repeat=repeat,
            mention=mention,
            reached=reached,
            came_true=came_true,
        )
    if isinstance(evaluation, NewMemberEvaluation):
        return new_member_message(evaluation, state, tz, mention=mention)
    return anomaly_message(evaluation, state, tz, repeat=repeat, mention=mention)


@dataclass(frozen=True)
class _Context:
    tz: ZoneInfo
    route: str
    rule: Rule
    last_notified: Mapping[str, datetime]
    by_alert: Mapping[str, Evaluation]
    labels: Mapping[str, str]
    send_resolved: bool
    silenced: Callable[[AlertState], bool]


def plan(
    result: EngineResult,
    rules: Mapping[str, Rule],
    route_of: Callable[[Rule], str | None],
    last_notified: Mapping[str, datetime],
    now: datetime,
    tz: ZoneInfo,
    *,
    repeat_interval: timedelta,
    send_resolved: bool,
    labels: Mapping[str, str],
    silenced: Callable[[AlertState], bool] = lambda _state: False,
) -> tuple[list[OutboxItem], dict[str, datetime]]:
    """The outbox items of one cycle and the alerts they notify about (for repeat timing).

    At most one message per alert group and cycle (see the module). A silenced alert is
    still tracked (state, metrics) but nothing is sent; if it is still firing when the
    silence ends, its firing message goes out then. Rules that are warming up repeat nothing.
    """
    by_alert: dict[str, Evaluation] = {
        c.key.id: ev for ev in result.evaluations for c in ev.conditions
    }
    groups: dict[GroupKey, list[AlertState]] = {}
    for state in result.states.values():
        groups.setdefault(group_of(state.key), []).append(state)
    changes: dict[GroupKey, list[Notice]] = {}
    for notice in result.notices:
        changes.setdefault(group_of(notice.transition.state.key), []).append(notice)
    drafts: list[_Draft] = []
    notified: dict[str, datetime] = {}

    def context(rule_name: str) -> _Context | None:
        rule = rules.get(rule_name)
        route = route_of(rule) if rule is not None else None
        if rule is None or route is None:
            return None
        return _Context(tz, route, rule, last_notified, by_alert, labels, send_resolved, silenced)

    for group, notices in changes.items():
        ctx = context(group[0])
        states = groups.get(group, [])
        draft = _change(notices, states, ctx) if ctx is not None else None
        if draft is not None:
            drafts.append(draft)
            notified.update((s.key.id, now) for s in states if s.status == "firing")
    for group, states in sorted(groups.items()):
        top = lead(states)
        if group in changes or top is None or top.key.rule in result.warming:
            continue
        ctx = context(top.key.rule)
        evaluation = by_alert.get(top.key.id)
        if ctx is None or evaluation is None or silenced(top):
            continue
        last = last_notified.get(top.key.id)
        if last is not None and isinstance(ctx.rule, NewMemberRule):
            continue  # announced once; no repeats
        repeat = last is not None
        if last is not None and (repeat_interval <= timedelta(0) or now - last < repeat_interval):
            continue
        # never announced (silenced until now, or no route then): its first message, else a repeat
        message = message_for(
            top,
            evaluation,
            tz,
            repeat=repeat,
            mention=None if repeat else ctx.rule.mention,
            reached=_reached(states, top),
        )
        drafts.append(
            _Draft(ctx.route, "repeat" if repeat else "firing", top.key.id, top.severity, message)
        )
        notified.update((s.key.id, now) for s in states if s.status == "firing")
    return _group(drafts, now, tz), notified


def _reached(states: Sequence[AlertState], top: AlertState) -> list[str]:
    """The other thresholds of the group that fire, lowest first ("50", "80")."""
    lower = [
        s.key
        for s in states
        if s.status == "firing" and s.key != top.key and s.key.condition[:1].isdigit()
    ]
    return [k.condition for k in sorted(lower, key=rank)]


def _change(
    notices: Sequence[Notice], states: Sequence[AlertState], ctx: _Context
) -> _Draft | None:
    """The one message (or none) about what happened to one alert group in this cycle."""
    top = lead(states)
    fired = {n.transition.state.key.id: n for n in notices if n.transition.kind == "firing"}
    ended = [n for n in notices if n.transition.kind in ("resolved", "superseded")]
    superseded = next((n for n in ended if n.transition.kind == "superseded"), None)
    if top is not None and top.key.id in fired:  # a new highest alert
        evaluation = fired[top.key.id].evaluation or ctx.by_alert.get(top.key.id)
        if evaluation is None or ctx.silenced(top):
            return None
        message = message_for(
            top,
            evaluation,
            ctx.tz,
            repeat=False,
            mention=ctx.rule.mention,
            reached=_reached(states, top),
            came_true=superseded is not None,
        )
        if superseded is None:
            return _Draft(ctx.route, "firing", top.key.id, top.severity, message)
        forecast = superseded.transition.state.key.id
        return _Draft(
            ctx.route, "superseded", top.key.id, top.severity, message, (forecast,), forecast
        )
    if not ended:
        return None
    cleared = max(ended, key=lambda n: rank(n.transition.state.key))
    state = cleared.transition.state
    if top is not None and rank(top.key) >= rank(state.key):
        return None  # a lower alert cleared under a higher one that still fires
    if not any(n.transition.state.key.id in ctx.last_notified for n in ended):
        return None  # never announced: nothing to take back
    evaluation = cleared.evaluation
    if cleared.transition.kind == "superseded":
        # the forecast came true and no threshold of 100 % or more took over: say so
        if not isinstance(evaluation, BudgetEvaluation) or ctx.silenced(state):
            return None
        message = message_for(
            state,
            evaluation,
            ctx.tz,
            repeat=False,
            mention=ctx.rule.mention,
            reached=_reached(states, state),
            came_true=True,
        )
        return _Draft(ctx.route, "superseded", state.key.id, state.severity, message)
    if not ctx.send_resolved or isinstance(ctx.rule, NewMemberRule):
        return None  # a new key does not "resolve"
    label = (
        evaluation.member.label
        if evaluation is not None
        else ctx.labels.get(state.key.member, state.key.member)
    )
    firing = sorted((s.key for s in states if s.status == "firing"), key=rank)
    message = resolved_message(
        state,
        label,
        cleared.transition.reason,
        ctx.tz,
        evaluation,
        still=[key.condition for key in firing],
    )
    return _Draft(ctx.route, "resolved", state.key.id, "resolved", message)


def _group(drafts: list[_Draft], now: datetime, tz: ZoneInfo) -> list[OutboxItem]:
    by_route: dict[str, list[_Draft]] = {}
    for draft in drafts:
        by_route.setdefault(draft.route, []).append(draft)
    items = []
    for route, group in by_route.items():
        if len(group) > GROUP_AT:
            worst = max((d.severity for d in group), key=lambda s: _SEVERITY_ORDER.get(s, -1))
            message = group_message([summary_line(d.message) for d in group], worst, tz, now)
            alert_ids = [a for d in group for a in (d.alert_id, *d.also)]
            items.append(OutboxItem(route, "group", alert_ids, None, message.payload(), now))
        else:
            items += [
                OutboxItem(
                    route,
                    d.kind,
                    [d.alert_id, *d.also],
                    d.thread_alert or d.alert_id,
                    d.message.payload(),
                    now,
                )
                for d in group
            ]
    return items


def sample_messages(tz: ZoneInfo, now: datetime) -> list[SlackMessage]:
    """One budget and one anomaly message with made-up numbers, for `test-alert`."""
    member = Member("key_sample", "example-key (key_sample)", "api_key")
    month = calendar_period("month", now, tz)
    hour = bucket_start(now, tz)
    last_hour = int((hour - timedelta(hours=1)).timestamp())
    usage = MemberUsage(
        member,
        Series({}),
        parts={
            "gpt-4o": Series({last_hour: Decimal("45.00")}),
            "claude-sonnet-4": Series({last_hour: Decimal("3.20")}),
        },
    )
    budget = BudgetEvaluation(
        "test-alert-sample-budget",
        member,
        "month",
        month,
        now,
        "usd",
        Decimal("412.50"),
        Decimal(500),
        Forecast(Decimal("590.10"), "hour_of_week", now + timedelta(days=5)),
        (),
        usage,
    )
    budget_state = AlertState(
        AlertKey(budget.rule, member.id, "80", month.id), "firing", now, now, now, None, "warning"
    )
    anomaly = AnomalyEvaluation(
        "test-alert-sample-anomaly",
        member,
        "cost_usd",
        Period("w", hour - timedelta(hours=1), hour),
        Period("baseline", hour - timedelta(days=14, hours=1), hour - timedelta(hours=1)),
        "hour_of_week",
        336,
        Decimal("48.20"),
        Decimal("6.10"),
        9.4,
        (),
        "",
        usage,
    )
    anomaly_state = AlertState(
        AlertKey(anomaly.rule, member.id, "up", ""), "firing", now, now, now, None, "critical"
    )
    return [budget_message(budget, budget_state, tz), anomaly_message(anomaly, anomaly_state, tz)]
