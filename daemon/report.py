"""Named spend windows (today, month, 24h, 7d) as ranges, for the spend tables of the command
line (`daemon.cli.spend`) and the `langdock_cost_usd` metric.

The rule tables of the command line are `daemon.cli.rules_table` and `daemon.cli.outbox_table`;
the number formatting is `daemon.formatting`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.rules.windows import calendar_period

__all__ = ["WINDOWS", "window_ranges"]

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
