"""Durations as written in config files: ``30s``, ``5m``, ``4h``, ``14d``, ``2w``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")


def parse_duration(text: str) -> timedelta:
    """Parse ``"1h30m"``-style text; raise ``ValueError`` with the accepted forms."""
    cleaned = text.strip().lower()
    if cleaned == "0":
        return timedelta(0)
    if not _WHOLE.match(cleaned):
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w,"
            " e.g. 30s, 5m, 4h, 14d"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(cleaned))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest text that :func:`parse_duration` reads back as ``delta``."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
