"""Alert state: each alert's lifecycle, when it was last announced, its Slack thread, and
the log of its transitions (for digests)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.store.db import StoreBase, _dt, _opt_dt, _opt_ts, _ts
from daemon.store.outbox import OutboxItem, insert_outbox


class Alerts(StoreBase):
    """The alert states, saved with the messages about them.

    The process that holds the store's lock (`Store.open(exclusive=True)`), or the lease on
    PostgreSQL (`StoreBase.lead`), is its only writer of alert state, so it keeps the last
    states it loaded or saved in memory: a cycle does not read 20,000 states back, and a save
    writes only the states that changed.
    """

    _alerts_known: dict[str, AlertState] | None = None

    def forget_kept(self) -> None:
        super().forget_kept()
        self._alerts_known = None

    def load_alerts(self) -> dict[str, AlertState]:
        if self._alerts_known is not None:
            return dict(self._alerts_known)
        states = self._read_alerts()
        if self.writer:
            self._alerts_known = dict(states)
        return states

    def _read_alerts(self) -> dict[str, AlertState]:
        rows = self._conn.execute(
            "SELECT rule, member, condition, period, status, since, last_true, fired_at,"
            " resolved_at, severity FROM alerts"
        )
        states = {}
        for rule, member, cond, period, status, since, last_true, fired, resolved, sev in rows:
            key = AlertKey(rule, member, cond, period)
            states[key.id] = AlertState(
                key, status, _dt(since), _opt_dt(last_true), _opt_dt(fired), _opt_dt(resolved), sev
            )
        return states

    def save_alerts(
        self,
        states: dict[str, AlertState],
        outbox: Sequence[OutboxItem] = (),
        notified: dict[str, datetime] | None = None,
        events: Sequence[tuple[datetime, str, AlertState]] = (),
    ) -> None:
        """Replace the alert states and queue their notifications, in one transaction.

        Either both the new states and the messages about them are stored, or neither: a
        crash in between can neither lose a message nor leave one about a state never saved.
        """
        with self._transaction():
            self._write_alerts(states)
            insert_outbox(self._conn, outbox)
            self._conn.executemany(
                """INSERT INTO alert_notify (alert_id, last_notified_at) VALUES (?, ?)
                ON CONFLICT (alert_id)
                DO UPDATE SET last_notified_at = excluded.last_notified_at""",
                ((alert_id, _ts(at)) for alert_id, at in (notified or {}).items()),
            )
            self._conn.execute(
                "DELETE FROM alert_notify WHERE alert_id NOT IN (SELECT id FROM alerts)"
            )
            self._conn.executemany(
                "INSERT INTO alert_events VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (_ts(at), kind, s.key.rule, s.key.member, s.key.condition, s.severity)
                    for at, kind, s in events
                ),
            )
        if self.writer:  # committed: these are the stored states now
            self._alerts_known = dict(states)

    def _write_alerts(self, states: dict[str, AlertState]) -> None:
        """The alerts table becomes ``states``: only the changes when the last states are
        known, else every row."""
        known = self._alerts_known
        if known is None:
            self._conn.execute("DELETE FROM alerts")
            changed = list(states.values())
        else:
            gone = [(alert_id,) for alert_id in known if alert_id not in states]
            self._conn.executemany("DELETE FROM alerts WHERE id = ?", gone)
            # a steady alert is the very state kept (`daemon.rules.lifecycle._still_true`)
            changed = [s for i, s in states.items() if (k := known.get(i)) is not s and k != s]
        self._conn.executemany(
            "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    s.key.id,
                    s.key.rule,
                    s.key.member,
                    s.key.condition,
                    s.key.period,
                    s.status,
                    _ts(s.since),
                    _opt_ts(s.last_true),
                    _opt_ts(s.fired_at),
                    _opt_ts(s.resolved_at),
                    s.severity,
                )
                for s in changed
            ),
        )

    def last_notified(self) -> dict[str, datetime]:
        rows = self._conn.execute("SELECT alert_id, last_notified_at FROM alert_notify")
        return {alert_id: _dt(at) for alert_id, at in rows}

    def thread_of(self, alert_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message about ``alert_id`` (bot token routes)."""
        row = self._conn.execute(
            "SELECT channel, ts FROM alert_notify WHERE alert_id = ? AND ts IS NOT NULL",
            (alert_id,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def set_thread(self, alert_id: str, channel: str, ts: str) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE alert_notify SET channel = ?, ts = ? WHERE alert_id = ?",
                (channel, ts, alert_id),
            )

    def alert_events(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, str, str, str, str, str]]:
        """(at, kind, rule, member, condition, severity) of alert transitions in [start, end)."""
        rows = self._conn.execute(
            "SELECT at, kind, rule, member, condition, severity FROM alert_events"
            " WHERE at >= ? AND at < ? ORDER BY at",
            (_ts(start), _ts(end)),
        )
        return [
            (_dt(at), kind, rule, member, cond, sev) for at, kind, rule, member, cond, sev in rows
        ]
