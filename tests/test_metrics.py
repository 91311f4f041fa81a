"""Metrics: snapshot swaps drop vanished series, cardinality is bounded, /healthz."""

from __future__ import annotations

from decimal import Decimal

import httpx

from daemon.metrics import (
    MetricsServer,
    Snapshot,
    SnapshotCollector,
    Stats,
    render,
    top_key_costs,
)


def costs(*keys: str) -> dict[str, list[tuple[str, str, str, Decimal]]]:
    return {"month": [(k, f"name-{k}", "gpt-4o", Decimal(i + 1)) for i, k in enumerate(keys)]}


def test_series_of_a_vanished_key_are_gone_after_the_next_snapshot() -> None:
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(costs=top_key_costs(costs("k1", "k2"), 10))
    assert 'api_key_id="k2"' in render(collector)
    collector.snapshot = Snapshot(costs=top_key_costs(costs("k1"), 10))
    text = render(collector)
    assert 'api_key_id="k1"' in text and 'api_key_id="k2"' not in text


def test_cost_series_are_bounded_to_the_top_keys_plus_other() -> None:
    series = top_key_costs(costs(*(f"k{i:05d}" for i in range(10_000))), 200)
    assert len(series) == 201
    other = [s for s in series if s.api_key_id == "other"]
    assert len(other) == 1 and other[0].value == sum(Decimal(i + 1) for i in range(9_800))
    assert min(s.value for s in series if s.api_key_id != "other") == Decimal(9_801)


def test_hostile_label_values_are_escaped() -> None:
    collector = SnapshotCollector()
    collector.snapshot = Snapshot(
        costs=top_key_costs({"today": [("k", 'evil"} 1\nfake_metric 2', "m", Decimal(1))]}, 5)
    )
    text = render(collector)
    assert "\nfake_metric 2" not in text and 'api_key_name="evil\\"} 1\\nfake_metric 2"' in text


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


def test_healthz_reports_stale_as_503() -> None:
    state = {"ok": False}
    server = MetricsServer(
        "127.0.0.1", 0, SnapshotCollector(), lambda: (state["ok"], {"last_success_age_s": None})
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        stale = httpx.get(f"{base}/healthz")
        assert stale.status_code == 503 and stale.json()["status"] == "stale"
        state["ok"] = True
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert "langdock_outbox_pending" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()
