"""Usage comes out: per-bucket points and per-window totals of a rule's members, summed by
SQLite (whole days from the daily sums) or kept between cycles, and the per-model points of
the models export. The metrics' cost windows are `daemon.store.costs`."""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

from daemon.langdock.csv import TOKEN_FIELDS
from daemon.rules.selection import Grouped, SelectionFilter
from daemon.rules.series import Raw
from daemon.rules.usage import ModelPoint
from daemon.store.db import _dec, _dt, _ts, join_nanos
from daemon.store.rollups import DailySums, _picked, _window_sums
from daemon.store.schema import _HOURLY_TOKENS
from daemon.store.sum_cache import Sums, merged


@dataclass(frozen=True, slots=True)
class KeyModelTotal:
    api_key_id: str
    api_key_name: str
    model: str
    requests: int
    cost_usd: Decimal
    tokens: int


PairSums = dict[tuple[str, str], tuple[int, Raw]]  # (key id, model) → rows, nano-dollars
_MEMBER_COLUMN = {"api_key": "api_key_id", "model": "model", None: "'*'"}  # by → column


class UsageTotals(DailySums):
    """Reads usage back, summed in SQLite."""

    def key_model_totals(self, start: datetime, end: datetime) -> list[KeyModelTotal]:
        """Spend per (key, model) over buckets that start in [start, end)."""
        token_sum = " + ".join(f"coalesce(sum(u.{f}), 0)" for f in TOKEN_FIELDS[:2])
        rows = self._conn.execute(
            f"""SELECT u.api_key_id, coalesce(k.name, u.api_key_id), u.model,
                       sum(u.requests), sum(u.cost_nanos),
                       dec_sum(u.cost_rest) FILTER (WHERE u.cost_rest IS NOT NULL), {token_sum}
                FROM key_usage u LEFT JOIN api_keys k ON k.api_key_id = u.api_key_id
                WHERE u.bucket_start >= ? AND u.bucket_start < ?
                GROUP BY u.api_key_id, k.name, u.model""",
            (_ts(start), _ts(end)),
        )
        return [
            KeyModelTotal(key_id, name, model, int(req), join_nanos(nanos, rest), int(tokens))
            for key_id, name, model, req, nanos, rest, tokens in rows
        ]

    def member_points(
        self,
        selection: SelectionFilter,
        start: datetime,
        end: datetime,
        fresh_from: datetime | None = None,
    ) -> Grouped:
        """One selection's members, per bucket in [start, end), summed by SQLite: 10,000 keys
        x 10 models x 2 hours come back as 20,000 rows per key, not 200,000.

        With ``fresh_from`` (the running hour's start) the points before it are kept for the
        next cycle, which reads only what changed (`daemon.store.points_cache`)."""
        group = _MEMBER_COLUMN[selection.by]
        if fresh_from is None:
            return self._grouped(group, selection, start, end)

        def read(lo: int, hi: int) -> Grouped:
            return self._grouped(group, selection, _dt(lo), _dt(hi))

        return self._points.points(selection, _ts(start), _ts(end), _ts(fresh_from), read)

    def member_series(
        self, selection: SelectionFilter, member_id: str, start: datetime, end: datetime
    ) -> list[tuple[int, Raw]]:
        """One member's usage over [start, end) per stored bucket, whole summed days as one
        point at the day's start (a status page's curve: a month of one key among 10,000
        reads 30 daily rows, not 720 hours of every key)."""
        value = {"cost_usd": "cost_nanos", "requests": "requests", "tokens": "{tokens}"}
        rest = "cost_rest" if selection.metric == "cost_usd" else "NULL"
        kept, params = _selection_sql(selection)
        if selection.by is not None:
            kept.append(f"{_MEMBER_COLUMN[selection.by]} = ?")
            params.append(member_id)
        points: list[tuple[int, Raw]] = []
        for table, time, tokens, lo, hi in self._sources(start, end):
            where = " AND ".join([f"{time} >= ? AND {time} < ?", *kept])
            for at, total, extra in self._conn.execute(
                f"""SELECT {time}, sum({value[selection.metric].format(tokens=tokens)}),
                           dec_sum({rest}) FILTER (WHERE {rest} IS NOT NULL)
                    FROM {table} WHERE {where} GROUP BY 1 ORDER BY 1""",
                [lo, hi, *params],
            ):
                points.append((at, total if extra is None else total + Decimal(extra).scaleb(9)))
        return points

    def member_parts(
        self, selection: SelectionFilter, member_id: str, start: datetime, end: datetime
    ) -> Grouped:
        """A member's contributors (the models of a key, the keys of a model or scope)."""
        part = "model" if selection.by == "api_key" else "api_key_id"
        if selection.by is None:  # the workspace (or a scope): every selected row
            return self._grouped(part, selection, start, end)
        only = "api_key_id = ?" if selection.by == "api_key" else "model = ?"
        return self._grouped(part, selection, start, end, only, member_id)

    def _grouped(
        self,
        group: str,
        selection: SelectionFilter,
        start: datetime,
        end: datetime,
        condition: str = "",
        *values: object,
    ) -> Grouped:
        kept, kept_params = _selection_sql(selection)
        where = ["bucket_start >= ? AND bucket_start < ?", *([condition] if condition else [])]
        # the whole workspace hour by hour: one stored sum per hour
        table, tokens = "key_usage", _HOURLY_TOKENS
        if group == "'*'" and not kept and not condition:
            table, tokens = "key_usage_buckets", "tokens"
        value = {
            "cost_usd": "sum(cost_nanos), dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL)",
            "requests": "sum(requests), NULL",
            "tokens": f"sum({tokens}), NULL",
        }[selection.metric]
        grouped: Grouped = {}
        for member, bucket, total, rest in self._conn.execute(
            f"""SELECT {group}, bucket_start, {value} FROM {table}
                WHERE {" AND ".join(where + kept)} GROUP BY 1, 2""",
            [_ts(start), _ts(end), *values, *kept_params],
        ):
            points = grouped.get(member)
            if points is None:
                points = grouped[member] = {}
            points[bucket] = total if rest is None else total + Decimal(rest).scaleb(9)
        return grouped

    def member_totals(
        self,
        selection: SelectionFilter,
        windows: Sequence[tuple[datetime, datetime]],
        fresh_from: datetime | None = None,
    ) -> list[dict[str, Raw]]:
        """Each member's total over each window (cost in nano-dollars), in one pass; whole
        days come from the daily sums: a month of 10,000 keys without 7 million rows.

        With ``fresh_from`` (the running hour's start) each window's sums before it are kept
        for the next cycle and only moved (`daemon.store.sum_cache`)."""
        member = _MEMBER_COLUMN[selection.by]
        value = {"cost_usd": "cost_nanos", "requests": "requests", "tokens": "{tokens}"}
        rest = "cost_rest" if selection.metric == "cost_usd" else "NULL"
        kept, kept_params = _selection_sql(selection)
        if fresh_from is not None:
            columns = f"{member} AS g0, {value[selection.metric]} AS v, {rest} AS rest"
            kept_windows = [(("member", selection, i), s, e) for i, (s, e) in enumerate(windows)]
            parts = self._kept_window_parts(columns, 1, kept, kept_params, kept_windows, fresh_from)
            return [{cast(str, g): raw for g, (_, raw) in merged(*p).items()} for p in parts]
        inner, values, picks = self._windows_pass(
            windows,
            f"{member} AS member, {value[selection.metric]} AS v, {rest} AS rest,"
            " api_key_id, model",
        )
        sums, params = _window_sums(picks)
        totals: list[dict[str, Raw]] = [{} for _ in windows]
        where = "WHERE " + " AND ".join(kept) if kept else ""
        for row in self._conn.execute(
            f"SELECT member, {sums} FROM ({inner}) AS picked {where} GROUP BY member",
            [*params, *values, *kept_params],
        ):
            for index, total, extra in _picked(row, 1, len(windows)):
                totals[index][row[0]] = total if extra is None else total + Decimal(extra).scaleb(9)
        return totals

    def _ranges_sums(
        self,
        columns: str,
        groups: int,
        kept: list[str],
        kept_params: list[object],
        ranges: Sequence[tuple[int, int]],
    ) -> list[Sums]:
        """Per range [lo, hi) and group (``g0``, or ``(g0, g1)``): rows and the exact sum of
        ``v`` (and ``rest``), in one pass; whole days from the daily sums."""
        live = [(lo, hi) for lo, hi in ranges if lo < hi]
        if not live:
            return [{} for _ in ranges]
        inner, values, picks = self._windows_pass(
            [(_dt(lo), _dt(hi)) for lo, hi in live], f"{columns}, {{rows}} AS n, api_key_id, model"
        )
        names = ", ".join(f"g{i}" for i in range(groups))
        where = f"WHERE {' AND '.join(kept)}" if kept else ""
        select = ", ".join(
            f"sum(CASE WHEN {pick} THEN n END), sum(CASE WHEN {pick} THEN v END),"
            f" dec_sum(rest) FILTER (WHERE rest IS NOT NULL AND ({pick}))"
            for pick, _ in picks
        )
        params = [p for _, pick_params in picks for p in pick_params * 3]
        found: list[Sums] = [{} for _ in live]
        for row in self._conn.execute(
            f"SELECT {names}, {select} FROM ({inner}) AS picked {where} GROUP BY {names}",
            [*params, *values, *kept_params],
        ):
            group = row[0] if groups == 1 else tuple(row[:groups])
            for index in range(len(live)):
                count, total, rest = row[groups + 3 * index : groups + 3 * index + 3]
                if count:
                    found[index][group] = (
                        count,
                        total if rest is None else total + Decimal(rest).scaleb(9),
                    )
        by_range = dict(zip(live, found, strict=True))
        return [dict(by_range.get((lo, hi), {})) for lo, hi in ranges]  # never shared

    def _kept_window_parts(
        self,
        columns: str,
        groups: int,
        kept: list[str],
        kept_params: list[object],
        windows: Sequence[tuple[Hashable, datetime, datetime]],
        fresh_from: datetime,
    ) -> list[tuple[Sums, Sums]]:
        """Each (key, start, end) window's sums, those before ``fresh_from`` kept between
        cycles (`daemon.store.sum_cache`), in two parts: the kept ones (read them, never
        change them) and the rest (`SumCache.parts`). What must be summed from scratch is
        read in one pass, and the running hour once per end."""

        def compute(lo: int, hi: int) -> Sums:
            return self._ranges_sums(columns, groups, kept, kept_params, [(lo, hi)])[0]

        fresh = _ts(fresh_from)
        spans = [(key, _ts(s), _ts(e)) for key, s, e in windows]
        stale = [(key, s, e) for key, s, e in spans if self._sums.stale(key, s, e, fresh)]
        seeds = dict(
            zip(
                (key for key, _, _ in stale),
                self._ranges_sums(
                    columns,
                    groups,
                    kept,
                    kept_params,
                    [(s, self._sums.settled(s, e, fresh)) for _, s, e in stale],
                ),
                strict=True,
            )
        )
        ends = sorted({e for _, s, e in spans if s <= fresh < e})
        shared = dict(
            zip(
                ends,
                self._ranges_sums(columns, groups, kept, kept_params, [(fresh, e) for e in ends]),
                strict=True,
            )
        )
        return [
            self._sums.parts(key, s, e, fresh, compute, shared.get(e), seeds.get(key))
            for key, s, e in spans
        ]

    def sweep_kept_sums(self) -> None:
        self._sums.sweep()
        self._points.sweep()

    def model_points(self, start: datetime, end: datetime) -> list[ModelPoint]:
        rows = self._conn.execute(
            """SELECT bucket_start, model, requests, errors, response_time_ms FROM model_usage
               WHERE bucket_start >= ? AND bucket_start < ?""",
            (_ts(start), _ts(end)),
        )
        return [
            ModelPoint(_dt(s), model, req, _dec(errors), _dec(latency))
            for s, model, req, errors, latency in rows
        ]


def _selection_sql(selection: SelectionFilter) -> tuple[list[str], list[object]]:
    """The WHERE conditions (and their parameters) that keep a selection's keys and models."""
    where: list[str] = []
    params: list[object] = []
    for column, kept in (("api_key_id", selection.keys), ("model", selection.models)):
        if kept is not None:
            where.append(f"{column} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(kept)))
    return where, params
