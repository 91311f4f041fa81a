"""What the rules found, for people: the budget, anomaly and new member tables of `once`,
`status` and `demo`, and `status`'s active alerts and silences (its outbox: `outbox_table`).

Rules that are still warming up (their history is being fetched, `EngineResult.warming`)
show as "warming up (why)" instead of numbers nobody should trust yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

from daemon.cli.outbox_table import condition_label, member_text
from daemon.formatting import (
    format_amount,
    format_metric,
    format_score,
    format_sensitivity,
    grid,
    shows_as_zero,
)
from daemon.money import format_percent, format_usd
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, BudgetTable
from daemon.rules.engine import EngineResult
from daemon.rules.lifecycle import AlertState
from daemon.rules.new_member import NewMemberEvaluation
from daemon.rules.types import Condition
from daemon.store import Silence

SHOWN_PER_RULE = 20
Silenced = Callable[[AlertState], bool]


def _never(_state: AlertState) -> bool:
    return False


def _alerts_column(
    conditions: Sequence[Condition], states: Mapping[str, AlertState], silenced: Silenced
) -> str:
    parts = []
    for condition in conditions:
        state = states.get(condition.key.id)
        if state is None or state.status == "inactive":
            continue
        text = f"{condition_label(condition.key.condition)} "
        text += "FIRING" if state.status == "firing" else state.status
        if state.status == "firing" and silenced(state):
            text += " (silenced)"
        parts.append(text)
    return ", ".join(parts) or "ok"


def _warming_text(result: EngineResult, rule: str) -> str:
    return f"warming up ({result.warming[rule]})"


def _held(result: EngineResult, rule: str) -> str:
    """The alerts column of a rule that warms up: its alerts stand still meanwhile."""
    firing = sum(s.status == "firing" for s in result.states.values() if s.key.rule == rule)
    return f"{firing} FIRING (held while warming up)" if firing else "warming up"


def _budget_row(b: BudgetEvaluation, result: EngineResult, tz: ZoneInfo, s: Silenced) -> list[str]:
    forecast = "-"
    if b.forecast is not None:
        forecast = f"{format_amount(b.forecast.projected, b.unit)} ({b.forecast.method})"
        if b.forecast.crossing is not None:
            forecast += f", 100% at {b.forecast.crossing.astimezone(tz):%m-%d %H:%M}"
    return [
        b.rule,
        b.member.label,
        b.period.id,
        format_amount(b.spend, b.unit),
        format_amount(b.limit, b.unit),
        format_percent(b.utilization),
        forecast,
        _alerts_column(b.conditions, result.states, s),
    ]


def shown_budget_members(table: BudgetTable, limit: int = SHOWN_PER_RULE) -> list[BudgetEvaluation]:
    """A budget rule's members worth a table row: all of them, or, past ``limit``, the
    ``limit`` most used plus every member with an alert (a 10,000-key rule is not 10,000
    lines)."""
    if len(table) <= limit:
        return list(table)
    top = table.top(limit)
    shown = {id(e.member) for e in top}
    alerting = [e for e in table.evaluated.values() if e.conditions and id(e.member) not in shown]
    return top + sorted(alerting, key=lambda e: e.spend, reverse=True)


def _budget_rows(result: EngineResult, tz: ZoneInfo, silenced: Silenced) -> list[list[str]]:
    rows = []
    for table in result.budget_tables:
        if table.rule in result.warming:
            limit = format_amount(table.limit, table.unit)
            warming = _warming_text(result, table.rule)
            rows.append(
                [
                    table.rule,
                    warming,
                    table.period.id,
                    "-",
                    limit,
                    "-",
                    "-",
                    _held(result, table.rule),
                ]
            )
            continue
        shown = shown_budget_members(table)
        rows += [_budget_row(b, result, tz, silenced) for b in shown]
        if len(shown) < len(table):
            more = f"... {len(table) - len(shown):,} more members below these"
            rows.append([table.rule, more, "", "", "", "", "", ""])
    return rows


def _anomaly_score(a: AnomalyEvaluation) -> str:
    """No score where there is nothing to compare: none computed, or both values show as 0."""
    if shows_as_zero(a.observed, a.metric) and shows_as_zero(a.expected, a.metric):
        return "-"
    return format_score(a.score)


def _anomaly_rows(
    anomalies: Sequence[AnomalyEvaluation], result: EngineResult, tz: ZoneInfo, s: Silenced
) -> list[list[str]]:
    rows = []
    warming_shown: set[str] = set()
    for a in anomalies:
        local = f"{a.window.start.astimezone(tz):%m-%d %H:%M}"
        judged = format_sensitivity(a.sensitivity, a.direction)
        if a.rule in result.warming:
            if a.rule not in warming_shown:
                warming_shown.add(a.rule)
                warming = _warming_text(result, a.rule)
                held = _held(result, a.rule)
                rows.append([a.rule, warming, a.metric, local, "-", "-", "-", judged, "-", held])
            continue
        rows.append(
            [
                a.rule,
                a.member.label,
                a.metric,
                local,
                format_metric(a.observed, a.metric),
                format_metric(a.expected, a.metric),
                _anomaly_score(a),
                judged,
                a.note or f"{a.points} pts, {a.seasonality}",
                _alerts_column(a.conditions, result.states, s),
            ]
        )
    return rows


def render_evaluations(
    result: EngineResult, tz: ZoneInfo, *, silenced: Silenced | None = None
) -> str:
    """Every rule's result: budgets, anomalies, new members. ``silenced`` marks the alerts a
    silence keeps out of Slack."""
    s = silenced or _never
    # budget members come from their tables, capped per rule; the rest are few
    evaluations = [e for e in result.evaluations if not isinstance(e, BudgetEvaluation)]
    anomalies = [e for e in evaluations if isinstance(e, AnomalyEvaluation)]
    sections: list[list[str]] = []
    budget_rows = _budget_rows(result, tz, s)
    if budget_rows:
        headers = ["Budget rule", "member", "period", "spent", "limit", "used", "forecast"]
        sections.append(grid([*headers, "alerts"], budget_rows, right={3, 4, 5}))
    if anomalies:
        headers = ["Anomaly rule", "member", "metric", "window", "observed", "expected", "score"]
        rows = _anomaly_rows(anomalies, result, tz, s)
        sections.append(
            grid([*headers, "fires at", "baseline", "alerts"], rows, right={4, 5, 6, 7})
        )
    news = [e for e in evaluations if isinstance(e, NewMemberEvaluation)]
    if news:
        sections.append(_new_member_lines(news, result, tz, s))
    shown = {t.rule for t in result.budget_tables} | {e.rule for e in evaluations}
    quiet = [rule for rule in result.warming if rule not in shown]
    if quiet:
        sections.append([f"{rule}: {_warming_text(result, rule)}" for rule in quiet])
    if not sections:
        return "Rules: nothing to evaluate yet (no usage in scope)"
    return "\n\n".join("\n".join(lines) for lines in sections)


def _new_member_lines(
    news: Sequence[NewMemberEvaluation], result: EngineResult, tz: ZoneInfo, s: Silenced
) -> list[str]:
    rows = []
    warming_shown: set[str] = set()
    for e in news:
        if e.rule in result.warming:
            if e.rule not in warming_shown:
                warming_shown.add(e.rule)
                rows.append(
                    [e.rule, _warming_text(result, e.rule), "-", "-", _held(result, e.rule)]
                )
            continue
        if any(c.holds for c in e.conditions):
            rows.append(
                [
                    e.rule,
                    e.member.label,
                    f"{e.first_seen.astimezone(tz):%Y-%m-%d %H:%M}",
                    format_usd(e.spend),
                    _alerts_column(e.conditions, result.states, s),
                ]
            )
    if not rows:
        return [f"New member rules: nothing new among {len(news)} members"]
    headers = ["New member rule", "member", "first used", "spend since", "alerts"]
    return grid(headers, rows, right={3})


def render_active(
    states: Mapping[str, AlertState],
    tz: ZoneInfo,
    *,
    labels: Mapping[str, str] | None = None,
    silenced: Silenced | None = None,
    warming: Mapping[str, str] | None = None,
) -> str:
    """Firing and pending alerts; members by name and id (``labels``: id → "name (id)"),
    silenced ones and those held by a rule warming up marked."""
    labels, s, warming = labels or {}, silenced or _never, warming or {}
    active = sorted(
        (st for st in states.values() if st.status in ("firing", "pending")),
        key=lambda st: (st.status != "firing", st.key.rule, st.key.member, st.key.condition),
    )
    if not active:
        return "Active alerts: none"
    rows = []
    for st in active:
        notes = []
        if s(st):
            notes.append("silenced")
        if st.key.rule in warming:
            notes.append("held: rule warming up")
        rows.append(
            [
                st.status.upper(),
                st.severity,
                st.key.rule,
                member_text(st.key.member, labels),
                condition_label(st.key.condition),
                st.key.period or "-",
                f"{st.since.astimezone(tz):%Y-%m-%d %H:%M}",
                ", ".join(notes),
            ]
        )
    headers = ["Active alert", "severity", "rule", "member", "condition", "period", "since"]
    return "\n".join(grid([*headers, "note"], rows, right=set()))


def render_silences(silences: Sequence[Silence], tz: ZoneInfo) -> str:
    if not silences:
        return "Silences: none"
    rows = [
        [
            str(s.id),
            s.rule,
            s.member or "*",
            f"{s.starts.astimezone(tz):%Y-%m-%d %H:%M}",
            f"{s.ends.astimezone(tz):%Y-%m-%d %H:%M}",
            s.created_by or "-",
            s.reason,
        ]
        for s in silences
    ]
    return "\n".join(
        grid(["Silence", "rule", "member", "from", "until", "by", "reason"], rows, right=set())
    )
