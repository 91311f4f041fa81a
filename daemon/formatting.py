"""Numbers and tables for people: amounts in a rule's unit, anomaly metrics and scores, and
plain-text grids (`once`, `status`, `demo`, Slack messages)."""

from __future__ import annotations

import math
from decimal import Decimal

from daemon.money import format_percent, format_usd

_HALF_CENT = Decimal("0.005")
_HALF_TENTH_PERCENT = Decimal("0.0005")
_HALF = Decimal("0.5")


def format_amount(amount: Decimal, unit: str) -> str:
    if unit == "usd":
        return format_usd(amount)
    return f"{amount.quantize(Decimal(1)):,}"


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


def shows_as_zero(value: Decimal | None, metric: str) -> bool:
    """Whether `format_metric` shows ``value`` as zero ($0.00, 0.0%, 0 ms, 0)."""
    if value is None:
        return False
    if metric == "cost_usd":
        return abs(value) < _HALF_CENT
    if metric == "error_rate":
        return abs(value) < _HALF_TENTH_PERCENT
    return abs(value) < _HALF


def format_score(score: float | None) -> str:
    """A robust z-score: ``+4.2``, ``∞`` / ``-∞`` (no spread at all), ``-`` (none)."""
    if score is None:
        return "-"
    if math.isinf(score):
        return "∞" if score > 0 else "-∞"
    return f"{score:+.1f}" if abs(score) >= 0.05 else "+0.0"  # never "-0.0"


def format_sensitivity(sensitivity: float, direction: str) -> str:
    """The score an anomaly rule fires at: ``+4``, ``-4`` or ``±4``."""
    sign = {"up": "+", "down": "-"}.get(direction, "±")
    return f"{sign}{sensitivity:g}"


def grid(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; ``right`` holds the right-aligned ones."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
