"""The embedded store: one SQLite file (WAL, migrations through ``PRAGMA user_version``).

`Store` is composed of mixins that share one connection (`db.StoreBase`), one per job, so
every caller keeps writing ``store.method(...)`` and a transaction can span the parts (alert
states and their outbox messages are saved together); a facade would forward ~70 methods.

- `schema`: the tables and their migrations;   `db`: opening, the lock, transactions, money;
- `fetches`: stored ranges and the fetch log;   `usage`: usage goes in (and compaction);
- `rollups`: the daily sums;   `totals`: usage comes out, summed per bucket or window;
- `alerts`: alert state;   `outbox`: messages for Slack;   `silences`: silences.
"""

from __future__ import annotations

from daemon.store.alerts import Alerts
from daemon.store.costs import CostWindows
from daemon.store.db import DB_ERRORS, BackendError, StoreError, join_nanos, split_nanos
from daemon.store.fetches import FetchRecord
from daemon.store.outbox import Outbox, OutboxItem
from daemon.store.schema import SCHEMA_VERSION
from daemon.store.silences import Silence, Silences
from daemon.store.totals import KeyModelTotal
from daemon.store.usage import UsageWrites

__all__ = [
    "DB_ERRORS",
    "SCHEMA_VERSION",
    "BackendError",
    "FetchRecord",
    "KeyModelTotal",
    "OutboxItem",
    "Silence",
    "Store",
    "StoreError",
    "join_nanos",
    "split_nanos",
]


class Store(UsageWrites, CostWindows, Alerts, Outbox, Silences):
    """One SQLite database file; all methods are synchronous and short."""
