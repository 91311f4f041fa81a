"""The store's grouped selections (one SQL query per selection) give the engine exactly what
the row-by-row `UsageIndex` computes from the same usage."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import patch

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import cycle
from daemon.config import load_config
from daemon.cycle import load_usage
from daemon.exports import KeyUsage
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.engine import evaluate
from daemon.rules.usage import KeyPoint, UsageIndex
from daemon.store import Store

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
H = timedelta(hours=1)
KEYS = {"k1": "team-a-web", "k2": "team-a-batch", "k3": "team-b-web"}
MODELS = ["gpt-4o", "gpt-4o-mini", "claude"]

usage_rows = st.lists(
    st.tuples(
        st.integers(1, 24 * 12),  # hours before now: the days of this month and last week
        st.sampled_from(sorted(KEYS)),
        st.sampled_from(MODELS),
        st.decimals(min_value=0, max_value=50, places=12),  # finer than a nano-dollar too
        st.integers(0, 500),
        st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=30,
)
rule_specs = st.lists(
    st.fixed_dictionaries(
        {
            "each": st.sampled_from([None, "api_key", "model"]),
            "scope": st.sampled_from([{}, {"api_key": "team-a*"}, {"model": "gpt*"}]),
            "exclude": st.sampled_from([[], ["k2"], ["claude"], ["team-b*", "gpt-4o"]]),
            "limit": st.sampled_from(
                [{"limit_usd": 20}, {"limit_requests": 300}, {"limit_tokens": 10**6}]
            ),
            "window": st.sampled_from(["day", "week", "month", "24h", "7d"]),
            "forecast": st.booleans(),
        }
    ),
    min_size=1,
    max_size=4,
)


def config_yaml(specs: list[dict[str, Any]], state: Path) -> str:
    rules = []
    for i, spec in enumerate(specs):
        rule: dict[str, Any] = {"name": f"r{i}", "kind": "budget", "window": spec["window"]}
        rule.update(spec["limit"])
        if spec["forecast"] and spec["window"] in ("day", "week", "month"):
            rule["forecast"] = True
        if spec["each"]:
            rule["each"] = spec["each"]
        if spec["scope"]:
            rule["scope"] = spec["scope"]
        if spec["exclude"]:
            rule["exclude"] = spec["exclude"]
        rules.append(rule)
    return yaml.safe_dump(
        {
            "langdock": {"api_key": "x"},
            "timezone": "UTC",
            "state": {"path": str(state)},
            "rules": rules,
        }
    )


def summary(evaluations: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (e.rule, e.member.id, e.member.label, e.spend, e.forecast, e.top_parts)
        for e in evaluations
        if isinstance(e, BudgetEvaluation)
    ]


@settings(max_examples=30, deadline=None)
@given(usage_rows, rule_specs)
def test_grouped_selections_equal_the_row_by_row_index(
    rows: list[tuple[int, str, str, Decimal, int, int]], specs: list[dict[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml(specs, Path(tmp) / "state.db"))
        config = load_config(path)
        store = Store.open(config.state.path)
        points = []
        for hours in sorted({h for h, *_ in rows}):
            start = NOW.replace(minute=0) - hours * H
            bucket = [
                KeyUsage(key, KEYS[key], model, req, cost, prompt_tokens=tok, completion_tokens=0)
                for h, key, model, cost, req, tok in rows
                if h == hours
            ]
            store.replace_key_usage(start, start + H, bucket, NOW)
            points += [
                KeyPoint(start, u.api_key_id, u.model, u.cost_usd, u.requests, u.prompt_tokens or 0)
                for u in bucket
            ]
        store.refresh_rollups(NOW)  # whole days come from the daily sums
        # duplicates within a bucket were added up by the store; the row index adds them too
        by_rows = UsageIndex(points, key_names=KEYS, history_start=store.history_start())
        reference = summary(evaluate(config.rules, by_rows, {}, NOW, config.tz).all_evaluations())
        # budget windows summed by SQLite (and the daily sums), and from hourly series
        for few in (0, 10_000):
            with patch.object(cycle, "FEW_BUCKETS", few):
                usage = load_usage(store, config, NOW, store.history_start())
            from_store = evaluate(config.rules, usage, {}, NOW, config.tz)
            assert summary(from_store.all_evaluations()) == reference, few
        store.close()
