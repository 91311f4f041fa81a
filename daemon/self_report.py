"""What the running daemon shows about itself: the `/metrics` snapshot after each cycle
(and the counters, the refiner's progress and the outbox between cycles), `/healthz`, and
systemd's watchdog. A part of `Daemon` (daemon/service.py), kept apart from the scheduling."""

from __future__ import annotations

import time
from copy import deepcopy
from dataclasses import replace

import structlog

from daemon.config import Config
from daemon.coverage import BackfillProgress
from daemon.cycle import CycleResult, Readiness, refine_pace
from daemon.langdock import LangdockClient
from daemon.langdock.pacing import Pacer
from daemon.metrics import SnapshotCollector, Stats
from daemon.notify import DeliveryReport
from daemon.published import load_outbox
from daemon.refine import Refiner
from daemon.sdnotify import notify
from daemon.snapshot import build_snapshot, outbox_fields
from daemon.store import Store

log = structlog.get_logger("langdock_budget.daemon")


class SelfReport:
    """The daemon's self-report; `Daemon` provides these attributes."""

    config: Config
    store: Store
    stats: Stats
    collector: SnapshotCollector
    pacer: Pacer
    client: LangdockClient
    background: LangdockClient
    refiner: Refiner
    readiness: Readiness | None
    progress: BackfillProgress | None
    cycle_ended: float
    latest: CycleResult | None
    leading: bool

    def health(self) -> tuple[bool, dict[str, object]]:
        """200 while the last poll is fresh; the body says "backfilling" or "ready"."""
        window = 3 * self.config.poll.interval.total_seconds()
        last = self.stats.last_fetch_success
        age = time.time() - last if last else None
        ok = age is not None and age <= window
        ready, progress = self.readiness, self.progress
        state = "starting" if ready is None or progress is None else "ready"
        if ready is not None and progress is not None and (ready.warming or not progress.done):
            state = "backfilling"
        body: dict[str, object] = {
            "state": state,
            "role": "leader" if self.leading else "follower",
            "last_success_age_s": None if age is None else round(age, 1),
            "max_age_s": window,
        }
        if ready is not None and progress is not None:
            body["backfill"] = progress.describe(self._refine_rate())
            body["warming_rules"] = sorted(ready.warming)
        return ok, body

    def _watchdog(self) -> None:
        """Feed systemd's watchdog only while cycles end: one stuck past its deadline and
        a grace of two intervals stops the feeding, and systemd restarts the daemon."""
        grace = self.config.poll.cycle_timeout + 2 * self.config.poll.interval
        if time.monotonic() - self.cycle_ended <= grace.total_seconds():
            notify("WATCHDOG=1")
        else:
            log.error("watchdog_starved", fix="no cycle ended in time; systemd will restart")

    def _stored(self) -> None:
        self.stats.last_fetch_success = time.time()

    def _record(self, result: CycleResult) -> None:
        poll = result.poll
        stats = self.stats
        stats.polls += 1
        stats.poll_duration = poll.seconds
        stats.rows_ingested += poll.rows
        stats.rate_limit_wait_seconds = self.pacer.waited
        stats.export_duration.update(poll.export_seconds)
        for export, at in poll.export_ok_at.items():
            stats.export_last_success[export] = at.timestamp()
            # a follower's polls are the leader's: fresh while the leader polls
            stats.last_fetch_success = max(stats.last_fetch_success, at.timestamp())
        for failure in poll.failures:
            stats.count(stats.export_errors, (failure.export, failure.reason))
        for client in (self.client, self.background):  # rows left out since the last cycle
            for key, n in client.rejected.items():
                stats.count(stats.rows_rejected, key, n)
            client.rejected.clear()
        stats.last_evaluation = time.time()
        self._count_delivery(result.delivery)

    def _count_delivery(self, report: DeliveryReport) -> None:
        for outcome, n in (
            ("sent", report.sent),
            ("retried", report.deferred),
            ("rejected", report.rejected),
            ("silenced", report.silenced),
            ("found", report.found),  # an uncertain send had arrived: not posted twice
        ):
            self.stats.count(self.stats.notifications, outcome, n)

    def publish(self, result: CycleResult) -> None:
        self.readiness = result.readiness
        if result.readiness is not None:
            self.progress = result.readiness.progress
        if result.published is None:  # the store could not be read: the last series stay
            self.collector.snapshot = replace(self.collector.snapshot, stats=deepcopy(self.stats))
            return
        self.collector.snapshot = build_snapshot(
            result, self.stats, self.progress, self.collector.prefixes, self.collector.snapshot
        )
        self.latest = result

    def _backfill_series(self) -> tuple[int, int] | None:
        progress = self.progress
        return None if progress is None else (progress.fine, progress.buckets)

    def _refine_rate(self) -> float:
        """Calls a minute the background makes: as measured, at most its pace."""
        pace = refine_pace(self.config)
        return min(pace, self.refiner.rate or pace)

    def _progressed(self, progress: BackfillProgress) -> None:
        """The refiner's latest progress, on `/metrics` and `/healthz` between cycles."""
        self.progress = progress
        self.collector.snapshot = replace(self.collector.snapshot, backfill=self._backfill_series())

    def _refresh_outbox(self) -> None:
        """The outbox gauges after the outbox job sent (an outbox count is not a cycle's
        result, so this one refresh between cycles reads the store)."""
        self.collector.snapshot = replace(
            self.collector.snapshot,
            stats=deepcopy(self.stats),
            **outbox_fields(load_outbox(self.store)),
        )
