"""The cycle's last load: what `/metrics` shows beyond the engine's result.

`daemon.cycle.run_cycle` calls `load_published` once after evaluation, at the cycle's
instant, and hands the result on in `CycleResult.published`; `daemon.snapshot` builds the
metrics snapshot from the `CycleResult` alone, querying nothing. Between cycles only the
outbox gauges move (the outbox job sends): `load_outbox` is that small refresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from daemon.config import Config
from daemon.notify import silence_matcher
from daemon.rules.engine import EngineResult
from daemon.rules.lifecycle import AlertKey
from daemon.rules.windows import bucket_start
from daemon.spend_windows import COST_WINDOWS, window_ranges
from daemon.store import Store

# per window: (key id, model, USD) of the top keys; the other keys summed per model (key None)
CostRows = dict[str, list[tuple[str | None, str, Decimal]]]


@dataclass(frozen=True)
class OutboxCounts:
    """The outbox's gauges: messages waiting, dead letters, when it may send again."""

    pending: int = 0
    dead_letters: int = 0
    next_attempt: datetime | None = None


@dataclass(frozen=True)
class Published:
    """The store and the configuration as `/metrics` shows them at the cycle's instant."""

    costs: CostRows = field(default_factory=dict)  # the COST_WINDOWS, top keys + other
    key_names: Mapping[str, str] = field(default_factory=dict)
    silenced: tuple[AlertKey, ...] = ()  # firing alerts an active silence covers
    rules: tuple[str, ...] = ()  # the configured rules, in order
    top_keys: int = 200  # metrics.top_keys: per-key and per-member series kept
    outbox: OutboxCounts = OutboxCounts()
    store_bytes: int = 0


def load_outbox(store: Store) -> OutboxCounts:
    return OutboxCounts(
        store.outbox_pending_count(),
        store.outbox_dead_letter_count(),
        store.outbox_next_attempt(),
    )


def load_published(store: Store, config: Config, engine: EngineResult, now: datetime) -> Published:
    """The cost windows of the `metrics.top_keys` keys by month spend (ranked and summed in
    SQL, the rest per model as one "other"), the key names, the firing alerts a silence
    active at ``now`` covers (the one matcher, `daemon.notify.silence`), the outbox and the
    store's size."""
    top_n = config.metrics.top_keys
    ranges = window_ranges(now, config.tz, COST_WINDOWS)
    oldest = min(start for start, _ in ranges.values())
    fresh_from = bucket_start(now, config.tz)
    _, costs = store.cost_windows(ranges, oldest, top_n, fresh_from)
    names = store.api_key_names()
    silenced = silence_matcher(store.silences(now), names, now)
    return Published(
        costs=costs,
        key_names=names,
        silenced=tuple(state.key for state in engine.firing if silenced.state(state)),
        rules=tuple(rule.name for rule in config.rules),
        top_keys=top_n,
        outbox=load_outbox(store),
        store_bytes=store.size_bytes(),
    )
