"""Named spend windows (today, month, 24h, 7d) as ranges, for the spend tables of the command
line (`daemon.cli.spend`) and the `langdock_cost_usd` metric.

The rule results (`render_evaluations`, `render_active`, ...) live in `daemon.rule_report` and
the number formatting in `daemon.formatting`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.formatting import format_amount, format_metric, format_score
from daemon.rule_report import (
    SHOWN_PER_RULE,
    render_active,
    render_evaluations,
    render_outbox,
    render_silences,
    shown_budget_members,
)
from daemon.rules.windows import calendar_period

__all__ = [
    "SHOWN_PER_RULE",
    "WINDOWS",
    "format_amount",
    "format_metric",
    "format_score",
    "render_active",
    "render_evaluations",
    "render_outbox",
    "render_silences",
    "shown_budget_members",
    "window_ranges",
]

# The columns of the spend tables, in order.
WINDOWS: tuple[str, ...] = ("today", "month", "24h")


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
