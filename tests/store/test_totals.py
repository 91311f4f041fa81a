"""Usage comes out: windows across DST, several windows in one pass, top keys; and the
store's grouped selections (one SQL query per selection) give the engine exactly what the
row-by-row `UsageIndex` computes from the same usage."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import patch
from zoneinfo import ZoneInfo

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import cycle
from daemon.config import load_config
from daemon.cycle import load_contributors, load_usage
from daemon.langdock.csv import KeyUsage
from daemon.notify.plan import with_parts
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.engine import evaluate
from daemon.rules.usage import KeyPoint, UsageIndex
from daemon.rules.windows import buckets, calendar_period
from daemon.store import Store
from tests.properties import examples
from tests.store.helpers import T0, H, usage


def test_berlin_day_windows_across_the_autumn_dst_change(store: Store) -> None:
    tz = ZoneInfo("Europe/Berlin")
    day = calendar_period("day", datetime(2026, 10, 25, 12, tzinfo=UTC), tz)
    assert day.duration == timedelta(hours=25)
    around = list(buckets(day.start - 3 * H, day.end + 3 * H, tz))
    for bucket in around:
        store.replace_key_usage(bucket.start, bucket.end, [usage("k", "m", "1")], bucket.end)
    (inside,) = store.key_model_totals(day.start, day.end)
    assert inside.cost_usd == Decimal(25)
    spring = calendar_period("day", datetime(2026, 3, 29, 12, tzinfo=UTC), tz)
    for bucket in buckets(spring.start, spring.end, tz):
        store.replace_key_usage(bucket.start, bucket.end, [usage("k", "m", "1")], bucket.end)
    (short,) = store.key_model_totals(spring.start, spring.end)
    assert short.cost_usd == Decimal(23)


def test_window_costs_match_per_window_totals(store: Store) -> None:
    for i in range(30):
        start = T0 + i * H
        store.replace_key_usage(
            start,
            start + H,
            [usage("k1", "m", "0.1234567891"), usage("k2", "m", str(i))],
            start + H,
        )
    ranges = {"a": (T0, T0 + 5 * H), "b": (T0 + 10 * H, T0 + 30 * H), "none": (T0 - H, T0)}
    combined = store.window_costs(ranges)
    for name, (start, end) in ranges.items():
        expected = sorted(
            (t.api_key_id, t.model, t.cost_usd) for t in store.key_model_totals(start, end)
        )
        assert sorted(combined[name]) == expected
    assert combined["none"] == []
    # keys outside `keep` are summed per model under None
    kept = store.window_costs(ranges, keep=["k2"])
    assert sorted(kept["a"], key=str) == sorted(
        [("k2", "m", Decimal(0 + 1 + 2 + 3 + 4)), (None, "m", Decimal("0.1234567891") * 5)],
        key=str,
    )


def test_top_keys_rank_by_spend_then_id(store: Store) -> None:
    rows = [usage(f"k{i}", "m", str(i % 3)) for i in range(6)]
    store.replace_key_usage(T0, T0 + H, rows, T0 + H)
    store.replace_key_usage(T0 - 24 * H, T0 - 23 * H, [usage("old", "m", "9")], T0)
    assert store.top_keys(T0, T0 + H, T0, 4) == ["k2", "k5", "k1", "k4"]
    # a key with usage only earlier in the wider range ranks with zero spend, by id
    assert store.top_keys(T0, T0 + H, T0 - 24 * H, 10) == [
        "k2",
        "k5",
        "k1",
        "k4",
        "k0",
        "k3",
        "old",
    ]
    assert store.top_keys(T0, T0 + H, T0, 10) == ["k2", "k5", "k1", "k4", "k0", "k3"]


# ------------------------------------------------- grouped selections = the row-by-row index

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


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


@settings(max_examples=examples(30), deadline=None)
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
        # budget windows summed by SQLite (and the daily sums; kept between cycles: twice),
        # and from hourly series
        for few in (0, 0, 10_000):
            with patch.object(cycle, "FEW_BUCKETS", few):
                usage = load_usage(store, config, NOW, store.history_start())
            from_store = evaluate(config.rules, usage, {}, NOW, config.tz).all_evaluations()
            # contributors: loaded by the cycle for the members a message names (here: all)
            wanted = {e.usage.parts_query for e in from_store if e.usage and e.usage.parts_query}
            parts = load_contributors(store, config, NOW, list(wanted), KEYS)
            assert summary([with_parts(e, parts) for e in from_store]) == reference, few
        store.close()
