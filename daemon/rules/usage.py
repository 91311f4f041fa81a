"""Usage as the engine sees it in one cycle: a `UsageIndex` that builds each selection's
members (`daemon.rules.selection`) with their hourly series (`daemon.rules.series`) and their
totals over budget windows (`daemon.rules.members`).

The shell says what it loaded in a `UsageIndex` once per cycle: per distinct selection either
hourly series or one total per member and window, as `usage_wanted` asked (see
`selection_filters` for the filters it hands the store). Built from plain (key, model) rows
instead, the index selects and sums them itself: the reference the loaded form is tested
against, and what the engine's unit tests use. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from operator import itemgetter
from typing import Any

from daemon.rules.members import MemberUsage, WindowTotals
from daemon.rules.schema import AnyRule
from daemon.rules.selection import (
    Grouped,
    PartsQuery,
    Selection,
    SelectionFilter,
    key_matches,
    model_matches,
    scope_label,
    selection_of,
)
from daemon.rules.series import NANOS, Raw, Series, merge, to_nanos, ts
from daemon.rules.types import WORKSPACE, Member, Metric


@dataclass(frozen=True, slots=True)
class KeyPoint:
    """One stored bucket of one (API key, model) pair."""

    bucket_start: datetime
    api_key_id: str
    model: str
    cost_usd: Decimal
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """One stored bucket of the models export (errors and latency live only here)."""

    bucket_start: datetime
    model: str
    requests: int
    errors: Decimal | None
    response_time_ms: Decimal | None


# one stored (key, model) bucket: start (unix s), key id, model, cost in nano-dollars,
# requests, tokens
KeyRow = tuple[int, str, str, Raw, int, int]
_VALUE_COLUMN = {"cost_usd": 3, "requests": 4, "tokens": 5}


def key_rows(points: Iterable[KeyPoint]) -> list[KeyRow]:
    return [
        (ts(p.bucket_start), p.api_key_id, p.model, to_nanos(p.cost_usd), p.requests, p.tokens)
        for p in points
    ]


class UsageIndex:
    """All usage the engine may look at in one cycle.

    Either ``prepared`` (series per selection) and ``prepared_totals`` (totals per selection
    and window), as the shell loads them, or flat `KeyRow` tuples / `KeyPoint`s that the index
    groups itself. Either way a selection's members are built once and shared by every rule
    that selects alike, as are their window totals and rankings.
    """

    def __init__(
        self,
        key_points: Iterable[KeyPoint] = (),
        model_points: Iterable[ModelPoint] = (),
        *,
        rows: Iterable[KeyRow] | None = None,
        prepared: dict[Selection, tuple[SelectionFilter, Grouped]] | None = None,
        prepared_totals: dict[tuple[Selection, int, int], tuple[SelectionFilter, dict[str, Raw]]]
        | None = None,
        key_names: dict[str, str] | None = None,
        history_start: datetime | None = None,
        first_seen: dict[str, dict[str, datetime]] | None = None,
        new_after: datetime | None = None,
    ) -> None:
        self.key_names = dict(key_names or {})
        self.history_start = history_start
        # "api_key" / "model" → member id → start of its first bucket with usage
        self.first_seen = first_seen or {}
        self.new_after = new_after  # members first seen from here on are new
        self.rows: list[KeyRow] = list(rows) if rows is not None else key_rows(key_points)
        # selections the shell already grouped (with a query): no rows needed for them
        self.prepared = prepared
        # (selection, start, end) → each member's total over that window, where loaded
        self.prepared_totals = prepared_totals or {}
        self._members: dict[Selection, list[MemberUsage]] = {}
        self._windows: dict[tuple[Selection, int, int, bool], WindowTotals] = {}
        self._distinct: tuple[set[str], set[str]] | None = None  # key ids, models
        self._rows_by: dict[int, dict[str, list[KeyRow]]] = {}  # column → value → rows
        self._made_members: dict[tuple[str, str], Member] = {}  # (each, id) → its member
        self._queries: dict[Selection, dict[str, PartsQuery]] = {}  # where a part is loaded
        # what forecasts of the same series and period share (`daemon.rules.budget.project`)
        self.forecasts: dict[Any, Any] = {}
        # model → requests / errors / latency×requests per bucket (only buckets that have them)
        self.models: dict[str, dict[str, dict[int, Decimal]]] = {}
        for m in model_points:
            per = self.models.setdefault(
                m.model,
                {"requests": {}, "errors": {}, "latency_weight": {}, "latency_requests": {}},
            )
            start = ts(m.bucket_start)
            per["requests"][start] = per["requests"].get(start, Decimal(0)) + m.requests
            if m.errors is not None:
                per["errors"][start] = per["errors"].get(start, Decimal(0)) + m.errors
            if m.response_time_ms is not None and m.requests:
                weight = m.response_time_ms * m.requests
                per["latency_weight"][start] = per["latency_weight"].get(start, Decimal(0)) + weight
                per["latency_requests"][start] = (
                    per["latency_requests"].get(start, Decimal(0)) + m.requests
                )

    def name_of(self, key_id: str) -> str:
        return self.key_names.get(key_id, key_id)

    # ------------------------------------------------------------ scope and members

    def _member(self, rule: AnyRule, member_id: str) -> Member:
        if rule.each is None:
            return Member(WORKSPACE, scope_label(rule.scope), "workspace")
        made = self._made_members.get((rule.each, member_id))
        if made is None:  # one per key or model, whatever rules and windows it is in
            label = self.key_label(member_id) if rule.each == "api_key" else member_id
            made = self._made_members[(rule.each, member_id)] = Member(member_id, label, rule.each)
        return made

    def key_label(self, key_id: str) -> str:
        return f"{self.name_of(key_id)} ({key_id})"

    def members(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        """The rule's members with their series for ``metric``, sorted by member id.

        Rules that select the same way (scope, exclude, each, metric) share one result: with
        thousands of keys, building the merged series is the expensive part.
        """
        selection = selection_of(rule, metric)
        cached = self._members.get(selection)
        if cached is None:
            cached = self._members[selection] = self._select(rule, metric)
        return cached

    def window(
        self, rule: AnyRule, metric: Metric, start: int, end: int, *, series: bool = False
    ) -> WindowTotals:
        """The rule's members and their totals over [start, end), shared by the rules that
        select alike and look at the same window.

        Where the shell loaded that window's totals (budget rules without a forecast), they
        come from there and a member's series is that one total; otherwise (or with
        ``series``) from the members' hourly series.
        """
        selection = selection_of(rule, metric)
        key = (selection, start, end, series)
        cached = self._windows.get(key)
        if cached is not None:
            return cached
        loaded = None if series else self.prepared_totals.get((selection, start, end))
        if loaded is not None:
            selection_filter, totals = loaded
            scale = NANOS if metric == "cost_usd" else 0
            ids = sorted(totals)
            queries = self._queries.setdefault(selection, {})  # shared by its windows
            members = []
            for member_id in ids:
                query = queries.get(member_id)
                if query is None:
                    query = queries[member_id] = PartsQuery(selection_filter, member_id, scale)
                members.append(
                    MemberUsage(
                        self._member(rule, member_id),
                        Series.one(start, totals[member_id], scale),
                        parts_query=query,
                    )
                )
            cached = WindowTotals(members, [totals[member_id] for member_id in ids])
        else:
            members = self.members(rule, metric)
            if not series:  # as the loaded totals: the members with usage in the window
                members = [m for m in members if m.value.has_points(start, end)]
            cached = WindowTotals(members, [m.value.raw_total(start, end) for m in members])
        self._windows[key] = cached
        return cached

    def _selected_rows(self, rule: AnyRule) -> list[KeyRow]:
        if self._distinct is None:
            self._distinct = {row[1] for row in self.rows}, {row[2] for row in self.rows}
        keys, models = self._distinct
        key_ok = {k for k in keys if key_matches(rule.scope, rule.exclude, k, self.key_names)}
        model_ok = {m for m in models if model_matches(rule.scope, rule.exclude, m)}
        if len(key_ok) == len(keys) and len(model_ok) == len(models):
            return self.rows
        return [row for row in self.rows if row[1] in key_ok and row[2] in model_ok]

    def _select(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        if metric in ("error_rate", "response_time_ms"):
            return self._model_metric_members(rule, metric)
        scale = NANOS if metric == "cost_usd" else 0
        if self.prepared is not None:
            return self._prepared_members(rule, metric, scale)
        column = _VALUE_COLUMN[metric]
        value_of: Callable[[KeyRow], Raw] = itemgetter(column)
        rows = self._selected_rows(rule)
        by = 1 if rule.each == "api_key" else 2 if rule.each == "model" else 0
        grouped: dict[str, dict[int, Raw]] = {}
        if by == 0:
            whole: dict[int, Raw] = {}
            for row in rows:
                start = row[0]
                whole[start] = whole.get(start, 0) + value_of(row)
            if rows:
                grouped[WORKSPACE] = whole
        else:
            member_of: Callable[[KeyRow], str] = itemgetter(by)
            for row in rows:
                member_id = member_of(row)
                points = grouped.get(member_id)
                if points is None:
                    points = grouped[member_id] = {}
                start = row[0]
                points[start] = points.get(start, 0) + value_of(row)
        return [
            MemberUsage(
                self._member(rule, member_id),
                Series(grouped[member_id], scale),
                rows_parts=partial(self._parts, rule, column, scale, by, member_id),
            )
            for member_id in sorted(grouped)
        ]

    def _prepared_members(self, rule: AnyRule, metric: Metric, scale: int) -> list[MemberUsage]:
        assert self.prepared is not None
        try:
            selection_filter, grouped = self.prepared[selection_of(rule, metric)]
        except KeyError:  # a bug in the shell, not bad data: say which rule
            raise ValueError(f"usage for rule {rule.name!r} ({metric}) was not loaded") from None
        return [
            MemberUsage(
                self._member(rule, member_id),
                Series(grouped[member_id], scale),
                parts_query=PartsQuery(selection_filter, member_id, scale),
            )
            for member_id in sorted(grouped)
        ]

    def _parts(
        self, rule: AnyRule, column: int, scale: int, by: int, member_id: str
    ) -> dict[str, Series]:
        """A member's contributors: the models of a key, or the keys of a model (or scope)."""
        value_of: Callable[[KeyRow], Raw] = itemgetter(column)
        if by == 0:
            rows = self.rows
        else:
            index = self._rows_by.get(by)
            if index is None:
                member_of: Callable[[KeyRow], str] = itemgetter(by)
                index = self._rows_by[by] = {}
                for row in self.rows:
                    index.setdefault(member_of(row), []).append(row)
            rows = index.get(member_id, [])
        parts: dict[str, dict[int, Raw]] = {}
        for row in rows:
            if not (
                key_matches(rule.scope, rule.exclude, row[1], self.key_names)
                and model_matches(rule.scope, rule.exclude, row[2])
            ):
                continue
            label = row[2] if by == 1 else self.key_label(row[1])
            points = parts.setdefault(label, {})
            points[row[0]] = points.get(row[0], 0) + value_of(row)
        return {label: Series(points, scale) for label, points in parts.items()}

    def _model_metric_members(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        numerator, denominator = (
            ("errors", "requests")
            if metric == "error_rate"
            else ("latency_weight", "latency_requests")
        )
        grouped: dict[Member, list[dict[str, dict[int, Decimal]]]] = {}
        for model, per in self.models.items():
            if not per[numerator] or not model_matches(rule.scope, rule.exclude, model):
                continue
            member = (
                Member(model, model, "model")
                if rule.each == "model"
                else Member(WORKSPACE, scope_label(rule.scope), "workspace")
            )
            grouped.setdefault(member, []).append(per)
        return [
            MemberUsage(
                member,
                merge(p[numerator] for p in pers),
                weight=merge(
                    # only buckets that reported the numerator count in the denominator
                    {s: p[denominator].get(s, Decimal(0)) for s in p[numerator]}
                    for p in pers
                ),
            )
            for member, pers in sorted(grouped.items(), key=lambda item: item[0].id)
        ]
