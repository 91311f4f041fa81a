"""Spend tables for `once`, `status` and `demo`: per key and per model, today / month / 24h."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from daemon.money import format_percent, format_usd
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, BudgetTable, Condition
from daemon.rules.engine import EngineResult
from daemon.rules.lifecycle import AlertState
from daemon.rules.new_member import NewMemberEvaluation
from daemon.rules.windows import calendar_period
from daemon.store import Silence, Store

# Column title → how to find its range at `now`.
WINDOWS: tuple[str, ...] = ("today", "month", "24h")


@dataclass
class SpendRow:
    label: str
    spend: dict[str, Decimal] = field(default_factory=dict)
    requests_today: int = 0


@dataclass
class SpendReport:
    now: datetime
    zone: str
    keys: list[SpendRow]
    models: list[SpendRow]
    total: SpendRow


def window_ranges(
    now: datetime, tz: ZoneInfo, windows: Sequence[str] = WINDOWS
) -> dict[str, tuple[datetime, datetime]]:
    """Named spend windows (today, month, 24h, 7d) as [start, end) ranges ending at ``now``;
    the tables and the `langdock_cost_usd` metric both use them."""
    starts = {
        "today": lambda: calendar_period("day", now, tz).start,
        "month": lambda: calendar_period("month", now, tz).start,
        "24h": lambda: now - timedelta(hours=24),
        "7d": lambda: now - timedelta(days=7),
    }
    return {window: (starts[window](), now) for window in windows}


def spend_report(store: Store, now: datetime, tz: ZoneInfo) -> SpendReport:
    keys: dict[str, SpendRow] = {}
    models: dict[str, SpendRow] = {}
    total = SpendRow("TOTAL")
    for window, (start, end) in window_ranges(now, tz).items():
        for row in store.key_model_totals(start, end):
            key = keys.setdefault(
                row.api_key_id, SpendRow(f"{row.api_key_name} ({row.api_key_id})")
            )
            model = models.setdefault(row.model or "(unknown)", SpendRow(row.model or "(unknown)"))
            for target in (key, model, total):
                target.spend[window] = target.spend.get(window, Decimal(0)) + row.cost_usd
                if window == "today":
                    target.requests_today += row.requests

    def order(rows: dict[str, SpendRow]) -> list[SpendRow]:
        return sorted(rows.values(), key=lambda r: (-r.spend.get("month", Decimal(0)), r.label))

    return SpendReport(now, tz.key, order(keys), order(models), total)


def render_report(report: SpendReport) -> str:
    local = report.now.astimezone(ZoneInfo(report.zone))
    lines = [f"Spend at {local:%Y-%m-%d %H:%M %Z} ({report.zone})", ""]
    lines += _table("API key", report.keys, report.total)
    lines.append("")
    lines += _table("Model", report.models, report.total)
    return "\n".join(lines)


def _table(title: str, rows: Sequence[SpendRow], total: SpendRow) -> list[str]:
    if not rows:
        return [f"{title}: no usage stored yet"]
    headers = [title, "requests today", *WINDOWS]
    body = [
        [
            row.label,
            f"{row.requests_today:,}",
            *(format_usd(row.spend.get(w, Decimal(0))) for w in WINDOWS),
        ]
        for row in [*rows, total]
    ]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    rule = "  ".join("-" * w for w in widths)
    return [fmt(headers), rule, *(fmt(r) for r in body[:-1]), rule, fmt(body[-1])]


# ------------------------------------------------------------------------------ rule results


def format_amount(amount: Decimal, unit: str) -> str:
    if unit == "usd":
        return format_usd(amount)
    return f"{amount.quantize(Decimal(1)):,}"


def _alerts_column(conditions: Sequence[Condition], states: dict[str, AlertState]) -> str:
    parts = []
    for condition in conditions:
        state = states.get(condition.key.id)
        if state is None or state.status == "inactive":
            continue
        name = condition.key.condition
        label = f"{name}%" if name[0].isdigit() else name
        parts.append(
            f"{label} {state.status.upper() if state.status == 'firing' else state.status}"
        )
    return ", ".join(parts) or "ok"


def _budget_row(b: BudgetEvaluation, result: EngineResult, tz: ZoneInfo) -> list[str]:
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
        _alerts_column(b.conditions, result.states),
    ]


SHOWN_PER_RULE = 20


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


def render_evaluations(result: EngineResult, tz: ZoneInfo) -> str:
    # budget members come from their tables, capped per rule; the rest are few
    evaluations = [e for e in result.evaluations if not isinstance(e, BudgetEvaluation)]
    anomalies = [e for e in evaluations if isinstance(e, AnomalyEvaluation)]
    lines: list[str] = []
    budget_rows = []
    for table in result.budget_tables:
        shown = shown_budget_members(table)
        budget_rows += [_budget_row(b, result, tz) for b in shown]
        if len(shown) < len(table):
            more = f"... {len(table) - len(shown):,} more members below these"
            budget_rows.append([table.rule, more, "", "", "", "", "", ""])
    if budget_rows:
        rows = budget_rows
        lines += _grid(
            ["Budget rule", "member", "period", "spent", "limit", "used", "forecast", "alerts"],
            rows,
            right={3, 4, 5},
        )
    if anomalies:
        if lines:
            lines.append("")
        rows = []
        for a in anomalies:
            observed = format_metric(a.observed, a.metric)
            expected = format_metric(a.expected, a.metric)
            score = "-" if a.score is None else f"{a.score:+.1f}"
            local = a.window.start.astimezone(tz)
            baseline = a.note or f"{a.points} pts, {a.seasonality}"
            rows.append(
                [
                    a.rule,
                    a.member.label,
                    a.metric,
                    f"{local:%m-%d %H:%M}",
                    observed,
                    expected,
                    score,
                    baseline,
                    _alerts_column(a.conditions, result.states),
                ]
            )
        lines += _grid(
            [
                "Anomaly rule",
                "member",
                "metric",
                "window",
                "observed",
                "expected",
                "score",
                "baseline",
                "alerts",
            ],
            rows,
            right={4, 5, 6},
        )
    news = [e for e in evaluations if isinstance(e, NewMemberEvaluation)]
    fresh = [e for e in news if any(c.holds for c in e.conditions)]
    if news:
        if lines:
            lines.append("")
        rows = [
            [
                e.rule,
                e.member.label,
                f"{e.first_seen.astimezone(tz):%Y-%m-%d %H:%M}",
                format_usd(e.spend),
                _alerts_column(e.conditions, result.states),
            ]
            for e in fresh
        ]
        lines += (
            _grid(
                ["New member rule", "member", "first used", "spend since", "alerts"],
                rows,
                right={3},
            )
            if rows
            else [f"New member rules: nothing new among {len(news)} members"]
        )
    return "\n".join(lines) if lines else "Rules: nothing to evaluate yet (no usage in scope)"


def render_active(states: dict[str, AlertState], tz: ZoneInfo) -> str:
    """Firing and pending alerts as the daemon last stored them."""
    active = sorted(
        (s for s in states.values() if s.status in ("firing", "pending")),
        key=lambda s: (s.status != "firing", s.key.rule, s.key.member, s.key.condition),
    )
    if not active:
        return "Active alerts: none"
    rows = [
        [
            s.status.upper(),
            s.severity,
            s.key.rule,
            s.key.member,
            s.key.condition,
            s.key.period or "-",
            f"{s.since.astimezone(tz):%Y-%m-%d %H:%M}",
        ]
        for s in active
    ]
    return "\n".join(
        _grid(
            ["Active alert", "severity", "rule", "member", "condition", "period", "since"],
            rows,
            right=set(),
        )
    )


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
            s.reason,
        ]
        for s in silences
    ]
    return "\n".join(
        _grid(["Silence", "rule", "member", "from", "until", "reason"], rows, right=set())
    )


def format_metric(value: Decimal | None, metric: str) -> str:
    """An anomaly metric for people: money, percent, milliseconds or a count."""
    if value is None:
        return "-"
    if metric == "cost_usd":
        return format_usd(value)
    if metric == "error_rate":
        return format_percent(value)
    if metric == "response_time_ms":
        return f"{value.quantize(Decimal(1)):,} ms"
    return f"{value.quantize(Decimal(1)):,}"


def _grid(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
