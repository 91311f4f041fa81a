"""Hourly series and their exact arithmetic: values per bucket start (unix seconds) with
prefix sums, so any range total is two binary searches and one subtraction.

Cost is kept in nano-dollars (`NANOS`): an `int`, or an exact `Decimal` for finer amounts, so
sums are exact; totals come back as `Decimal` in the metric's own unit.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

NANOS = 9  # cost values are kept in nano-dollars (int, or an exact Decimal for finer amounts)
Raw = int | Decimal  # a value in a series' own units (see `Series.scale`)


def ts(instant: datetime) -> int:
    return int(instant.timestamp())


def to_nanos(amount: Decimal) -> Raw:
    """Dollars → nano-dollars: an `int` unless the amount is finer than a nano-dollar."""
    nanos = amount.scaleb(NANOS)
    whole = int(nanos)
    return whole if whole == nanos else nanos


def _scaled(raw: Raw, scale: int) -> Decimal:
    return Decimal(raw).scaleb(-scale) if scale else Decimal(raw)


class Series:
    """Values per bucket start (unix seconds) with prefix sums for fast range totals.

    Values are in units of ``10**-scale`` (cost: nano-dollars as integers, so sums are exact
    integer additions); totals come back as `Decimal` in the metric's own unit.
    """

    __slots__ = ("_prefix", "scale", "starts", "values")

    def __init__(self, points: dict[int, Raw], scale: int = 0) -> None:
        self.scale = scale
        self.starts = sorted(points)
        self.values = [points[s] for s in self.starts]
        prefix: list[Raw] = [0]
        for value in self.values:
            prefix.append(prefix[-1] + value)
        self._prefix = prefix

    @classmethod
    def one(cls, start: int, value: Raw, scale: int = 0) -> Series:
        """``Series({start: value}, scale)``, made directly: a budget window's 10,000
        members are one total each."""
        series = cls.__new__(cls)
        series.scale, series.starts, series.values = scale, [start], [value]
        series._prefix = [0, value]
        return series

    def total(self, start: datetime, end: datetime) -> Decimal:
        """Sum over buckets that start in [start, end)."""
        return _scaled(self.raw_total(ts(start), ts(end)), self.scale)

    def has_points(self, start: int, end: int) -> bool:
        """Whether any bucket starts in [start, end)."""
        return bisect_left(self.starts, end) > bisect_left(self.starts, start)

    def raw_total(self, start: int, end: int) -> Raw:
        """The sum over buckets that start in [start, end) (unix seconds), in the series' own
        units (no `Decimal` made)."""
        lo, hi = bisect_left(self.starts, start), bisect_left(self.starts, end)
        return self._prefix[hi] - self._prefix[lo] if hi > lo else 0


def merge(series_points: Iterable[Mapping[int, Raw]], scale: int = 0) -> Series:
    merged: dict[int, Raw] = {}
    for points in series_points:
        for start, value in points.items():
            merged[start] = merged.get(start, 0) + value
    return Series(merged, scale)
