"""The outbox: messages for Slack, queued in the transaction that decided them, sent in
order per route, retried, and kept as dead letters when Slack refuses them for good; and the
channel id Slack named for each bot route."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.store.db import StoreBase, _dt, _ts


@dataclass(frozen=True)
class OutboxItem:
    """A notification waiting for Slack: where to, about which alerts, and the message."""

    route: str
    kind: str  # firing | repeat | resolved | group | test
    alert_ids: list[str]
    thread_alert: str | None  # the alert whose thread a follow-up belongs in
    payload: dict[str, Any]  # {"text": ..., "blocks": [...]}
    created_at: datetime
    id: int = 0
    attempts: int = 0
    next_attempt_at: datetime | None = None  # not before (Slack's Retry-After, settling)
    last_error: str | None = None
    uncertain: bool = False  # a send may have arrived: look in Slack before posting again
    dead: bool = False  # refused for good (a dead letter): kept until its route changes
    target: str | None = None  # dead letters: the route's fingerprint when it was refused


@dataclass(frozen=True)
class Claim:
    """A message this process may send now; ``uncertain``: an earlier send may have arrived."""

    uncertain: bool


def insert_outbox(conn: sqlite3.Connection, items: Sequence[OutboxItem]) -> None:
    """Queue ``items``, in the caller's transaction."""
    conn.executemany(
        "INSERT INTO outbox (created_at, route, kind, alert_ids, thread_alert, payload)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            (
                _ts(i.created_at),
                i.route,
                i.kind,
                json.dumps(i.alert_ids),
                i.thread_alert,
                json.dumps(i.payload),
            )
            for i in items
        ),
    )


class Outbox(StoreBase):
    """Messages waiting for Slack, and the dead letters."""

    def queue(self, items: Sequence[OutboxItem]) -> None:
        """Queue messages that belong to no alert state (digests)."""
        with self._transaction():
            insert_outbox(self._conn, items)

    def queue_once(self, items: Sequence[OutboxItem], mark: str) -> bool:
        """Queue ``items`` unless ``mark`` was queued before (a scheduled digest: once per
        period, whichever replica runs it). False: it was."""
        with self._transaction():
            if self._conn.execute("SELECT 1 FROM meta WHERE key = ?", (mark,)).fetchone():
                return False
            insert_outbox(self._conn, items)
            self._conn.execute("INSERT INTO meta VALUES (?, ?)", (mark, "queued"))
        return True

    def pending_outbox(self, now: datetime) -> list[OutboxItem]:
        """Messages due for (another) attempt, oldest first."""
        return self._outbox("status = 'pending' AND next_attempt_at <= ?", _ts(now))

    def outbox_pending(self) -> list[OutboxItem]:
        """Every message still to be sent, due or not, oldest first."""
        return self._outbox("status = 'pending'")

    def outbox_dead_letters(self) -> list[OutboxItem]:
        """Messages Slack refused for good, oldest first."""
        return self._outbox("status = 'rejected'")

    def _outbox(self, where: str, *params: object) -> list[OutboxItem]:
        rows = self._conn.execute(
            "SELECT id, created_at, route, kind, alert_ids, thread_alert, payload, attempts,"
            " next_attempt_at, last_error, uncertain, status, route_target"
            f" FROM outbox WHERE {where} ORDER BY id",
            params,
        )
        return [
            OutboxItem(
                route,
                kind,
                json.loads(ids),
                thread,
                json.loads(payload),
                _dt(created),
                id=item_id,
                attempts=attempts,
                next_attempt_at=_dt(next_at),
                last_error=error,
                uncertain=bool(uncertain),
                dead=status == "rejected",
                target=target,
            )
            for (
                item_id,
                created,
                route,
                kind,
                ids,
                thread,
                payload,
                attempts,
                next_at,
                error,
                uncertain,
                status,
                target,
            ) in rows
        ]

    def outbox_pending_count(self) -> int:
        return int(
            self._conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        )

    def outbox_dead_letter_count(self) -> int:
        """Messages Slack refused for good (`langdock_outbox_dead_letters`)."""
        sql = "SELECT count(*) FROM outbox WHERE status = 'rejected'"
        return int(self._conn.execute(sql).fetchone()[0])

    def outbox_next_attempt(self) -> datetime | None:
        """When the next message may go out (in the past: now): the earliest wait of a
        route's oldest message (later ones wait behind it); None when nothing is pending."""
        row = self._conn.execute(
            "SELECT min(next_attempt_at) FROM outbox AS o WHERE status = 'pending' AND id ="
            " (SELECT min(id) FROM outbox WHERE status = 'pending' AND route = o.route)"
        ).fetchone()
        return _dt(row[0]) if row and row[0] is not None else None

    def outbox_sent(self, item_id: int) -> None:
        with self._transaction():
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def outbox_sending(
        self, item_id: int, settled: datetime, due: datetime | None = None
    ) -> Claim | None:
        """A send starts: until it is known to have failed it may have arrived, so after a
        crash it is looked for in Slack first, once it ``settled``. Before each try, so a
        slow series of tries never outlasts its own claim. ``due``: the first try, which
        needs the row due by then. None: the message is not this process's to send (sent,
        or not due any more: another term tried it meanwhile; on PostgreSQL, claimed by a
        replica's transaction right now: ``FOR UPDATE SKIP LOCKED``). The claim says whether
        an earlier send may have arrived, as the row says now."""
        lock = " FOR UPDATE SKIP LOCKED" if self.backend == "postgresql" else ""
        due_sql = "" if due is None else " AND next_attempt_at <= ?"
        with self._transaction():
            row = self._conn.execute(
                f"SELECT uncertain FROM outbox WHERE id = ? AND status = 'pending'{due_sql}{lock}",
                (item_id,) if due is None else (item_id, _ts(due)),
            ).fetchone()
            if row is None:
                return None
            self._conn.execute(
                "UPDATE outbox SET uncertain = 1, next_attempt_at = ? WHERE id = ?",
                (_ts(settled), item_id),
            )
        return Claim(uncertain=bool(row[0]))

    def outbox_retry(
        self,
        item_id: int,
        attempts: int,
        next_at: datetime,
        error: str,
        *,
        uncertain: bool = False,
    ) -> None:
        """A failed attempt: not before ``next_at`` (rounded up to the second) again;
        ``uncertain``: it may have arrived all the same."""
        stamp = next_at.timestamp()
        with self._transaction():
            self._conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?,"
                " uncertain = ? WHERE id = ?",
                (attempts, int(stamp) + (stamp % 1 > 0), error, int(uncertain), item_id),
            )

    def outbox_reject(self, item_id: int, error: str, target: str | None = None) -> None:
        """Slack refused the message for good (bad token, unknown channel): a dead letter,
        kept with the fingerprint of the route that refused it (``target``)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE outbox SET status = 'rejected', last_error = ?, route_target = ?,"
                " uncertain = 0 WHERE id = ?",
                (error, target, item_id),
            )

    def outbox_requeue(self, item_id: int, route: str) -> None:
        """A dead letter goes out again, on ``route``, in its old place in the order."""
        with self._transaction():
            self._conn.execute(
                "UPDATE outbox SET status = 'pending', route = ?, route_target = NULL,"
                " next_attempt_at = 0, uncertain = 0 WHERE id = ?",
                (route, item_id),
            )

    def outbox_drop(self, item_id: int, unannounced: Sequence[str] = ()) -> None:
        """Drop a message unsent (its alerts were silenced); the alerts in ``unannounced``
        count as never announced again, so their firing message goes out after the silence."""
        with self._transaction():
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._conn.executemany(
                "DELETE FROM alert_notify WHERE alert_id = ?", ((a,) for a in unannounced)
            )

    def outbox_waiting(self) -> list[tuple[OutboxItem, datetime, str | None]]:
        """Every message not delivered, oldest first, then the dead letters (``item.dead``):
        (item, next attempt, last error)."""
        items = [*self.outbox_pending(), *self.outbox_dead_letters()]
        return [(i, i.next_attempt_at or i.created_at, i.last_error) for i in items]

    def route_channel(self, route: str) -> str | None:
        """The channel id Slack answered for a bot route (`set_route_channel`)."""
        row = self._conn.execute(
            "SELECT channel FROM slack_channels WHERE route = ?", (route,)
        ).fetchone()
        return str(row[0]) if row else None

    def set_route_channel(self, route: str, channel: str) -> None:
        if self.route_channel(route) == channel:
            return
        with self._transaction():
            self._conn.execute(
                "INSERT INTO slack_channels VALUES (?, ?)"
                " ON CONFLICT (route) DO UPDATE SET channel = excluded.channel",
                (route, channel),
            )
