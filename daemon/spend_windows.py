"""The named spend windows (today, month, 24h, 7d) as ranges ending at one instant: the
columns of the spend tables (`daemon.cli.spend`) and the ``window`` label of
`langdock_cost_usd` (loaded by the cycle, `daemon.published`). Pure: no store, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.rules.windows import calendar_period

__all__ = ["COST_WINDOWS", "WINDOWS", "window_ranges"]

WINDOWS: tuple[str, ...] = ("today", "month", "24h")  # the spend tables' columns, in order
COST_WINDOWS: tuple[str, ...] = ("today", "month", "24h", "7d")  # langdock_cost_usd's windows


def window_ranges(
    now: datetime, tz: ZoneInfo, windows: Sequence[str] = WINDOWS
) -> dict[str, tuple[datetime, datetime]]:
    """Named spend windows as [start, end) ranges ending at ``now``; calendar ones start at
    the local midnight (of the day, of the month's first day) in ``tz``."""
    starts = {
        "today": lambda: calendar_period("day", now, tz).start,
        "month": lambda: calendar_period("month", now, tz).start,
        "24h": lambda: now - timedelta(hours=24),
        "7d": lambda: now - timedelta(days=7),
    }
    return {window: (starts[window](), now) for window in windows}
