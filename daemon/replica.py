"""The daemon as one of several replicas on PostgreSQL: keeping the lease, and what changes
when this replica starts or stops leading (`daemon.leadership`; docs/OPERATIONS.md, "Two
replicas"). Part of `daemon.service.Daemon`; on SQLite there is no lease and it always leads.

Leading: the cycle polls, writes and sends; the outbox, digest and compaction jobs run; the
background backfill runs. Following: the cycle only evaluates what the leader stored (for
`/metrics` and the page) and every job that writes or sends is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from copy import deepcopy
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from daemon.leadership import LeaderOnly, Term
from daemon.notify import Sender
from daemon.sdnotify import notify
from daemon.store import DB_ERRORS

if TYPE_CHECKING:
    from daemon.leadership import Lease
    from daemon.metrics import SnapshotCollector, Stats
    from daemon.refine import Refiner
    from daemon.store import Store

log = structlog.get_logger("langdock_budget.replica")


class Replica:
    """Leadership for `daemon.service.Daemon` (its attributes are declared here)."""

    lease: Lease | None
    leading: bool
    term: Term | None = None
    store: Store
    stats: Stats
    collector: SnapshotCollector
    refiner: Refiner
    refine_task: asyncio.Task[None] | None
    stopping: asyncio.Event
    sender: Sender | None

    def _cycle_now(self) -> None: ...

    def _catch_up_digests(self) -> None: ...

    def _leader_sender(self) -> Sender | None:
        """The sender, refusing to send once this replica's own count of its lease ended."""
        if self.sender is None or not self.leading:
            return None
        return self.sender if self.lease is None else LeaderOnly(self.sender, self.lease.held)

    def _start_refiner(self) -> None:
        if self.refine_task is None or self.refine_task.done():
            self.refine_task = asyncio.get_running_loop().create_task(self.refiner.run())

    async def _stop_refiner(self) -> None:
        task, self.refine_task = self.refine_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stop, whatever
                await task

    async def _keep_lease(self) -> None:
        """Renew (or try to take) the lease every third of its TTL until the daemon stops."""
        assert self.lease is not None
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.lease.ttl / 3)
            if not self.stopping.is_set():
                await self._renew_lease()

    async def _renew_lease(self) -> None:
        assert self.lease is not None
        held = await asyncio.to_thread(self.lease.renew)
        term = self.lease.term if held else None
        if term is not None and term != self.term:
            await self._lead(term)
        elif term is None and self.leading:
            await self._follow()

    async def _lead(self, term: Term) -> None:
        try:
            self.store.lead((term.holder, term.epoch))
        except DB_ERRORS as exc:  # the lease is ours but the store is not reachable: not yet
            log.error("lead_failed", error=str(exc), fix="the next renewal tries again")
            self.store.lead(None)
            return
        self.term, self.leading = term, True
        self._set_leader_gauge()
        log.info("leadership_acquired", holder=term.holder, epoch=term.epoch)
        notify(f"STATUS=leading (lease term {term.epoch})")
        self._start_refiner()
        self._cycle_now()
        if self.lease is not None:
            self._catch_up_digests()

    async def _follow(self) -> None:
        self.term, self.leading = None, False
        self.store.lead(None)
        self._set_leader_gauge()
        await self._stop_refiner()
        notify("STATUS=following: another replica leads")
        log.error(
            "leadership_lost",
            fix="another replica leads now (or PostgreSQL is unreachable); this one serves"
            " /metrics and the page and takes over when it can",
        )

    def _set_leader_gauge(self) -> None:
        self.stats.leader = int(self.leading)
        snapshot: Any = self.collector.snapshot
        self.collector.snapshot = replace(snapshot, stats=deepcopy(self.stats))
