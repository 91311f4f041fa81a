"""The metrics' cost windows: the top keys by month spend, their cost per model in each
window, and the other keys' per model, from sums kept between cycles (`cost_windows`) or
read in SQL in one pass (`top_keys`, `window_costs`: the reference the kept path is held
to, tests/store/test_cost_windows.py)."""

from __future__ import annotations

import json
from collections.abc import Collection, Hashable
from datetime import datetime
from decimal import Decimal
from typing import cast

from daemon.rules.series import Raw
from daemon.store.db import join_nanos
from daemon.store.rollups import _picked, _window_sums
from daemon.store.sum_cache import merged
from daemon.store.totals import PairSums, UsageTotals


class CostWindows(UsageTotals):
    """The cost windows of `/metrics`."""

    _cost_keys: frozenset[str] = frozenset()  # the keys whose cost windows are kept by model

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
