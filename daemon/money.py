"""Showing money. Amounts stay exact `Decimal` everywhere; only display rounds (to the cent)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

_CENT = Decimal("0.01")


def format_usd(amount: Decimal) -> str:
    """``Decimal("1234.565")`` → ``"$1,234.57"``; negative amounts keep their sign in front."""
    rounded = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def format_percent(ratio: Decimal) -> str:
    """``Decimal("0.8125")`` → ``"81.3%"``."""
    return f"{(ratio * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"
