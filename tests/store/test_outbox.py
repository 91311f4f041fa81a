"""The outbox across migrations: rows Slack refused before schema 8 stay dead letters."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from daemon.store import Store

T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


def test_a_schema_7_store_keeps_its_refused_rows_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:  # back to schema 7, with a row refused back then
        conn.execute("ALTER TABLE outbox DROP COLUMN uncertain")
        conn.execute("ALTER TABLE outbox DROP COLUMN route_target")
        conn.execute("DROP TABLE slack_channels")
        conn.execute("ALTER TABLE silences DROP COLUMN created_by")  # schema 9
        conn.execute("ALTER TABLE key_usage_daily DROP COLUMN rows")  # schema 10
        conn.execute("DROP TABLE leader_lease")  # schema 11
        conn.execute(
            "INSERT INTO outbox (created_at, route, kind, alert_ids, payload, status,"
            " last_error) VALUES (?, 'webhook:default', 'digest', '[]', '{}', 'rejected', 'x')",
            (int(T0.timestamp()),),
        )
        conn.execute("PRAGMA user_version=7")
    store = Store.open(path)
    (dead,) = store.outbox_dead_letters()
    assert dead.dead and dead.target is None and not dead.uncertain
    assert store.outbox_dead_letter_count() == 1 and store.route_channel("bot:#x") is None
    store.close()
