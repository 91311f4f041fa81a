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

from daemon.leadership import LeaderOnly, LeaseKeeper, Term
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
    keeper: LeaseKeeper | None = None
    followups: set[asyncio.Task[None]]
    leading: bool
    term: Term | None = None
    store: Store
    stats: Stats
    collector: SnapshotCollector
    refiner: Refiner
    refine_task: asyncio.Task[None] | None
    stopping: asyncio.Event
    sender: Sender | None

    if TYPE_CHECKING:  # the other parts' (declared only: a stub here would shadow them)

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
        """Take the lease if it is free, then keep renewing it on a thread of its own
        (`LeaseKeeper`); its changes of term come back to the loop (`_term_changed`)."""
        assert self.lease is not None
        self.store.lead(None)  # fenced until it leads
        loop = asyncio.get_running_loop()
        held = await asyncio.to_thread(self.lease.renew)
        if held and self.lease.term is not None:
            await self._lead(self.lease.term)

        def changed(term: Term | None) -> None:
            loop.call_soon_threadsafe(self._term_changed, term)

        self.keeper = LeaseKeeper(self.lease, changed, self.lease.term if held else None)
        self.keeper.start()

    def _term_changed(self, term: Term | None) -> None:
        if self.stopping.is_set():
            return
        job = self._lead(term) if term is not None else self._follow()
        task = asyncio.get_running_loop().create_task(job)
        self.followups.add(task)
        task.add_done_callback(self.followups.discard)

    async def _stop_keeping(self) -> None:
        """No renewal after this; the lease is given up, so a follower takes over at once."""
        if self.keeper is not None:
            await asyncio.to_thread(self.keeper.stop)
        if self.lease is not None:
            await asyncio.to_thread(self.lease.release)
            self.lease.close()

    async def _lead(self, term: Term) -> None:
        try:
            self.store.lead((term.holder, term.epoch))
        except DB_ERRORS as exc:  # the lease is ours but the store is not reachable
            log.error(
                "lead_failed",
                error=str(exc),
                fix="the lease is given up so another replica can lead; this one tries again",
            )
            self.store.lead(None)
            if self.lease is not None:
                await asyncio.to_thread(self.lease.release)
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
