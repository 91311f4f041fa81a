"""The daily sums of key usage, and the one pass over hours and days that window totals read.

key_usage_daily holds the sums of key_usage per local day (in the zone meta "rollup_tz", chosen
when the store opens: `db.StoreBase._use_zone`) for every day before meta "rolled_until". A
window reads its whole summed days from there and its edges from the hourly buckets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from daemon.rules.windows import calendar_period
from daemon.store.db import StoreBase, _dt, _ts
from daemon.store.schema import _HOURLY_TOKENS


class DailySums(StoreBase):
    """Key usage summed per local day, and where a window's rows come from."""

    def _day_start(self, bucket: int) -> int:
        day = self._days.get(bucket)
        if day is None:
            day = self._days[bucket] = _ts(calendar_period("day", _dt(bucket), self.tz).start)
        return day

    def _rolled_until(self) -> int:
        return int(self._meta("rolled_until") or 0) if self._rollups else 0

    def refresh_rollups(self, now: datetime) -> int:
        """Sum every finished local day not summed yet; return how many days were summed."""
        if not self._rollups:
            return 0
        today = _ts(calendar_period("day", now, self.tz).start)
        since = self._rolled_until()
        if since >= today:
            return 0
        buckets = self._conn.execute(
            "SELECT DISTINCT bucket_start FROM key_usage"
            " WHERE bucket_start >= ? AND bucket_start < ?",
            (since, today),
        )
        days = sorted({self._day_start(bucket) for (bucket,) in buckets})
        with self._transaction():
            for day in days:
                end = _ts(calendar_period("day", _dt(day), self.tz).end)
                self._conn.execute(
                    f"""INSERT INTO key_usage_daily
                        SELECT ?, api_key_id, model, sum(requests), sum(cost_nanos),
                               dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL),
                               sum({_HOURLY_TOKENS}), count(*)
                        FROM key_usage WHERE bucket_start >= ? AND bucket_start < ?
                        GROUP BY api_key_id, model""",
                    (day, day, end),
                )
            self._set_meta("rolled_until", str(today))
        return len(days)

    def _sources(self, start: datetime, end: datetime) -> list[tuple[str, str, str, int, int]]:
        """[start, end) as (table, time column, tokens, from, to): the summed whole days from
        the daily table, the rest from the hourly buckets."""
        s, e = _ts(start), _ts(end)
        first = calendar_period("day", start, self.tz)
        d0 = _ts(first.start) if _ts(first.start) == s else _ts(first.end)
        dn = min(_ts(calendar_period("day", end, self.tz).start), self._rolled_until())
        hourly = ("key_usage", "bucket_start", _HOURLY_TOKENS)
        if d0 >= dn:
            return [(*hourly, s, e)]
        parts = [(*hourly, s, d0), ("key_usage_daily", "day_start", "tokens", d0, dn)]
        parts.append((*hourly, dn, e))
        return [p for p in parts if p[3] < p[4]]

    def _windows_pass(
        self, windows: Sequence[tuple[datetime, datetime]], columns: str
    ) -> tuple[str, list[object], list[tuple[str, list[object]]]]:
        """One pass over the rows several windows need: the merged hourly edges and daily
        sums as a UNION ALL (``columns`` may use ``{tokens}``), plus for each window the
        condition (and its parameters) that picks its rows from that pass. ``{rows}`` is how
        many stored hourly rows a row stands for (a daily sum stands for several)."""
        sources = [self._sources(start, end) for start, end in windows]
        parts = [
            f"SELECT 0 AS kind, bucket_start AS t,"
            f" {columns.format(tokens=_HOURLY_TOKENS, rows=1)} FROM key_usage WHERE 1 = 0"
        ]
        values: list[object] = []
        for table, time, tokens, rows in (
            ("key_usage", "bucket_start", _HOURLY_TOKENS, "1"),
            ("key_usage_daily", "day_start", "tokens", "rows"),
        ):
            spans = _merge([(lo, hi) for srcs in sources for t, _, _, lo, hi in srcs if t == table])
            for lo, hi in spans:
                parts.append(
                    f"SELECT {int(table != 'key_usage')} AS kind, {time} AS t,"
                    f" {columns.format(tokens=tokens, rows=rows)} FROM {table}"
                    f" WHERE {time} >= ? AND {time} < ?"
                )
                values += [lo, hi]
        picks: list[tuple[str, list[object]]] = []
        for srcs in sources:
            terms = [f"(kind = {int(t != 'key_usage')} AND t >= ? AND t < ?)" for t, *_ in srcs]
            picks.append(
                (" OR ".join(terms) or "1 = 0", [v for *_, lo, hi in srcs for v in (lo, hi)])
            )
        return " UNION ALL ".join(parts), values, picks


def _window_sums(picks: list[tuple[str, list[object]]]) -> tuple[str, list[object]]:
    """Per window of a `_windows_pass`: how many rows it picks, the sum of their ``v`` and
    the exact sum of their ``rest`` (SQL, and its parameters)."""
    sql = ", ".join(
        f"count(CASE WHEN {pick} THEN 1 END), sum(CASE WHEN {pick} THEN v END),"
        f" dec_sum(rest) FILTER (WHERE rest IS NOT NULL AND ({pick}))"
        for pick, _ in picks
    )
    return sql, [p for _, pick_params in picks for p in pick_params * 3]


def _picked(row: Sequence[Any], first: int, windows: int) -> Iterator[tuple[int, Any, Any]]:
    """(window index, sum, rest) of the windows that picked rows, from a `_window_sums` row
    whose sums start at column ``first``."""
    for index in range(windows):
        count, total, rest = row[first + 3 * index : first + 3 * index + 3]
        if count:
            yield index, total, rest


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [lo, hi) spans, merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
