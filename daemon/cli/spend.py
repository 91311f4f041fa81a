"""The spend tables `once`, `status` and `demo` print: per key and per model, today / month /
24h (`daemon.spend_windows`, whose ranges also give /metrics its `langdock_cost_usd`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from daemon.money import format_usd
from daemon.spend_windows import WINDOWS, window_ranges
from daemon.store import Store


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


def spend_report(store: Store, now: datetime, tz: ZoneInfo) -> SpendReport:
    keys: dict[str, SpendRow] = {}
    models: dict[str, SpendRow] = {}
    total = SpendRow("TOTAL")
    for window, (start, end) in window_ranges(now, tz, WINDOWS).items():
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
