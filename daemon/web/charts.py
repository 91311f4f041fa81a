"""The status page's charts, drawn server-side as SVG (pure; no script, nothing fetched).

Every chart is a `Markup` string whose only text is numbers and dates made here, escaped all
the same. Values arrive exact (`Decimal`) and become floats only as coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from daemon.formatting import format_amount

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 28
Point = tuple[datetime, Decimal]  # a bucket's start and its value


class _Frame:
    """Maps (instant, value) onto the plot area."""

    def __init__(self, start: datetime, end: datetime, top: Decimal) -> None:
        self.t0, self.t1 = start.timestamp(), max(end.timestamp(), start.timestamp() + 1)
        self.top = float(top) or 1.0

    def x(self, instant: datetime) -> float:
        share = (instant.timestamp() - self.t0) / (self.t1 - self.t0)
        return round(LEFT + min(max(share, 0.0), 1.0) * (WIDTH - LEFT - RIGHT), 1)

    def y(self, value: Decimal | float) -> float:
        share = float(value) / self.top
        return round(TOP + (1 - min(max(share, 0.0), 1.0)) * (HEIGHT - TOP - BOTTOM), 1)


def _svg(title: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _axes(frame: _Frame, start: datetime, end: datetime, unit: str, tz: ZoneInfo) -> list[str]:
    bottom = HEIGHT - BOTTOM
    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>',
    ]
    for share in (0.0, 0.5, 1.0):
        value = Decimal(str(frame.top * share))
        y = frame.y(value)
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
            f"{escape(format_amount(value, unit))}</text>"
        )
    for instant, anchor in ((start, "start"), (end, "end")):
        label = instant.astimezone(tz).strftime("%d %b %H:%M")
        parts.append(
            f'<text class="tick" x="{frame.x(instant)}" y="{HEIGHT - 8}"'
            f' text-anchor="{anchor}">{escape(label)}</text>'
        )
    return parts


def cumulative_chart(
    points: Sequence[Point],
    start: datetime,
    now: datetime,
    end: datetime,
    limit: Decimal,
    forecast: Decimal | None,
    unit: str,
    tz: ZoneInfo,
) -> Markup:
    """The window's cumulative spend (a step line) up to ``now``, the forecast as a dashed
    line from ``now`` to the window's ``end``, and the limit as a horizontal line."""
    total = Decimal(0)
    steps: list[tuple[datetime, Decimal]] = [(start, total)]
    for instant, value in sorted(points):
        steps.append((instant, total))
        total += value
        steps.append((instant, total))
    steps.append((now, total))
    top = max(limit, forecast or 0, total) * Decimal("1.1")
    frame = _Frame(start, end, top)
    parts = _axes(frame, start, end, unit, tz)
    line = " ".join(f"{frame.x(t)},{frame.y(v)}" for t, v in steps)
    parts.append(f'<polyline class="spend" points="{line}"/>')
    y_limit = frame.y(limit)
    parts.append(
        f'<line class="limit" x1="{LEFT}" y1="{y_limit}" x2="{WIDTH - RIGHT}" y2="{y_limit}"/>'
        f'<text class="limit-label" x="{WIDTH - RIGHT - 4}" y="{y_limit - 4}" text-anchor="end">'
        f"limit {escape(format_amount(limit, unit))}</text>"
    )
    if forecast is not None and end > now:
        parts.append(
            f'<line class="forecast" x1="{frame.x(now)}" y1="{frame.y(total)}"'
            f' x2="{frame.x(end)}" y2="{frame.y(forecast)}"/>'
            f'<text class="forecast-label" x="{frame.x(end) - 4}" y="{frame.y(forecast) + 14}"'
            f' text-anchor="end">forecast {escape(format_amount(forecast, unit))}</text>'
        )
    return _svg(f"Cumulative {unit} with limit and forecast", parts)


def hourly_chart(
    points: Sequence[Point], start: datetime, end: datetime, unit: str, tz: ZoneInfo
) -> Markup:
    """One bar per stored bucket in [start, end) (an hour; a day not yet refined shows as
    one bar at its start)."""
    top = max((value for _, value in points), default=Decimal(0)) * Decimal("1.1")
    frame = _Frame(start, end, top or Decimal(1))
    parts = _axes(frame, start, end, unit, tz)
    hours = max((end - start).total_seconds() / 3600, 1)
    width = max((WIDTH - LEFT - RIGHT) / hours - 1, 1)
    base = HEIGHT - BOTTOM
    for instant, value in sorted(points):
        x, y = frame.x(instant), frame.y(value)
        bar = min(width, WIDTH - RIGHT - x)  # the running hour ends at the plot's edge
        parts.append(
            f'<rect class="hour" x="{x}" y="{y}" width="{bar:.1f}" height="{round(base - y, 1)}"/>'
        )
    return _svg(f"{unit} per hour", parts)
