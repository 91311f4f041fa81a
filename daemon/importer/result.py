"""What an import produced: the priced (bucket, key, model) groups and the file's span, with
the views the store and ``--reconcile`` read (per-group rows, cost per key and local day, the
local days the file covers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from daemon.rules.windows import calendar_period

_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)  # scaleb without rounding


@dataclass
class ImportResult:
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, with line numbers
    first: datetime | None = None
    last: datetime | None = None
    names: dict[str, str] = field(default_factory=dict)
    # a polars DataFrame, one row per (bucket, key, model): the bucket's start as a UTC
    # quarter hour (unix seconds / 900), the key and model as indices into ``keys`` and
    # ``models``; calls, input and output tokens, and the cost in units of 10**-scale USD (an
    # exact integer; its decimal digits as text past 128 bits)
    groups: Any = None
    keys: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    scale: int = 6

    @property
    def group_count(self) -> int:
        return 0 if self.groups is None else int(self.groups.height)

    def group_rows(self) -> Iterator[tuple[int, str, str, int, int, int, Decimal]]:
        """(bucket start, key, model, calls, input, output, cost in USD) per group."""
        if self.groups is None:
            return
        columns = ("bucket", "key", "model", "calls", "input", "output", "units")
        lists = [self.groups.get_column(name).to_list() for name in columns]
        keys, models, scale = self.keys, self.models, -self.scale
        for quarter, key, model, calls, inp, out, units in zip(*lists, strict=True):
            cost = Decimal(units).scaleb(scale, _EXACT)
            yield quarter * 900, keys[key], models[model], calls, inp, out, cost

    def by_bucket(self) -> Iterator[tuple[int, list[tuple[str, str, int, int, int, Decimal]]]]:
        """(bucket start, [(key, model, calls, input, output, cost in USD), ...]) per bucket,
        oldest first: one bucket's rows in Python at a time, not all the groups'."""
        if self.groups is None:
            return
        order = self.groups.get_column("bucket").arg_sort()  # not a sorted copy of the groups
        runs = self.groups.get_column("bucket").gather(order).rle().struct.unnest()
        offset = 0
        for length, quarter in runs.iter_rows():
            part = self.groups[order.slice(offset, length)]
            offset += length
            columns = ("key", "model", "calls", "input", "output", "units")
            lists = [part.get_column(name).to_list() for name in columns]
            keys, models, scale = self.keys, self.models, -self.scale
            yield (
                quarter * 900,
                [
                    (
                        keys[key],
                        models[model],
                        calls,
                        inp,
                        out,
                        Decimal(units).scaleb(scale, _EXACT),
                    )
                    for key, model, calls, inp, out, units in zip(*lists, strict=True)
                ],
            )

    @property
    def buckets(self) -> dict[tuple[datetime, str, str], tuple[Decimal, int, int, int]]:
        """(bucket start, key id, model) → (cost, calls, input, output)."""
        return {
            (datetime.fromtimestamp(start, UTC), key, model): (cost, calls, inp, out)
            for start, key, model, calls, inp, out, cost in self.group_rows()
        }

    def cost_by_key_day(self, tz: ZoneInfo) -> dict[tuple[str, str], Decimal]:
        totals: dict[tuple[str, str], Decimal] = {}
        days: dict[int, str] = {}
        for start, key_id, _model, _calls, _in, _out, cost in self.group_rows():
            day = days.get(start)
            if day is None:
                instant = datetime.fromtimestamp(start, UTC)
                day = days[start] = calendar_period("day", instant, tz).id
            totals[(key_id, day)] = totals.get((key_id, day), Decimal(0)) + cost
        return totals


def day_ranges(
    first: datetime, last: datetime, tz: ZoneInfo
) -> list[tuple[str, datetime, datetime]]:
    """The local days the file spans, as (id, start, end)."""
    days = []
    period = calendar_period("day", first, tz)
    while period.start <= last:
        days.append((period.id, period.start, period.end))
        period = calendar_period("day", period.end + timedelta(seconds=1), tz)
    return days
