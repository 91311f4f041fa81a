"""Which usage a rule selects: its scope's globs on key (name or id) and model, its `exclude`
globs, and `each`; and how that selection reaches the shell.

Rules that select alike (scope, exclude, each, metric) share one `Selection`. For each the
shell is handed a `SelectionFilter` (the keys and models it keeps, in terms a store query can
use); `UsageNeed` says whether a rule reads hourly series or one total per window, and
`PartsQuery` asks for one member's contributors once a message names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from daemon.rules.schema import AnyRule, Scope
from daemon.rules.series import Raw, Series
from daemon.rules.types import KEY_METRICS, MemberKind, Metric

Selection = tuple[object, ...]  # (scope, exclude, each, metric)
Grouped = dict[str, dict[int, Raw]]  # member (or part) id → bucket start → raw value


def key_matches(
    scope: Scope, exclude: list[str], key_id: str, key_names: Mapping[str, str]
) -> bool:
    """Whether the key (by name or id) is in ``scope`` and not excluded."""
    name = key_names.get(key_id, key_id)
    if scope.api_key is not None and not (
        fnmatchcase(name, scope.api_key) or fnmatchcase(key_id, scope.api_key)
    ):
        return False
    return not any(fnmatchcase(name, g) or fnmatchcase(key_id, g) for g in exclude)


def model_matches(scope: Scope, exclude: list[str], model: str) -> bool:
    """Whether the model is in ``scope`` and not excluded."""
    if scope.model is not None and not fnmatchcase(model, scope.model):
        return False
    return not any(fnmatchcase(model, g) for g in exclude)


def scope_label(scope: Scope) -> str:
    """The label of a rule's one member when it has no `each`: its scope, or "workspace"."""
    parts = [
        f"key {scope.api_key}" if scope.api_key else "",
        f"model {scope.model}" if scope.model else "",
    ]
    text = ", ".join(p for p in parts if p)
    return text or "workspace"


def selection_of(rule: AnyRule, metric: Metric) -> Selection:
    return (rule.scope, tuple(rule.exclude), rule.each, metric)


@dataclass(frozen=True)
class SelectionFilter:
    """What one selection reads from the stored key usage, in terms a query can use: the
    member dimension, the metric, and the keys and models it keeps (None: all of them)."""

    by: MemberKind | None
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


def selection_filters(
    wanted: Iterable[tuple[AnyRule, Metric]], key_names: dict[str, str], models: Iterable[str]
) -> dict[Selection, SelectionFilter]:
    """The distinct key-usage selections of (rule, metric) pairs, as filters the shell can
    hand to the store, given the keys and models known so far."""
    all_models = set(models)
    filters: dict[Selection, SelectionFilter] = {}
    for rule, metric in wanted:
        selection = selection_of(rule, metric)
        if metric not in KEY_METRICS or selection in filters:
            continue
        keys = {k for k in key_names if key_matches(rule.scope, rule.exclude, k, key_names)}
        kept = {m for m in all_models if model_matches(rule.scope, rule.exclude, m)}
        filters[selection] = SelectionFilter(
            rule.each,
            metric,
            None if len(keys) == len(key_names) else frozenset(keys),
            None if len(kept) == len(all_models) else frozenset(kept),
        )
    return filters


def expand_members(
    rule: AnyRule, key_names: dict[str, str], models: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The members ``rule`` has over the known keys and models, and warnings for empty globs."""
    keys = [
        k
        for k in sorted(key_names, key=lambda k: key_names[k])
        if key_matches(rule.scope, rule.exclude, k, key_names)
    ]
    model_list = [m for m in sorted(set(models)) if model_matches(rule.scope, rule.exclude, m)]
    warnings = []
    if rule.scope.api_key is not None and not keys:
        warnings.append(f"scope.api_key {rule.scope.api_key!r} matches no API key seen so far")
    if rule.scope.model is not None and not model_list:
        warnings.append(f"scope.model {rule.scope.model!r} matches no model seen so far")
    if rule.each == "api_key":
        return [f"{key_names[k]} ({k})" for k in keys], warnings
    if rule.each == "model":
        return model_list, warnings
    return [scope_label(rule.scope)], warnings
