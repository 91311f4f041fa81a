"""Metrics: snapshot swaps drop vanished series, cardinality is bounded, the snapshot is
built from the cycle's result alone, /healthz."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from daemon.config import Config, load_config
from daemon.cycle import CycleResult, evaluate_rules
from daemon.ingest import PollReport
from daemon.langdock.csv import KeyUsage
from daemon.metric_series import LABEL_MAX, CostSeries, cost_series
from daemon.metrics import (
    Snapshot,
    SnapshotCollector,
    Stats,
    render,
)
from daemon.notify import DeliveryReport
from daemon.published import Published, load_published
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.engine import EngineResult
from daemon.rules.types import Member
from daemon.rules.windows import Period
from daemon.service import Daemon
from daemon.snapshot import build_snapshot
from daemon.store import OutboxItem, Store
from tests.conftest import store_with_history

NOW_METRICS = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def metrics_store(tmp_path: Path, rules: str) -> tuple[Config, Store]:
    """A UTC config with ``rules`` (and whatever else the text adds) and its store, empty
    but for its history filled at NOW_METRICS (`fill_history`)."""
    (tmp_path / "config.yaml").write_text(
        "langdock: {api_key: sk-x}\ntimezone: UTC\nstate: {path: state.db}\n" + rules
    )
    config = load_config(tmp_path / "config.yaml", {})
    return config, store_with_history(config, NOW_METRICS, tz=config.tz)


def published_text(engine: EngineResult, published: Published, now: datetime) -> str:
    """`/metrics` after a cycle that evaluated ``engine`` and loaded ``published``."""
    result = CycleResult(PollReport(started=now), engine, DeliveryReport(), published=published)
    collector = SnapshotCollector()
    collector.snapshot = build_snapshot(result, Stats(), None)
    return render(collector)


def costs(*keys: str) -> tuple[CostSeries, ...]:
    totals: dict[str, list[tuple[str | None, str, Decimal]]] = {
        "month": [(k, "gpt-4o", Decimal(i + 1)) for i, k in enumerate(keys)]
    }
    return cost_series(totals)


def test_series_of_a_vanished_key_are_gone_after_the_next_snapshot() -> None:
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(costs=costs("k1", "k2"))
    assert 'api_key_id="k2"' in render(collector)
    collector.snapshot = Snapshot(costs=costs("k1"))
    text = render(collector)
    assert 'api_key_id="k1"' in text and 'api_key_id="k2"' not in text


def test_cost_series_are_bounded_to_the_top_keys_plus_other(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    keys = [f"k{i:05d}" for i in range(10_000)]
    rows = [KeyUsage(k, k, "gpt-4o", 1, Decimal(i + 1)) for i, k in enumerate(keys)]
    store.replace_key_usage(start, start + timedelta(hours=1), rows, start)
    ranges = {"month": (start, start + timedelta(hours=1))}
    top = store.top_keys(*ranges["month"], start, 200)
    series = cost_series(store.window_costs(ranges, keep=top))
    assert len(series) == 201
    other = [s for s in series if s.api_key_id == "other"]
    assert len(other) == 1 and other[0].value == sum(Decimal(i + 1) for i in range(9_800))
    assert min(s.value for s in series if s.api_key_id != "other") == Decimal(9_801)
    store.close()


def test_hostile_label_values_are_escaped() -> None:
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(
        costs=(CostSeries("k", "m", "today", Decimal(1)),),
        key_names=(("k", 'evil"} 1\nfake_metric 2'),),
    )
    text = render(collector)
    assert "\nfake_metric 2" not in text and 'api_key_name="evil\\"} 1\\nfake_metric 2"' in text
    assert 'langdock_api_key_info{api_key_id="k",api_key_name="evil' in text


def test_counters_and_required_names() -> None:
    stats = Stats()
    stats.count(stats.export_errors, ("models", "truncated"), 2)
    stats.count(stats.notifications, "rejected")
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(outbox_pending=3, stats=stats)
    text = render(collector)
    assert 'langdock_export_errors_total{export="models",reason="truncated"} 2.0' in text
    assert 'langdock_notifications_total{outcome="rejected"} 1.0' in text
    assert "langdock_outbox_pending 3.0" in text
    assert "langdock_budget_daemon_build_info{version=" in text


def test_a_huge_key_name_is_cut_in_labels_and_the_id_kept_whole(tmp_path: Path) -> None:
    """A 60,000-character key name: every label that carries it is bounded, ids are exact."""
    huge = "n" * 60_000
    config, store = metrics_store(
        tmp_path, "rules: [{name: keys, kind: budget, each: api_key, window: day, limit_usd: 1}]\n"
    )
    now = NOW_METRICS
    start = now.replace(minute=0)
    store.replace_key_usage(
        start, start + timedelta(hours=1), [KeyUsage("key_big", huge, "m", 1, Decimal(5))], now
    )
    engine = evaluate_rules(store, config, now)
    published = load_published(store, config, engine, now)
    text = published_text(engine, published, now)
    assert len(text) < 10_000 and huge not in text
    cut = "n" * (LABEL_MAX - 1) + "\u2026"
    assert f'langdock_api_key_info{{api_key_id="key_big",api_key_name="{cut}"}} 1.0' in text
    assert 'langdock_budget_spend_usd{rule="keys",scope="key_big"} 5.0' in text  # ids only
    store.close()


def test_the_snapshot_is_built_from_the_cycles_result_alone(tmp_path: Path) -> None:
    """The cycle loads what `/metrics` shows (costs of the top keys, names, silences, the
    outbox); building the snapshot afterwards reads nothing, the store may be gone."""
    config, store = metrics_store(
        tmp_path,
        "metrics: {top_keys: 1}\n"
        "rules: [{name: keys, kind: budget, each: api_key, window: day, limit_usd: 1}]\n",
    )
    now = NOW_METRICS
    start = now.replace(minute=0)
    rows = [KeyUsage("k1", "web", "m", 1, Decimal(5)), KeyUsage("k2", "batch", "m", 1, Decimal(2))]
    store.replace_key_usage(start, start + timedelta(hours=1), rows, now)
    store.add_silence("keys", "bat*", now - timedelta(hours=1), now + timedelta(hours=1), "x")
    engine = evaluate_rules(store, config, now)
    published = load_published(store, config, engine, now)
    store.close()
    assert [key.member for key in published.silenced] == ["k2"]  # matched by the key's name
    text = published_text(engine, published, now)
    assert 'langdock_alert_silenced{rule="keys",scope="k2"} 1.0' in text
    assert 'langdock_cost_usd{api_key_id="k1",model="m",window="today"} 5.0' in text
    assert 'langdock_cost_usd{api_key_id="other",model="m",window="7d"} 2.0' in text
    assert 'langdock_rule_ready{rule="keys"} 1.0' in text


def test_between_cycles_only_the_outbox_and_counters_move(tmp_path: Path) -> None:
    """A cycle that could not read the store keeps the last series (new counters); the outbox
    job's refresh reads the outbox alone."""
    (tmp_path / "config.yaml").write_text(
        "langdock: {api_key: sk-x}\nstate: {path: state.db}\nmetrics: {listen: '127.0.0.1:0'}\n"
    )
    config = load_config(tmp_path / "config.yaml", {})
    store = Store.open(config.state.path, tz=config.tz)
    daemon = Daemon(tmp_path / "config.yaml", config, store)
    daemon.collector.snapshot = Snapshot(costs=costs("k1"))
    daemon.stats.polls = 2
    now = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    failed = CycleResult(PollReport(started=now), EngineResult(), DeliveryReport(), store_error="x")
    daemon.publish(failed)
    text = render(daemon.collector)
    assert 'api_key_id="k1"' in text and "langdock_polls_total 2.0" in text
    store.queue([OutboxItem("r", "firing", ["a"], None, {"text": "t"}, now)])
    daemon._refresh_outbox()
    text = render(daemon.collector)
    assert "langdock_outbox_pending 1.0" in text and 'api_key_id="k1"' in text
    store.close()


def test_each_family_carries_its_own_unit(tmp_path: Path) -> None:
    """A request budget is published as `_requests`, never as `_usd`; an anomaly on response
    time in seconds, with its expected value and score."""
    config, store = metrics_store(
        tmp_path, "rules: [{name: calls, kind: budget, window: day, limit_requests: 10}]\n"
    )
    now = NOW_METRICS
    start = now.replace(minute=0)
    store.replace_key_usage(
        start, start + timedelta(hours=1), [KeyUsage("k1", "web", "m", 4, Decimal(5))], now
    )
    engine = evaluate_rules(store, config, now)
    published = load_published(store, config, engine, now)
    store.close()
    result = CycleResult(PollReport(started=now), engine, DeliveryReport(), published=published)
    slow = AnomalyEvaluation(
        rule="slow",
        member=Member("gpt-4o", "gpt-4o", "model"),
        metric="response_time_ms",
        window=Period("w", start, start + timedelta(hours=1)),
        baseline=Period("b", start - timedelta(days=14), start),
        seasonality="none",
        points=100,
        observed=Decimal(2500),
        expected=Decimal(1800),
        score=5.5,
        conditions=(),
    )
    snap = replace(build_snapshot(result, Stats(), None), anomalies=(slow,))
    collector = SnapshotCollector()
    collector.snapshot = snap
    text = render(collector)
    assert 'langdock_budget_used_requests{rule="calls",scope="workspace"} 4.0' in text
    assert 'langdock_budget_limit_requests{rule="calls",scope="workspace"} 10.0' in text
    assert 'langdock_budget_utilization_ratio{rule="calls",scope="workspace"} 0.4' in text
    assert 'rule="calls"' not in "".join(line for line in text.splitlines() if "_usd{" in line)
    assert 'langdock_anomaly_observed_seconds{rule="slow",scope="gpt-4o"} 2.5' in text
    assert 'langdock_anomaly_expected_seconds{rule="slow",scope="gpt-4o"} 1.8' in text
    assert 'langdock_anomaly_score{rule="slow",scope="gpt-4o"} 5.5' in text
