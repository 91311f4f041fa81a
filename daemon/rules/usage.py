"""Usage series as the engine sees them: per-bucket values with prefix sums, and scopes.

The shell loads hourly buckets from the store into a `UsageIndex` once per cycle; every rule
then selects its members (glob scopes, `each`, `exclude`) and sums any range of buckets in
O(log n) through prefix sums. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
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


class Series:
    """Values per bucket start (unix seconds) with prefix sums for fast range totals."""

    __slots__ = ("_prefix", "starts", "values")

    def __init__(self, points: dict[int, Decimal]) -> None:
        self.starts = sorted(points)
        self.values = [points[s] for s in self.starts]
        prefix = [Decimal(0)]
        for value in self.values:
            prefix.append(prefix[-1] + value)
        self._prefix = prefix

    def total(self, start: datetime, end: datetime) -> Decimal:
        """Sum over buckets that start in [start, end)."""
        return self.total_ts(ts(start), ts(end))

    def total_ts(self, start: int, end: int) -> Decimal:
        """`total` with unix-second bounds (hot loops convert their bounds once)."""
        lo, hi = bisect_left(self.starts, start), bisect_left(self.starts, end)
        return self._prefix[hi] - self._prefix[lo] if hi > lo else _ZERO


def merge(series_points: Iterable[dict[int, Decimal]]) -> Series:
    merged: dict[int, Decimal] = {}
    for points in series_points:
        for start, value in points.items():
            merged[start] = merged.get(start, Decimal(0)) + value
    return Series(merged)


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
    # the contributors' raw points, merged into `parts` only when a message asks for them
    part_points: dict[str, list[dict[int, Decimal]]] = field(default_factory=dict, repr=False)

    def top_parts(
        self, start: datetime, end: datetime, n: int = 3
    ) -> tuple[tuple[str, Decimal], ...]:
        """The ``n`` biggest contributors (models of a key, keys of a model) over [start, end)."""
        if self.part_points and not self.parts:
            self.parts = {label: merge(p) for label, p in self.part_points.items()}
        totals = [(label, series.total(start, end)) for label, series in self.parts.items()]
        return tuple(sorted((t for t in totals if t[1]), key=lambda t: (-t[1], t[0]))[:n])

    def total(self, start: datetime, end: datetime) -> Decimal | None:
        """The metric over [start, end): a sum, or a ratio (None with no requests)."""
        numerator = self.value.total(start, end)
        if self.weight is None:
            return numerator
        denominator = self.weight.total(start, end)
        return numerator / denominator if denominator else None


class UsageIndex:
    """All usage the engine may look at in one cycle."""

    def __init__(
        self,
        key_points: Iterable[KeyPoint],
        model_points: Iterable[ModelPoint] = (),
        *,
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
        self._members: dict[tuple[object, ...], list[MemberUsage]] = {}
        # (key id, model) → its points; per-metric series are built when a rule asks
        self.pairs: dict[tuple[str, str], list[KeyPoint]] = {}
        for p in key_points:
            self.pairs.setdefault((p.api_key_id, p.model), []).append(p)
        self._pair_series: dict[str, dict[tuple[str, str], dict[int, Decimal]]] = {}
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

    def series_of(self, metric: str) -> dict[tuple[str, str], dict[int, Decimal]]:
        """Bucket start → value of ``metric`` (cost_usd, requests, tokens) per (key, model)."""
        cached = self._pair_series.get(metric)
        if cached is None:
            if metric == "cost_usd":
                cached = {
                    pair: {ts(p.bucket_start): p.cost_usd for p in pts}
                    for pair, pts in self.pairs.items()
                }
            elif metric == "requests":
                cached = {
                    pair: {ts(p.bucket_start): Decimal(p.requests) for p in pts}
                    for pair, pts in self.pairs.items()
                }
            else:
                cached = {
                    pair: {ts(p.bucket_start): Decimal(p.tokens) for p in pts}
                    for pair, pts in self.pairs.items()
                }
            self._pair_series[metric] = cached
        return cached

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

    def _member(self, rule: AnyRule, key_id: str, model: str) -> Member:
        if rule.each == "api_key":
            return Member(key_id, f"{self.name_of(key_id)} ({key_id})", "api_key")
        if rule.each == "model":
            return Member(model, model, "model")
        return Member(WORKSPACE, _scope_label(rule.scope), "workspace")

    def members(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        """The rule's members with their series for ``metric``, sorted by member id.

        Rules that select the same way (scope, exclude, each, metric) share one result: with
        thousands of keys, building the merged series is the expensive part.
        """
        selection = (rule.scope, tuple(rule.exclude), rule.each, metric)
        cached = self._members.get(selection)
        if cached is None:
            cached = self._members[selection] = self._select(rule, metric)
        return cached

    def _select(self, rule: AnyRule, metric: Metric) -> list[MemberUsage]:
        if metric in ("error_rate", "response_time_ms"):
            return self._model_metric_members(rule, metric)
        grouped: dict[Member, list[tuple[str, dict[int, Decimal]]]] = {}
        for (key_id, model), points in self.series_of(metric).items():
            if not (
                self.key_matches(rule.scope, rule.exclude, key_id)
                and self.model_matches(rule.scope, rule.exclude, model)
            ):
                continue
            member = self._member(rule, key_id, model)
            part = model if member.dimension == "api_key" else f"{self.name_of(key_id)} ({key_id})"
            grouped.setdefault(member, []).append((part, points))
        result = []
        for member, parts in sorted(grouped.items(), key=lambda item: item[0].id):
            by_part: dict[str, list[dict[int, Decimal]]] = {}
            for label, points in parts:
                by_part.setdefault(label, []).append(points)
            result.append(
                MemberUsage(
                    member,
                    merge(points for _, points in parts),
                    part_points=by_part,
                )
            )
        return result

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
