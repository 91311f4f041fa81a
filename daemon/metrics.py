"""Prometheus metrics and `/healthz` (docs/OPERATIONS.md "Prometheus"; docs/DESIGN.md "Metrics").

A custom collector renders an immutable `Snapshot` that the daemon replaces after each
cycle, so a scrape never sees half an update and series of keys that vanished are simply not
in the next snapshot. Counters live in `Stats`, updated from the event loop only; each new
snapshot copies them. Only prometheus-client's public API is used (`Collector`, the metric
families, `generate_latest`); the large gauge families are written by `daemon.metrics_text`.
`daemon.web.app` serves the text at `/metrics`, beside `/healthz` and the status page.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.langdock.checks import REASONS as REJECT_REASONS
from daemon.metric_series import BudgetRow, CostSeries, Family, series_families
from daemon.metrics_text import Prefixes, gauge_text
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.lifecycle import AlertState

EXPORTS = ("api-keys", "models")
# Slack outcomes (`SelfReport._count_delivery`): published at 0 from the start, so rate() and
# increase() see the first one after a restart
OUTCOMES = ("sent", "retried", "rejected", "silenced", "found")


@dataclass
class Stats:
    """Cumulative counters of the daemon's own health (event loop only). Label values known
    in advance start at 0; export errors carry open-ended reasons and appear when counted."""

    export_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    export_last_success: dict[str, float] = field(default_factory=dict)
    export_duration: dict[str, float] = field(default_factory=dict)
    notifications: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    rows_ingested: int = 0
    rate_limit_wait_seconds: float = 0.0
    polls: int = 0
    poll_duration: float = 0.0
    last_evaluation: float = 0.0
    last_fetch_success: float = 0.0  # any bucket stored: the daemon is making progress
    cycle_timeouts: int = 0
    leader: int = 1  # replicas on PostgreSQL: 1 while this one holds the lease
    rows_rejected: dict[tuple[str, str], int] = field(  # export, reason
        default_factory=lambda: {(e, r): 0 for e in EXPORTS for r in REJECT_REASONS}
    )

    def count(self, table: dict[Any, int], key: Any, n: int = 1) -> None:
        if n:
            table[key] = table.get(key, 0) + n


@dataclass(frozen=True)
class Snapshot:
    costs: tuple[CostSeries, ...] = ()
    key_names: tuple[tuple[str, str], ...] = ()  # (id, name) of the keys in `costs`
    budgets: tuple[BudgetRow, ...] = ()  # the budget members shown (`budget_rows`)
    anomalies: tuple[AnomalyEvaluation, ...] = ()
    firing: tuple[tuple[str, str, str, str], ...] = ()  # rule, scope, condition, severity
    # the firing alerts `firing` was made of (`metric_series.firing_series`: kept while same)
    firing_states: tuple[AlertState, ...] = field(default=(), compare=False, repr=False)
    silenced: tuple[tuple[str, str], ...] = ()
    outbox_pending: int = 0
    store_bytes: int = 0
    stats: Stats = field(default_factory=Stats)
    ready: tuple[tuple[str, bool], ...] = ()  # rule, history complete (not warming up)
    dead_letters: int = 0  # messages Slack refused for good
    next_attempt: float | None = None  # unix time the outbox may send again
    backfill: tuple[int, int] | None = None  # buckets in hour by hour, buckets in all
    prefixes: Prefixes | None = field(default=None, compare=False, repr=False)  # the collector's

    @cached_property
    def series_parts(self) -> tuple[str, ...]:
        """The per-key, per-rule and per-alert families (tens of thousands of lines with
        10,000 keys), rendered once per snapshot instead of on every scrape, a text each (an
        unchanged family's is the last snapshot's, not a copy); a family with no samples is
        left out."""
        return tuple(
            gauge_text(*family, prefixes=self.prefixes) for family in self.families() if family[3]
        )

    @property
    def series_text(self) -> str:
        return "".join(self.series_parts)

    def families(self) -> list[Family]:
        return series_families(
            self.costs, self.key_names, self.budgets, self.anomalies, self.firing
        )


class SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.prefixes = Prefixes()  # label text kept across its snapshots (`daemon.metrics_text`)

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the data; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one atomic read; the daemon swaps the whole object
        stats = snap.stats
        silenced = GaugeMetricFamily(
            "langdock_alert_silenced",
            "1 while a firing alert is silenced",
            labels=["rule", "scope"],
        )
        for rule, scope in snap.silenced:
            silenced.add_metric([rule, scope], 1)
        yield silenced
        last = GaugeMetricFamily(
            "langdock_export_last_success_timestamp_seconds",
            "Last successful fetch of the export",
            labels=["export"],
        )
        for export, ts in sorted(stats.export_last_success.items()):
            last.add_metric([export], ts)
        yield last
        errors = CounterMetricFamily(
            "langdock_export_errors", "Failed export fetches", labels=["export", "reason"]
        )
        for (export, reason), n in sorted(stats.export_errors.items()):
            errors.add_metric([export, reason], n)
        yield errors
        rejected = CounterMetricFamily(
            "langdock_export_rows_rejected",
            "Export rows left out: a value out of bounds (the rest of the file is stored)",
            labels=["export", "reason"],
        )
        for (export, reason), n in sorted(stats.rows_rejected.items()):
            rejected.add_metric([export, reason], n)
        yield rejected
        duration = GaugeMetricFamily(
            "langdock_export_duration_seconds",
            "Time spent fetching the export in the last poll",
            labels=["export"],
        )
        for export, seconds in sorted(stats.export_duration.items()):
            duration.add_metric([export], seconds)
        yield duration
        notes = CounterMetricFamily(
            "langdock_notifications", "Slack notifications by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(stats.notifications.items()):
            notes.add_metric([outcome], n)
        yield notes
        yield GaugeMetricFamily(
            "langdock_outbox_pending", "Notifications waiting for Slack", value=snap.outbox_pending
        )
        yield GaugeMetricFamily(
            "langdock_outbox_dead_letters",
            "Notifications Slack refused for good (shown in status; re-sent after a route fix)",
            value=snap.dead_letters,
        )
        if snap.next_attempt is not None:
            yield GaugeMetricFamily(
                "langdock_outbox_next_attempt_timestamp_seconds",
                "When the outbox may send again (a Slack Retry-After is honoured)",
                value=snap.next_attempt,
            )
        ready = GaugeMetricFamily(
            "langdock_rule_ready",
            "1 when the rule's history is complete, 0 while it warms up (it cannot fire)",
            labels=["rule"],
        )
        for rule, ok in snap.ready:
            ready.add_metric([rule], 1 if ok else 0)
        yield ready
        if snap.backfill is not None:
            fine, total = snap.backfill
            yield GaugeMetricFamily(
                "langdock_backfill_progress_ratio",
                "Share of the backfill's buckets (both exports) stored hour by hour",
                value=fine / total if total else 1.0,
            )
            yield GaugeMetricFamily(
                "langdock_backfill_remaining_buckets",
                "Buckets of the backfill still to fetch hour by hour",
                value=total - fine,
            )
        info = GaugeMetricFamily(
            "langdock_budget_daemon_build_info", "Version of the daemon", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "langdock_poll_duration_seconds", "Duration of the last poll", value=stats.poll_duration
        )
        yield CounterMetricFamily("langdock_polls", "Polls run", value=stats.polls)
        yield GaugeMetricFamily(
            "langdock_leader",
            "1 on the replica that polls and sends (holds the lease; SQLite: always), else 0",
            value=stats.leader,
        )
        yield CounterMetricFamily(
            "langdock_cycle_timeouts",
            "Cycles abandoned at poll.cycle_timeout (a stuck fetch)",
            value=stats.cycle_timeouts,
        )
        yield CounterMetricFamily(
            "langdock_rows_ingested", "CSV rows stored", value=stats.rows_ingested
        )
        yield CounterMetricFamily(
            "langdock_rate_limit_wait_seconds",
            "Time the client-side rate limiter made requests wait",
            value=stats.rate_limit_wait_seconds,
        )
        yield GaugeMetricFamily(
            "langdock_store_size_bytes",
            "Size of the store (the SQLite file, or the PostgreSQL database)",
            value=snap.store_bytes,
        )
        yield GaugeMetricFamily(
            "langdock_last_evaluation_timestamp_seconds",
            "When the rules were last evaluated",
            value=stats.last_evaluation,
        )


def render(collector: SnapshotCollector, registry: CollectorRegistry | None = None) -> str:
    """The `/metrics` text: the snapshot's pre-rendered series, then the collector's (and
    the registry's) small families through prometheus-client."""
    if registry is None:
        registry = CollectorRegistry()
        registry.register(collector)
    return "".join((*collector.snapshot.series_parts, generate_latest(registry).decode()))
