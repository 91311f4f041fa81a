"""Usage comes out: per-bucket points and per-window totals of a rule's members, summed by
SQLite (whole days from the daily sums), the costs of several windows in one pass, the top
keys, and the per-model points of the models export."""

from __future__ import annotations

import json
from collections.abc import Collection, Hashable, Sequence
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

    _cost_keys: frozenset[str] = frozenset()  # the keys whose cost windows are kept by model

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

    def cost_windows(
        self,
        ranges: dict[str, tuple[datetime, datetime]],
        within: datetime,
        top_n: int,
        fresh_from: datetime,
    ) -> tuple[list[str], dict[str, list[tuple[str | None, str, Decimal]]]]:
        """`top_keys` (by month spend, among the keys seen since ``within``) and their
        `window_costs`, from sums kept between cycles: per key (the month, and who was seen),
        per model (each window), and per key and model for twice the top keys (chosen again
        when a key from beyond them enters the top). 100,000 pairs are neither kept nor read
        back (docs/PERFORMANCE.md, "Steady state")."""
        month_start, month_end = ranges["month"]
        spans = {**ranges, " seen": (min(month_start, within), month_end)}
        # windows with the same range share one kept entry (the "seen" range is often one)
        first: dict[tuple[datetime, datetime], str] = {}
        for name, span in spans.items():
            first.setdefault(span, name)
        month, seen = self._kept_window_parts(
            "api_key_id AS g0, cost_nanos AS v, cost_rest AS rest",
            1,
            [],
            [],
            [(("key costs", first[span]), *span) for span in (spans["month"], spans[" seen"])],
            fresh_from,
        )
        spent: dict[Hashable, Raw] = {}
        for part in seen:
            spent.update((key_id, 0) for key_id in part)
        for part in month:
            for key_id, (_, raw) in part.items():
                spent[key_id] += raw
        ranking = cast(list[str], sorted(spent, key=lambda k: (-spent[k], k)))
        top = ranking[:top_n]
        if not self._cost_keys.issuperset(top):  # the pairs kept: twice the top keys
            self._cost_keys = frozenset(ranking[: 2 * top_n])
        chosen = self._cost_keys
        pair_parts = self._kept_window_parts(
            "api_key_id AS g0, model AS g1, cost_nanos AS v, cost_rest AS rest",
            2,
            ["api_key_id IN (SELECT value FROM json_each(?))"],
            [json.dumps(sorted(chosen))],
            [(("costs", chosen, first[span]), *span) for span in ranges.values()],
            fresh_from,
        )
        model_parts = self._kept_window_parts(
            "model AS g0, cost_nanos AS v, cost_rest AS rest",
            1,
            [],
            [],
            [(("model costs", first[span]), *span) for span in ranges.values()],
            fresh_from,
        )
        # each window in two parts (kept, the rest), not added up: the top keys' pairs are
        # looked up, and the other keys' are what is left of the per-model sums
        costs: dict[str, list[tuple[str | None, str, Decimal]]] = {}
        for name, model_sums, pair_sums in zip(ranges, model_parts, pair_parts, strict=True):
            kept, rest = cast(tuple[PairSums, PairSums], pair_sums)
            other = cast(dict[str, tuple[int, Raw]], merged(*model_sums))  # every key's, so far
            rows: list[tuple[str | None, str, Decimal]] = []
            for key_id in sorted(top):
                for model in sorted(other):
                    count, raw = kept.get((key_id, model), (0, 0))
                    more_count, more = rest.get((key_id, model), (0, 0))
                    if count + more_count:
                        rows.append((key_id, model, Decimal(raw + more).scaleb(-9)))
                        left, left_raw = other[model]
                        other[model] = (left - count - more_count, left_raw - raw - more)
            rows += [
                (None, model, Decimal(raw).scaleb(-9))
                for model, (count, raw) in sorted(other.items())
                if count
            ]
            costs[name] = rows
        return top, costs

    def top_keys(self, start: datetime, end: datetime, within: datetime, limit: int) -> list[str]:
        """The ``limit`` keys with the most spend in [start, end) among the keys with usage
        in [within, end), ties (and keys without spend there) by id."""
        inner, values, ((spent, spent_params), (seen, seen_params)) = self._windows_pass(
            [(start, end), (min(start, within), end)], "api_key_id, cost_nanos"
        )
        rows = self._conn.execute(
            f"""SELECT api_key_id, coalesce(sum(CASE WHEN {spent} THEN cost_nanos END), 0)
                FROM ({inner}) AS picked WHERE {seen} GROUP BY api_key_id
                ORDER BY 2 DESC, api_key_id LIMIT ?""",
            [*spent_params, *values, *seen_params, limit],
        )
        return [key_id for key_id, _ in rows]

    def window_costs(
        self, ranges: dict[str, tuple[datetime, datetime]], keep: Collection[str] | None = None
    ) -> dict[str, list[tuple[str | None, str, Decimal]]]:
        """Cost per (key id, model) for several windows, in one pass.

        With ``keep``, the keys not in it are summed per model under the key id None (the
        metrics' "other" series): 10,000 keys x 10 models need not come back to Python.
        """
        names = list(ranges)
        inner, values, picks = self._windows_pass(
            list(ranges.values()), "api_key_id, model, cost_nanos AS v, cost_rest AS rest"
        )
        key_column, params = "api_key_id", list[object]()
        if keep is not None:
            key_column = (
                "CASE WHEN api_key_id IN (SELECT value FROM json_each(?)) THEN api_key_id END"
            )
            params.append(json.dumps(sorted(keep)))
        sums, sum_params = _window_sums(picks)
        params += sum_params
        result: dict[str, list[tuple[str | None, str, Decimal]]] = {name: [] for name in names}
        for row in self._conn.execute(
            f"SELECT {key_column} AS kept, model, {sums}"
            f" FROM ({inner}) AS picked GROUP BY kept, model",
            [*params, *values],
        ):
            for index, nanos, rest in _picked(row, 2, len(names)):
                result[names[index]].append((row[0], row[1], join_nanos(nanos, rest)))
        return result

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
