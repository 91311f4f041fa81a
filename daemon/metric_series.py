"""The snapshot's large gauge families: per key, per budget member, per anomaly member and
per firing alert (docs/METRICS.md; docs/DESIGN.md "Metrics").

Label hygiene: a series is named by stable ids only (``api_key_id``, and ``scope`` is
``workspace``, an API key id or a model name), so renaming a key in Langdock never breaks a
series; the names are in one info family, ``langdock_api_key_info{api_key_id,api_key_name}``,
to join on. A family's unit is in its name (``_usd``, ``_requests``, ``_tokens``, ``_ratio``,
``_seconds``): a request budget is never published as ``_usd``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from daemon.metrics_text import Samples
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, BudgetTable, Unit
from daemon.rules.engine import EngineResult
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.types import WORKSPACE, Member, Metric

OTHER = "other"
LABEL_MAX = 120  # characters of a name from Langdock in a label value; ids stay whole
SCOPE = ("rule", "scope")

Family = tuple[str, str, tuple[str, ...], Samples]  # name, help, label names, samples

# a budget's unit → (its family of spend, of the limit, of the forecast)
BUDGET_FAMILIES: dict[Unit, tuple[str, str, str]] = {
    "usd": (
        "langdock_budget_spend_usd",
        "langdock_budget_limit_usd",
        "langdock_budget_forecast_usd",
    ),
    "requests": (
        "langdock_budget_used_requests",
        "langdock_budget_limit_requests",
        "langdock_budget_forecast_requests",
    ),
    "tokens": (
        "langdock_budget_used_tokens",
        "langdock_budget_limit_tokens",
        "langdock_budget_forecast_tokens",
    ),
}
# (what is counted, its unit) in the help texts
_BUDGET_NOUN: dict[Unit, tuple[str, str]] = {
    "usd": ("Spend in USD", "USD"),
    "requests": ("Requests", "requests"),
    "tokens": ("Tokens", "tokens"),
}

# an anomaly metric → the unit suffix of its families and the factor to that unit
ANOMALY_UNITS: dict[Metric, tuple[str, Decimal]] = {
    "cost_usd": ("usd", Decimal(1)),
    "requests": ("requests", Decimal(1)),
    "tokens": ("tokens", Decimal(1)),
    "error_rate": ("ratio", Decimal(1)),
    "response_time_ms": ("seconds", Decimal("0.001")),
}


@dataclass(frozen=True)
class CostSeries:
    api_key_id: str
    model: str
    window: str
    value: Decimal


def bounded(text: str, limit: int = LABEL_MAX) -> str:
    """A label value of at most ``limit`` characters (an ellipsis marks a cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def scope_id(member: Member | str) -> str:
    """The stable ``scope`` label of a member (or of a member id): ``workspace``, the API key
    id or the model name."""
    member_id = member if isinstance(member, str) else member.id
    return "workspace" if member_id == WORKSPACE else member_id


def cost_series(
    totals: Mapping[str, Sequence[tuple[str | None, str, Decimal]]],
) -> tuple[CostSeries, ...]:
    """`langdock_cost_usd` series from `Store.window_costs` rows; key None is ``other``."""
    return tuple(
        CostSeries(OTHER if key_id is None else key_id, model, window, cost)
        for window, rows in totals.items()
        for key_id, model, cost in rows
    )


def key_names(costs: Iterable[CostSeries], names: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(id, bounded name) of the keys the cost series name: the info family's rows (``other``
    too, so a join on the info family keeps the keys beyond `metrics.top_keys`)."""
    shown = sorted({c.api_key_id for c in costs})
    return tuple(
        (key_id, OTHER if key_id == OTHER else bounded(names.get(key_id, key_id)))
        for key_id in shown
    )


class BudgetRow(NamedTuple):
    """One budget member as `/metrics` shows it (values as the samples carry them)."""

    unit: Unit
    rule: str
    scope: str
    spend: float
    limit: float
    utilization: float
    forecast: float | None


def budget_row(evaluation: BudgetEvaluation) -> BudgetRow:
    """The row of one evaluation (the reference `budget_rows` is held to)."""
    forecast = evaluation.forecast
    return BudgetRow(
        evaluation.unit,
        evaluation.rule,
        scope_id(evaluation.member),
        float(evaluation.spend),
        float(evaluation.limit),
        float(evaluation.utilization),
        None if forecast is None else float(forecast.projected),
    )


def budget_rows(tables: Iterable[BudgetTable], top_n: int) -> tuple[BudgetRow, ...]:
    """Per rule, the ``top_n`` members closest to (or over) their limit: an `each: api_key`
    rule over 10,000 keys must not become 40,000 series. Read from the table's columns (no
    evaluation is made for the 20,000-30,000 members shown); equal to ``budget_row`` of each
    of ``table.top(top_n)`` (tests/test_metrics_rows.py)."""
    rows: list[BudgetRow] = []
    for table in tables:
        unit, rule, limit, scale = table.unit, table.rule, table.limit, table.scale
        limit_value = float(limit)
        members, raws, forecasts = table.members, table.raw_spends, table.forecasts
        for i in table.ranking()[:top_n]:
            spend = Decimal(raws[i]).scaleb(-scale)
            member_id = members[i].member.id
            forecast = forecasts.get(i)
            rows.append(
                BudgetRow(
                    unit,
                    rule,
                    "workspace" if member_id == WORKSPACE else member_id,
                    float(spend),
                    limit_value,
                    float(spend / limit),
                    None if forecast is None else float(forecast.projected),
                )
            )
    return tuple(rows)


def bounded_anomalies(result: EngineResult, top_n: int) -> tuple[AnomalyEvaluation, ...]:
    """Per anomaly rule, the ``top_n`` members with an observation, largest |score| first."""
    per_rule: dict[str, list[AnomalyEvaluation]] = {}
    for evaluation in result.anomalies():
        if evaluation.observed is not None:
            per_rule.setdefault(evaluation.rule, []).append(evaluation)
    shown: list[AnomalyEvaluation] = []
    for judged in per_rule.values():
        judged.sort(key=lambda e: (-abs(e.score or 0.0), e.member.id))
        shown.extend(judged[:top_n])
    return tuple(shown)


FiringSeries = tuple[tuple[str, str, str, str], ...]


def firing_series(
    firing: Sequence[AlertState], last: tuple[Sequence[AlertState], FiringSeries] = ((), ())
) -> FiringSeries:
    """(rule, scope, condition, severity) of every ``firing`` alert, sorted. ``last``: the
    states the last series were made of, and those series: kept while the states are the
    same objects (a steady alert stays the same object; 170,000 at 10,000 keys, sorted anew
    every cycle, were 25 MB made while the last ones were still shown)."""
    states, series = last
    if len(states) == len(firing) and all(map(operator.is_, states, firing)):
        return series
    return tuple(
        sorted((s.key.rule, scope_id(s.key.member), s.key.condition, s.severity) for s in firing)
    )


def silenced_series(keys: Iterable[AlertKey]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({(key.rule, scope_id(key.member)) for key in keys}))


def series_families(
    costs: Sequence[CostSeries],
    names: Sequence[tuple[str, str]],
    budgets: Sequence[BudgetRow],
    anomalies: Sequence[AnomalyEvaluation],
    firing: Sequence[tuple[str, str, str, str]],
) -> list[Family]:
    """Name, help, label names and samples of the large gauge families; every family is
    listed (with no samples when nothing has it) so the reference shows them all."""
    families: list[Family] = [
        (
            "langdock_cost_usd",
            "Spend per API key and model in USD",
            ("api_key_id", "model", "window"),
            [((c.api_key_id, c.model, c.window), float(c.value)) for c in costs],
        ),
        (
            "langdock_api_key_info",
            "The name of an API key (join on api_key_id; a rename keeps every series)",
            ("api_key_id", "api_key_name"),
            [((key_id, name), 1.0) for key_id, name in names],
        ),
    ]
    ratio: Samples = []
    by_unit: dict[Unit, tuple[Samples, Samples, Samples]] = {
        unit: ([], [], []) for unit in BUDGET_FAMILIES
    }
    for row in budgets:
        labels = (row.rule, row.scope)
        spend, limit, forecast = by_unit[row.unit]
        spend.append((labels, row.spend))
        limit.append((labels, row.limit))
        ratio.append((labels, row.utilization))
        if row.forecast is not None:
            forecast.append((labels, row.forecast))
    for unit, (spend_name, limit_name, forecast_name) in BUDGET_FAMILIES.items():
        spend, limit, forecast = by_unit[unit]
        noun, in_unit = _BUDGET_NOUN[unit]
        families += [
            (spend_name, f"{noun} in the budget window so far", SCOPE, spend),
            (limit_name, f"The budget's limit in {in_unit}", SCOPE, limit),
            (forecast_name, f"{noun} projected at the end of the window", SCOPE, forecast),
        ]
    families.append(
        (
            "langdock_budget_utilization_ratio",
            "Budget used: spend divided by the limit",
            SCOPE,
            ratio,
        )
    )
    families += anomaly_families(anomalies)
    families.append(
        (
            "langdock_alert_firing",
            "1 while the alert is firing",
            ("rule", "scope", "condition", "severity"),
            [(labels, 1.0) for labels in firing],
        )
    )
    return families


def anomaly_families(anomalies: Sequence[AnomalyEvaluation]) -> list[Family]:
    observed: dict[str, Samples] = {unit: [] for unit, _ in ANOMALY_UNITS.values()}
    expected: dict[str, Samples] = {unit: [] for unit in observed}
    score: Samples = []
    for ev in anomalies:
        unit, factor = ANOMALY_UNITS[ev.metric]  # type: ignore[index]
        labels = (ev.rule, scope_id(ev.member))
        if ev.observed is not None:
            observed[unit].append((labels, float(ev.observed * factor)))
        if ev.expected is not None:
            expected[unit].append((labels, float(ev.expected * factor)))
        if ev.score is not None:
            score.append((labels, ev.score))
    families: list[Family] = []
    for unit in observed:
        families += [
            (
                f"langdock_anomaly_observed_{unit}",
                "Anomaly rule: the window's value",
                SCOPE,
                observed[unit],
            ),
            (
                f"langdock_anomaly_expected_{unit}",
                "Anomaly rule: the baseline's median",
                SCOPE,
                expected[unit],
            ),
        ]
    families.append(
        (
            "langdock_anomaly_score",
            "Anomaly rule: robust score (the rule fires at its sensitivity)",
            SCOPE,
            score,
        )
    )
    return families
