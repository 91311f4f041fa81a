"""Builders for rule-engine tests: rules from dicts, usage from simple hourly functions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from daemon.rules.schema import AnomalyRule, BudgetRule, Rule
from daemon.rules.usage import KeyPoint, UsageIndex

H = timedelta(hours=1)
_RULE: TypeAdapter[BudgetRule | AnomalyRule] = TypeAdapter(Rule)


def rule(**fields: Any) -> BudgetRule | AnomalyRule:
    return _RULE.validate_python({"name": "r", **fields})


def budget(**fields: Any) -> BudgetRule:
    made = rule(kind="budget", **fields)
    assert isinstance(made, BudgetRule)
    return made


def anomaly(**fields: Any) -> AnomalyRule:
    made = rule(kind="anomaly", **fields)
    assert isinstance(made, AnomalyRule)
    return made


def hourly(
    start: datetime,
    end: datetime,
    cost: Callable[[datetime], Decimal | int | str],
    key: str = "k1",
    model: str = "gpt-4o",
    requests: int = 10,
) -> list[KeyPoint]:
    """One point per UTC hour in [start, end) with ``cost(hour)``."""
    points = []
    t = start
    while t < end:
        points.append(KeyPoint(t, key, model, Decimal(cost(t)), requests, requests * 100))
        t += H
    return points


def index(
    *point_lists: list[KeyPoint],
    names: dict[str, str] | None = None,
    history_start: datetime | None = None,
) -> UsageIndex:
    points = [p for pl in point_lists for p in pl]
    first = min((p.bucket_start for p in points), default=None)
    return UsageIndex(points, key_names=names, history_start=history_start or first)
