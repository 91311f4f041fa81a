"""Usage as the engine sees it: members (glob scopes, `each`, `exclude`), their hourly series
with prefix sums, and their totals over budget windows.

The shell says what it loaded in a `UsageIndex` once per cycle: per distinct selection either
hourly series or one total per member and window, as `usage_wanted` asked (see
`selection_filters` for the filters it hands the store). Built from plain (key, model) rows
instead, the index selects and sums them itself: the reference the loaded form is tested
against, and what the engine's unit tests use. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from functools import partial
from operator import itemgetter
from typing import Literal

from daemon.rules.schema import AnyRule, Scope

Metric = Literal["cost_usd", "requests", "tokens", "error_rate", "response_time_ms"]
WORKSPACE = "*"
_ZERO = Decimal(0)


def ts(instant: datetime) -> int:
    return int(instant.timestamp())


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


NANOS = 9  # cost values are kept in nano-dollars (int, or an exact Decimal for finer amounts)
Raw = int | Decimal  # a value in a series' own units (see `Series.scale`)
# one stored (key, model) bucket: start (unix s), key id, model, cost in nano-dollars,
# requests, tokens
KeyRow = tuple[int, str, str, Raw, int, int]
_VALUE_COLUMN = {"cost_usd": 3, "requests": 4, "tokens": 5}


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


@dataclass(frozen=True)
class Member:
    """One alert series of a rule: the workspace (``*``), an API key id, or a model name."""

    id: str
    label: str
    dimension: Literal["workspace", "api_key", "model"]


@dataclass
class MemberUsage:
    """A member's series for one metric (ratio metrics carry numerator and denominator)."""

    member: Member
    value: Series  # the metric itself, or the numerator of a ratio
    weight: Series | None = None  # the denominator of a ratio metric (requests)
    parts: dict[str, Series] = field(default_factory=dict)  # contributors (keys or models)
    # usage the shell loaded: what it loads for `parts` once a message names the member (see
    # `PartsQuery`); most members never need them
    parts_query: PartsQuery | None = None
    # an index built from rows: `parts` from its own rows, when first asked for (pure)
    rows_parts: Callable[[], dict[str, Series]] | None = field(default=None, repr=False)

    def top_parts(
        self, start: datetime, end: datetime, n: int = 3
    ) -> tuple[tuple[str, Decimal], ...]:
        """The ``n`` biggest contributors (models of a key, keys of a model) over [start, end)."""
        if self.rows_parts is not None and not self.parts:
            self.parts = self.rows_parts()
        totals = [(label, series.total(start, end)) for label, series in self.parts.items()]
        return tuple(sorted((t for t in totals if t[1]), key=lambda t: (-t[1], t[0]))[:n])

    def total(self, start: datetime, end: datetime) -> Decimal | None:
        """The metric over [start, end): a sum, or a ratio (None with no requests)."""
        numerator = self.value.total(start, end)
        if self.weight is None:
            return numerator
        denominator = self.weight.total(start, end)
        return numerator / denominator if denominator else None


def to_nanos(amount: Decimal) -> Raw:
    """Dollars → nano-dollars: an `int` unless the amount is finer than a nano-dollar."""
    nanos = amount.scaleb(NANOS)
    whole = int(nanos)
    return whole if whole == nanos else nanos


def key_rows(points: Iterable[KeyPoint]) -> list[KeyRow]:
    return [
        (ts(p.bucket_start), p.api_key_id, p.model, to_nanos(p.cost_usd), p.requests, p.tokens)
        for p in points
    ]


Selection = tuple[object, ...]  # (scope, exclude, each, metric)
KEY_METRICS: tuple[Metric, ...] = ("cost_usd", "requests", "tokens")  # from the key export
Grouped = dict[str, dict[int, Raw]]  # member (or part) id → bucket start → raw value


@dataclass(frozen=True)
class SelectionFilter:
    """What one selection reads from the stored key usage, in terms a query can use: the
    member dimension, the metric, and the keys and models it keeps (None: all of them)."""

    by: Literal["api_key", "model"] | None
    metric: Metric
    keys: frozenset[str] | None
    models: frozenset[str] | None


@dataclass(frozen=True)
class PartsQuery:
    """A member's contributors as the shell loads them, only for the members a message names:
    the member's selection, its id, and the scale of its values. The planner says which it
    needs (`daemon.notify.plan.Plan.parts_wanted`); the shell loads them, and `parts_series`
    makes them the member's `MemberUsage.parts`."""

    selection: SelectionFilter
    member_id: str
    scale: int


def parts_series(
    query: PartsQuery, points: Grouped, key_names: Mapping[str, str]
) -> dict[str, Series]:
    """A member's loaded contributors (part id → bucket → raw value) by label: the models of
    a key, or the keys ("name (id)") of a model or scope."""
    return {
        part
        if query.selection.by == "api_key"
        else f"{key_names.get(part, part)} ({part})": Series(p, query.scale)
        for part, p in points.items()
    }


@dataclass(frozen=True)
class UsageNeed:
    """What one rule reads: ``series`` (hourly, for forecasts, baselines and first-seen) or
    one total per member over [start, end) (budget windows)."""

    rule: AnyRule
    metric: Metric
    start: datetime
    end: datetime
    series: bool


class WindowTotals:
    """Members and their totals over one window, with the ranking computed once."""

    __slots__ = ("_ascending", "_ranking", "members", "raws")

    def __init__(self, members: list[MemberUsage], raws: list[Raw]) -> None:
        self.members, self.raws = members, raws
        self._ranking: list[int] | None = None
        self._ascending: list[Raw] | None = None

    def ranking(self) -> list[int]:
        """Member indexes, the biggest total first (ties by id)."""
        if self._ranking is None:
            self._ranking = sorted(range(len(self.raws)), key=self.raws.__getitem__, reverse=True)
        return self._ranking

    def at_least(self, bound: Raw) -> list[int]:
        """Indexes of the members whose total is at least ``bound`` (a binary search)."""
        ranking = self.ranking()
        if self._ascending is None:
            self._ascending = [self.raws[i] for i in reversed(ranking)]
        return ranking[: len(self._ascending) - bisect_left(self._ascending, bound)]


def selection_of(rule: AnyRule, metric: Metric) -> Selection:
    return (rule.scope, tuple(rule.exclude), rule.each, metric)


def selection_filters(
    wanted: Iterable[tuple[AnyRule, Metric]], key_names: dict[str, str], models: Iterable[str]
) -> dict[Selection, SelectionFilter]:
    """The distinct key-usage selections of (rule, metric) pairs, as filters the shell can
    hand to the store, given the keys and models known so far."""
    index = UsageIndex(key_names=key_names)
    all_models = set(models)
    filters: dict[Selection, SelectionFilter] = {}
    for rule, metric in wanted:
        selection = selection_of(rule, metric)
        if metric not in KEY_METRICS or selection in filters:
            continue
        keys = {k for k in key_names if index.key_matches(rule.scope, rule.exclude, k)}
        kept = {m for m in all_models if index.model_matches(rule.scope, rule.exclude, m)}
        filters[selection] = SelectionFilter(
            rule.each,
            metric,
            None if len(keys) == len(key_names) else frozenset(keys),
            None if len(kept) == len(all_models) else frozenset(kept),
        )
    return filters


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

    def key_matches(self, scope: Scope, exclude: list[str], key_id: str) -> bool:
        name = self.name_of(key_id)
        if scope.api_key is not None and not (
            fnmatchcase(name, scope.api_key) or fnmatchcase(key_id, scope.api_key)
        ):
            return False
        return not any(fnmatchcase(name, g) or fnmatchcase(key_id, g) for g in exclude)

    @staticmethod
    def model_matches(scope: Scope, exclude: list[str], model: str) -> bool:
        if scope.model is not None and not fnmatchcase(model, scope.model):
            return False
        return not any(fnmatchcase(model, g) for g in exclude)

    def _member(self, rule: AnyRule, member_id: str) -> Member:
        if rule.each == "api_key":
            return Member(member_id, self.key_label(member_id), "api_key")
        if rule.each == "model":
            return Member(member_id, member_id, "model")
        return Member(WORKSPACE, _scope_label(rule.scope), "workspace")

    def key_label(self, key_id: str) -> str:
        return f"{self.name_of(key_id)} ({key_id})"

    @staticmethod
    def _selection(rule: AnyRule, metric: Metric) -> Selection:
        return selection_of(rule, metric)

    def members(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        """The rule's members with their series for ``metric``, sorted by member id.

        Rules that select the same way (scope, exclude, each, metric) share one result: with
        thousands of keys, building the merged series is the expensive part.
        """
        selection = self._selection(rule, metric)
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
        selection = self._selection(rule, metric)
        key = (selection, start, end, series)
        cached = self._windows.get(key)
        if cached is not None:
            return cached
        loaded = None if series else self.prepared_totals.get((selection, start, end))
        if loaded is not None:
            selection_filter, totals = loaded
            scale = NANOS if metric == "cost_usd" else 0
            ids = sorted(totals)
            members = [
                MemberUsage(
                    self._member(rule, member_id),
                    Series({start: totals[member_id]}, scale),
                    parts_query=PartsQuery(selection_filter, member_id, scale),
                )
                for member_id in ids
            ]
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
        key_ok = {k for k in keys if self.key_matches(rule.scope, rule.exclude, k)}
        model_ok = {m for m in models if self.model_matches(rule.scope, rule.exclude, m)}
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
            selection_filter, grouped = self.prepared[self._selection(rule, metric)]
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
                self.key_matches(rule.scope, rule.exclude, row[1])
                and self.model_matches(rule.scope, rule.exclude, row[2])
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
            if not per[numerator] or not self.model_matches(rule.scope, rule.exclude, model):
                continue
            member = (
                Member(model, model, "model")
                if rule.each == "model"
                else Member(WORKSPACE, _scope_label(rule.scope), "workspace")
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


def _scope_label(scope: Scope) -> str:
    parts = [
        f"key {scope.api_key}" if scope.api_key else "",
        f"model {scope.model}" if scope.model else "",
    ]
    text = ", ".join(p for p in parts if p)
    return text or "workspace"


def expand_members(
    rule: AnyRule, key_names: dict[str, str], models: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The members ``rule`` has over the known keys and models, and warnings for empty globs."""
    index = UsageIndex([], key_names=key_names)
    keys = [
        k
        for k in sorted(key_names, key=lambda k: key_names[k])
        if index.key_matches(rule.scope, rule.exclude, k)
    ]
    model_list = [
        m for m in sorted(set(models)) if UsageIndex.model_matches(rule.scope, rule.exclude, m)
    ]
    warnings = []
    if rule.scope.api_key is not None and not keys:
        warnings.append(f"scope.api_key {rule.scope.api_key!r} matches no API key seen so far")
    if rule.scope.model is not None and not model_list:
        warnings.append(f"scope.model {rule.scope.model!r} matches no model seen so far")
    if rule.each == "api_key":
        return [f"{key_names[k]} ({k})" for k in keys], warnings
    if rule.each == "model":
        return model_list, warnings
    return [_scope_label(rule.scope)], warnings
