"""The metrics snapshot of one cycle: what `/metrics` shows until the next cycle swaps in a
new one (the collector reads it atomically; see `daemon.metrics`)."""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from typing import Any

from daemon.config import Config
from daemon.coverage import BackfillProgress
from daemon.cycle import CycleResult
from daemon.metrics import (
    COST_WINDOWS,
    Snapshot,
    Stats,
    bounded_budgets,
    cost_series,
    firing_series,
    key_label,
)
from daemon.notify.silence import silence_matcher
from daemon.report import window_ranges
from daemon.store import Store


def build_snapshot(
    store: Store,
    config: Config,
    result: CycleResult,
    stats: Stats,
    progress: BackfillProgress | None,
    now: datetime,
) -> Snapshot:
    ranges = window_ranges(now, config.tz, COST_WINDOWS)
    # the cost series cover the top keys by month spend; the rest is summed as "other"
    top = store.top_keys(
        *ranges["month"], min(s for s, _ in ranges.values()), config.metrics.top_keys
    )
    totals = store.window_costs(ranges, keep=top)
    names = store.api_key_names()
    labels = {k: key_label(n, k) for k, n in names.items()}
    silenced_alert = silence_matcher(store.silences(now), names, now)
    silenced = tuple(
        sorted(
            {
                (s.key.rule, labels.get(s.key.member, s.key.member))
                for s in result.engine.firing
                if silenced_alert.state(s)
            }
        )
    )
    warming = result.readiness.warming if result.readiness is not None else {}
    return Snapshot(
        silenced=silenced,
        costs=cost_series(totals, names),
        budgets=bounded_budgets(result.engine.budget_tables, config.metrics.top_keys),
        firing=firing_series(result.engine, labels),
        **outbox_fields(store),
        store_bytes=store.size_bytes(),
        stats=deepcopy(stats),  # a scrape never sees the next cycle's counters with these series
        ready=tuple((rule.name, rule.name not in warming) for rule in config.rules),
        backfill=None if progress is None else (progress.fine, progress.buckets),
    )


def outbox_fields(store: Store) -> dict[str, Any]:
    """The outbox's part of a snapshot (also refreshed between cycles)."""
    next_attempt = store.outbox_next_attempt()
    return {
        "outbox_pending": store.outbox_pending_count(),
        "dead_letters": store.outbox_dead_letter_count(),
        "next_attempt": None if next_attempt is None else next_attempt.timestamp(),
    }
