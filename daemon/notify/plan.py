"""From the engine's alert transitions to outbox items: the planning stages of the pipeline.

- **silence**: a silenced alert is still tracked (state, metrics) but nothing is sent; if it
  still fires when the silence ends, its first message goes out then (`daemon.notify.silence`).
- **dedup**: people hear about a budget rule's member once per evaluation, about its highest
  alert: the thresholds (and the forecast) of one rule, member and period are one group (see
  `rules.lifecycle.group_of`) and only the group's *lead*, its highest firing alert, is
  announced and repeated (after ``repeat_interval``). Lower thresholds crossed with it are
  recorded as reached (named in the message) and never sent on their own in that period.
  Going back under is said once, for the highest alert that cleared; a forecast that came
  true is folded into the message of the threshold that took over (threaded under the
  forecast's message on bot token routes), never announced as "resolved".
- **render** (`daemon.notify.slack.blocks`, pure) and **group**: more than `GROUP_AT`
  messages to one route in one cycle become one grouped message.

`decide` runs the first two and says which members' top contributors the messages name
(`Plan.parts_wanted`); the shell loads those and hands them to `render`. The cycle stores the
new alert states and the items in one transaction (`Store.save_alerts`); `deliver` sends them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.notify.slack.blocks import (
    SlackMessage,
    anomaly_message,
    budget_message,
    group_message,
    new_member_message,
    resolved_message,
    summary_line,
)
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.engine import EngineResult, Evaluation, Notice
from daemon.rules.lifecycle import AlertKey, AlertState, GroupKey, group_of, lead, rank
from daemon.rules.new_member import NewMemberEvaluation
from daemon.rules.schema import AnyRule, NewMemberRule
from daemon.rules.selection import PartsQuery
from daemon.rules.series import Series
from daemon.store import OutboxItem

GROUP_AT = 5  # more messages than this to one route in one cycle become one grouped message
Rule = AnyRule
Parts = Mapping[PartsQuery, dict[str, Series]]  # the contributors the shell loaded

_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
_NO_PARTS: Parts = {}


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


def with_parts(evaluation: Evaluation, parts: Parts) -> Evaluation:
    """``evaluation`` with its member's contributors as the shell loaded them (if it did)."""
    usage = evaluation.usage
    if usage is None or usage.parts_query is None or usage.parts_query not in parts:
        return evaluation
    loaded = replace(usage, parts=parts[usage.parts_query], parts_query=None)
    return replace(evaluation, usage=loaded)


@dataclass(frozen=True)
class AlertMessage:
    """A firing (or repeat, or came-true) message, decided but not rendered yet."""

    state: AlertState
    evaluation: Evaluation
    repeat: bool
    mention: str | None
    reached: tuple[str, ...] = ()
    came_true: bool = False

    def render(self, tz: ZoneInfo, parts: Parts) -> SlackMessage:
        return message_for(
            self.state,
            with_parts(self.evaluation, parts),
            tz,
            repeat=self.repeat,
            mention=self.mention,
            reached=self.reached,
            came_true=self.came_true,
        )


@dataclass(frozen=True)
class ResolvedMessage:
    """An alert went back under (or its period ended), decided but not rendered yet."""

    state: AlertState
    label: str
    reason: str
    evaluation: Evaluation | None
    still: tuple[str, ...]

    def render(self, tz: ZoneInfo, parts: Parts) -> SlackMessage:
        return resolved_message(
            self.state, self.label, self.reason, tz, self.evaluation, still=self.still
        )


@dataclass(frozen=True)
class Draft:
    route: str
    kind: str  # firing | repeat | resolved | superseded
    alert_id: str  # the alert the message is about (its thread, on bot routes)
    severity: str
    message: AlertMessage | ResolvedMessage
    also: tuple[str, ...] = ()  # other alerts the message covers (a superseded forecast)
    thread_alert: str | None = None  # default: alert_id


@dataclass(frozen=True)
class Plan:
    """One cycle's messages, decided; ``notified``: the alerts they notify about (for repeat
    timing)."""

    drafts: tuple[Draft, ...]
    notified: dict[str, datetime]
    now: datetime

    @property
    def parts_wanted(self) -> list[PartsQuery]:
        """The members whose messages name their top contributors, once each: what the shell
        loads for `render` (a few members, out of maybe thousands)."""
        wanted: dict[PartsQuery, None] = {}
        for draft in self.drafts:
            if isinstance(draft.message, AlertMessage):
                usage = draft.message.evaluation.usage
                if usage is not None and usage.parts_query is not None:
                    wanted[usage.parts_query] = None
        return list(wanted)


@dataclass(frozen=True)
class _Context:
    route: str
    rule: Rule
    last_notified: Mapping[str, datetime]
    evaluation_of: Callable[[AlertKey], Evaluation | None]  # `EngineResult.evaluation_of`
    labels: Mapping[str, str]
    send_resolved: bool
    silenced: Callable[[AlertState], bool]


def decide(
    result: EngineResult,
    rules: Mapping[str, Rule],
    route_of: Callable[[Rule], str | None],
    last_notified: Mapping[str, datetime],
    now: datetime,
    *,
    repeat_interval: timedelta,
    send_resolved: bool,
    labels: Mapping[str, str],
    silenced: Callable[[AlertState], bool] = lambda _state: False,
) -> Plan:
    """The messages of one cycle, at most one per alert group (see the module). Rules that
    are warming up repeat nothing."""
    groups: dict[GroupKey, list[AlertState]] = {}
    for state in result.states.values():
        groups.setdefault(group_of(state.key), []).append(state)
    changes: dict[GroupKey, list[Notice]] = {}
    for notice in result.notices:
        changes.setdefault(group_of(notice.transition.state.key), []).append(notice)
    drafts: list[Draft] = []
    notified: dict[str, datetime] = {}

    def context(rule_name: str) -> _Context | None:
        rule = rules.get(rule_name)
        route = route_of(rule) if rule is not None else None
        if rule is None or route is None:
            return None
        return _Context(
            route, rule, last_notified, result.evaluation_of, labels, send_resolved, silenced
        )

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
        last = last_notified.get(top.key.id)
        repeat = last is not None
        if last is not None and (repeat_interval <= timedelta(0) or now - last < repeat_interval):
            continue  # (first, before the evaluation is looked up: most firing groups stop here)
        ctx = context(top.key.rule)
        if ctx is None or silenced(top):
            continue
        if last is not None and isinstance(ctx.rule, NewMemberRule):
            continue  # announced once; no repeats
        evaluation = ctx.evaluation_of(top.key)
        if evaluation is None:
            continue
        # never announced (silenced until now, or no route then): its first message, else a repeat
        message = AlertMessage(
            top,
            evaluation,
            repeat=repeat,
            mention=None if repeat else ctx.rule.mention,
            reached=_reached(states, top),
        )
        drafts.append(
            Draft(ctx.route, "repeat" if repeat else "firing", top.key.id, top.severity, message)
        )
        notified.update((s.key.id, now) for s in states if s.status == "firing")
    return Plan(tuple(drafts), notified, now)


def render(decided: Plan, tz: ZoneInfo, parts: Parts = _NO_PARTS) -> list[OutboxItem]:
    """The outbox items of ``decided``: each message rendered with the contributors the shell
    loaded (`Plan.parts_wanted`), then grouped per route."""
    rendered = [(draft, draft.message.render(tz, parts)) for draft in decided.drafts]
    return _group(rendered, decided.now, tz)


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
    parts: Parts = _NO_PARTS,
) -> tuple[list[OutboxItem], dict[str, datetime]]:
    """`decide` and `render` in one go, with contributors loaded beforehand (``parts``) or
    none (usage built from rows knows its own): the outbox items of one cycle and the alerts
    they notify about (for repeat timing)."""
    decided = decide(
        result,
        rules,
        route_of,
        last_notified,
        now,
        repeat_interval=repeat_interval,
        send_resolved=send_resolved,
        labels=labels,
        silenced=silenced,
    )
    return render(decided, tz, parts), decided.notified


def _reached(states: Sequence[AlertState], top: AlertState) -> tuple[str, ...]:
    """The other thresholds of the group that fire, lowest first ("50", "80")."""
    lower = [
        s.key
        for s in states
        if s.status == "firing" and s.key != top.key and s.key.condition[:1].isdigit()
    ]
    return tuple(k.condition for k in sorted(lower, key=rank))


def _change(notices: Sequence[Notice], states: Sequence[AlertState], ctx: _Context) -> Draft | None:
    """The one message (or none) about what happened to one alert group in this cycle."""
    top = lead(states)
    fired = {n.transition.state.key.id: n for n in notices if n.transition.kind == "firing"}
    ended = [n for n in notices if n.transition.kind in ("resolved", "superseded")]
    superseded = next((n for n in ended if n.transition.kind == "superseded"), None)
    if top is not None and top.key.id in fired:  # a new highest alert
        evaluation = fired[top.key.id].evaluation or ctx.evaluation_of(top.key)
        if evaluation is None or ctx.silenced(top):
            return None
        message = AlertMessage(
            top,
            evaluation,
            repeat=False,
            mention=ctx.rule.mention,
            reached=_reached(states, top),
            came_true=superseded is not None,
        )
        if superseded is None:
            return Draft(ctx.route, "firing", top.key.id, top.severity, message)
        forecast = superseded.transition.state.key.id
        return Draft(
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
        message = AlertMessage(
            state,
            evaluation,
            repeat=False,
            mention=ctx.rule.mention,
            reached=_reached(states, state),
            came_true=True,
        )
        return Draft(ctx.route, "superseded", state.key.id, state.severity, message)
    if not ctx.send_resolved or isinstance(ctx.rule, NewMemberRule):
        return None  # a new key does not "resolve"
    label = (
        evaluation.member.label
        if evaluation is not None
        else ctx.labels.get(state.key.member, state.key.member)
    )
    firing = sorted((s.key for s in states if s.status == "firing"), key=rank)
    resolved = ResolvedMessage(
        state,
        label,
        cleared.transition.reason,
        evaluation,
        still=tuple(key.condition for key in firing),
    )
    return Draft(ctx.route, "resolved", state.key.id, "resolved", resolved)


def _group(
    rendered: Sequence[tuple[Draft, SlackMessage]], now: datetime, tz: ZoneInfo
) -> list[OutboxItem]:
    by_route: dict[str, list[tuple[Draft, SlackMessage]]] = {}
    for draft, message in rendered:
        by_route.setdefault(draft.route, []).append((draft, message))
    items = []
    for route, group in by_route.items():
        if len(group) > GROUP_AT:
            worst = max((d.severity for d, _ in group), key=lambda s: _SEVERITY_ORDER.get(s, -1))
            message = group_message([summary_line(m) for _, m in group], worst, tz, now)
            alert_ids = [a for d, _ in group for a in (d.alert_id, *d.also)]
            items.append(OutboxItem(route, "group", alert_ids, None, message.payload(), now))
        else:
            items += [
                OutboxItem(
                    route,
                    d.kind,
                    [d.alert_id, *d.also],
                    d.thread_alert or d.alert_id,
                    m.payload(),
                    now,
                )
                for d, m in group
            ]
    return items
