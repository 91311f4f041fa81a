"""The metrics snapshot of one cycle: what `/metrics` shows until the next cycle swaps in a
new one (the collector reads it atomically; see `daemon.metrics`).

Built from the `CycleResult` alone (the engine's result and what the cycle loaded for the
metrics, `daemon.published`) plus the counters: nothing here queries the store.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from daemon.coverage import BackfillProgress
from daemon.cycle import CycleResult
from daemon.metric_series import (
    bounded_anomalies,
    budget_rows,
    cost_series,
    firing_series,
    key_names,
    silenced_series,
)
from daemon.metrics import Snapshot, Stats
from daemon.metrics_text import Prefixes
from daemon.published import OutboxCounts


def build_snapshot(
    result: CycleResult,
    stats: Stats,
    progress: BackfillProgress | None,
    prefixes: Prefixes | None = None,
    last: Snapshot | None = None,
) -> Snapshot:
    """``result.published`` must be loaded (``run_cycle(..., metrics=True)``); ``last``: the
    snapshot it replaces (what did not change is taken from it)."""
    shown = result.published
    if shown is None:
        raise ValueError("the cycle loaded nothing for the metrics (run_cycle metrics=True)")
    costs = cost_series(shown.costs)
    warming = result.readiness.warming if result.readiness is not None else {}
    firing = tuple(result.engine.firing)
    kept = (last.firing_states, last.firing) if last is not None else ((), ())
    return Snapshot(
        silenced=silenced_series(shown.silenced),
        costs=costs,
        key_names=key_names(costs, shown.key_names),
        budgets=budget_rows(result.engine.budget_tables, shown.top_keys),
        anomalies=bounded_anomalies(result.engine, shown.top_keys),
        firing=firing_series(firing, kept),
        firing_states=firing,
        **outbox_fields(shown.outbox),
        store_bytes=shown.store_bytes,
        stats=deepcopy(stats),  # a scrape never sees the next cycle's counters with these series
        ready=tuple((rule, rule not in warming) for rule in shown.rules),
        backfill=None if progress is None else (progress.fine, progress.buckets),
        prefixes=prefixes,
    )


def outbox_fields(outbox: OutboxCounts) -> dict[str, Any]:
    """The outbox's part of a snapshot (also refreshed between cycles, `load_outbox`)."""
    next_attempt = outbox.next_attempt
    return {
        "outbox_pending": outbox.pending,
        "dead_letters": outbox.dead_letters,
        "next_attempt": None if next_attempt is None else next_attempt.timestamp(),
    }
