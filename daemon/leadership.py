"""Leadership among replicas that share a PostgreSQL store: a lease row, renewed with the
server's clock and a TTL (docs/OPERATIONS.md, "Two replicas").

Exactly one replica holds the lease at a time; it polls Langdock, writes the store and sends
to Slack. The others serve `/metrics`, `/healthz` and the status page from the shared store
and try to take the lease every third of its TTL, so one takes over within about 1.3 TTL of
the leader's death (15 s by default: within 20 s).

- The server decides: ``expires_at`` is the server's clock plus the TTL, and a lease is taken
  only where it expired (or was its taker's). Clocks of the replicas do not matter.
- A leader counts its lease from *before* it asked (local monotonic clock), less a margin, so
  it believes itself leader for less time than the server grants: a deposed or frozen leader
  stops sending before anyone else may start (`Lease.held`).
- Every write of the leader is fenced: its transaction first checks, on the server, that its
  term (``epoch``) still holds the lease (`daemon.store.dialect.FENCE`, FOR KEY SHARE), so a
  leader that lost it writes nothing, whatever its own clock says. A takeover changes the
  unique ``term`` and waits for such a write to end; a renewal (`_RENEW`) never does.
- Renewals run on a thread of their own (`LeaseKeeper`): a long cycle on the event loop
  never lets the lease lapse.

What the lease does not do: it cannot stop a send already on the wire when the lease ends;
the outbox marks every send uncertain before it starts and the next leader looks for it in
Slack first (bot routes) or sends it again (webhooks: the one window left, see
docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from daemon.notify.senders import Attempt, Sender, SendResult
from daemon.store import OutboxItem
from daemon.store.dialect import NOW_MS

if TYPE_CHECKING:
    from daemon.store.pg import PgConnection

log = structlog.get_logger("langdock_budget.leadership")

LEASE = "leader"
MARGIN = 0.2  # of the TTL: what a leader takes off its own count of the lease (at least 1 s)

_KEPT = f"l.holder = excluded.holder AND l.expires_at > {NOW_MS}"  # a renewal, same term
_TAKE = f"""
INSERT INTO leader_lease AS l (name, holder, epoch, term, expires_at, acquired_at)
VALUES (?, ?, 1, ? || '#1', {NOW_MS} + ?, {NOW_MS})
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    epoch = CASE WHEN {_KEPT} THEN l.epoch ELSE l.epoch + 1 END,
    term = CASE WHEN {_KEPT} THEN l.term
                ELSE excluded.holder || '#' || (l.epoch + 1)::text END,
    acquired_at = CASE WHEN {_KEPT} THEN l.acquired_at ELSE excluded.acquired_at END,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at <= {NOW_MS}
RETURNING epoch"""

# A renewal sets expires_at only: an UPDATE of no key column, which the fence's FOR KEY SHARE
# never holds off (an INSERT ... ON CONFLICT whose SET names the unique `term` would be, even
# when `term` keeps its value: the lock is chosen from the columns named)
_RENEW = f"""
UPDATE leader_lease SET expires_at = {NOW_MS} + ?
WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > {NOW_MS}
RETURNING epoch"""
_HOLDER = f"SELECT holder, expires_at - {NOW_MS} FROM leader_lease WHERE name = ?"
_RELEASE = "UPDATE leader_lease SET expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?"


def holder_name() -> str:
    """A lease holder's name: host and pid, and a random part, so a restarted process with
    the same pid (pid 1 in a container) is a new holder, never its predecessor."""
    return f"{socket.gethostname()}:{os.getpid()}/{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Term:
    """A held lease: who, and which term (fences the holder's writes)."""

    holder: str
    epoch: int


class Lease:
    """The lease row, on a connection of its own (a store transaction never delays it)."""

    def __init__(
        self,
        connect: Callable[[], PgConnection],
        ttl: timedelta,
        holder: str | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._conn: PgConnection | None = None
        self.ttl = ttl.total_seconds()
        self.holder = holder or holder_name()
        self._monotonic = monotonic
        self.term: Term | None = None
        self._valid_until = 0.0  # local monotonic instant the lease surely holds until

    def renew(self) -> bool:
        """Take the lease or extend it; True while this process holds it. A failure to reach
        the server is not holding it (it expires where it was held)."""
        asked = self._monotonic()
        try:
            if self._conn is None:
                self._conn = self._connect()
            ttl_ms = int(self.ttl * 1000)
            row = None
            if self.term is not None:  # a renewal: expires_at only, never held off by a write
                row = self._conn.execute(
                    _RENEW, (ttl_ms, LEASE, self.holder, self.term.epoch)
                ).fetchone()
            if row is None:
                taking = (LEASE, self.holder, self.holder, ttl_ms)
                row = self._conn.execute(_TAKE, taking).fetchone()
        except Exception as exc:
            self._drop_connection()
            log.warning(
                "lease_renew_failed",
                error=str(exc),
                fix="check that the PostgreSQL server in state.url is reachable",
            )
            return self.held()
        if row is None:
            self.term = None
            self._valid_until = 0.0
            return False
        self.term = Term(self.holder, int(row[0]))
        self._valid_until = asked + self.ttl - max(1.0, self.ttl * MARGIN)
        return True

    def held(self) -> bool:
        """Whether this process may act as the leader now (its own, shorter count)."""
        return self.term is not None and self._monotonic() < self._valid_until

    def current_holder(self) -> tuple[str | None, float | None]:
        """Who holds the lease and for how many more seconds (None: nobody or unknown)."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            row = self._conn.execute(_HOLDER, (LEASE,)).fetchone()
        except Exception:
            self._drop_connection()
            return None, None
        if row is None or row[1] <= 0:
            return None, None
        return str(row[0]), row[1] / 1000

    def release(self) -> None:
        """Give the lease up at once (a clean stop): a follower need not wait for the TTL."""
        term, self.term = self.term, None
        self._valid_until = 0.0
        if term is None or self._conn is None:
            return
        try:
            self._conn.execute(_RELEASE, (LEASE, term.holder, term.epoch))
        except Exception as exc:
            log.warning("lease_release_failed", error=str(exc))

    def close(self) -> None:
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class LeaseKeeper:
    """Renews a lease every third of its TTL on a thread of its own, so a busy event loop (a
    long cycle at 10,000 keys) never delays a renewal; ``on_change`` hears of each change
    of term (None: not held any more), on that thread."""

    def __init__(
        self, lease: Lease, on_change: Callable[[Term | None], None], last: Term | None = None
    ) -> None:
        self.lease = lease
        self._on_change = on_change
        self._last = last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No renewal after this returns (the caller may release the lease)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> Term | None:
        """Renew now; the term held after it."""
        held = self.lease.renew()
        term = self.lease.term if held else None
        if term != self._last:
            self._last = term
            self._on_change(term)
        return term

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl / 3):
            try:
                self.check()
            except Exception as exc:
                log.error("lease_keeper_failed", error=str(exc))


class LeaderOnly:
    """A sender that sends only while ``held()``: a leader whose lease ran out (frozen, cut
    off from PostgreSQL) stops before a follower may start sending."""

    def __init__(self, sender: Sender, held: Callable[[], bool]) -> None:
        self._sender = sender
        self._held = held

    def send(
        self,
        route: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
        attempt: Attempt | None = None,
    ) -> SendResult:
        if not self._held():
            return SendResult(False, error="this replica's lease ended: not sent", elsewhere=True)
        return self._sender.send(route, payload, thread, attempt)

    def target(self, route: str) -> str | None:
        return self._sender.target(route)

    def route_now(self, item: OutboxItem) -> str | None:
        return self._sender.route_now(item)
