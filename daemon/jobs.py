"""The daemon's jobs beside the cycle (`daemon.service.Daemon` schedules them): the outbox
retry, the nightly compaction and the digests, each run only by the replica that leads
(`daemon.replica`) and under the daemon's one lock, so they never overlap a cycle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon.config import Config
from daemon.cycle import history_needed, settle_of
from daemon.digest import (
    PeriodName,
    build_digest,
    digest_mark,
    digest_message,
    missed_digests,
    queue_digest,
)
from daemon.notify import DeliveryReport, Sender, deliver, route_for
from daemon.store import Store

log = structlog.get_logger("langdock_budget.daemon")
COMPACT_MARGIN = timedelta(days=2)
DIGEST_GRACE = timedelta(hours=1)  # a new leader sends a digest due this long ago


def utc_now() -> datetime:
    return datetime.now(UTC)


class Jobs:
    """Part of `daemon.service.Daemon` (its attributes are declared here)."""

    config: Config
    store: Store
    lock: asyncio.Lock
    stopping: asyncio.Event
    leading: bool
    scheduler: AsyncIOScheduler
    followups: set[asyncio.Task[None]]

    if TYPE_CHECKING:  # the other parts' (declared only: a stub here would shadow them)

        def _leader_sender(self) -> Sender | None: ...

        def _count_delivery(self, report: DeliveryReport) -> None: ...

        def _refresh_outbox(self) -> None: ...

    async def outbox_job(self) -> None:
        if self.stopping.is_set() or self.lock.locked() or not self.leading:
            return
        async with self.lock:
            if self.store.outbox_pending_count():
                await self._deliver()
                self._refresh_outbox()

    async def compact_job(self) -> None:
        if not self.leading:
            return
        async with self.lock:
            if not self.leading:
                return
            now = utc_now()
            keep_from = min(
                now - self.config.poll.backfill,
                history_needed(self.config.rules, now, self.config.tz),
            )
            removed = self.store.compact(keep_from - COMPACT_MARGIN)
            if now.weekday() == 6:
                self.store.vacuum()
            log.info("store_compacted", removed_rows=removed, size_bytes=self.store.size_bytes())

    def _schedule_digests(self) -> None:
        """One cron job per configured digest, at its local time in the configured zone."""
        for job in self.scheduler.get_jobs():
            if job.id.startswith("digest-"):
                job.remove()
        for index, digest in enumerate(self.config.digests):
            hour, minute = (int(x) for x in digest.at.split(":"))
            self.scheduler.add_job(
                self.digest_job,
                "cron",
                id=f"digest-{index}",
                args=[digest.period],
                hour=hour,
                minute=minute,
                day_of_week=digest.weekday if digest.period == "week" else "*",
                timezone=self.config.tz,
            )

    async def digest_job(self, period: PeriodName, due: datetime | None = None) -> None:
        """The digest of ``period``, as of when it was ``due`` (a late one: `missed_digests`)."""
        route = route_for(None, self.config)
        if route is None or self.stopping.is_set() or not self.leading:
            return
        async with self.lock:
            if not self.leading:
                return
            now = due or utc_now()
            mark = digest_mark(period, now, self.config.tz)
            message = digest_message(
                build_digest(self.store, self.config, now, period), self.config.tz
            )
            if not queue_digest(self.store, route, message, now, mark):
                log.info("digest_already_queued", period=period)
                return
            await self._deliver()
            log.info("digest_sent", period=period)

    def _catch_up_digests(self) -> None:
        """Leading from now on: the digests another replica had to send in the last hour
        but may not have (it died): queued unless it did."""
        missed = missed_digests(self.config.digests, utc_now(), self.config.tz, DIGEST_GRACE)
        for period, due in missed:
            task = asyncio.get_running_loop().create_task(self.digest_job(period, due))
            self.followups.add(task)
            task.add_done_callback(self.followups.discard)

    async def _deliver(self) -> DeliveryReport:
        sender = self._leader_sender()
        if sender is None:
            return DeliveryReport()
        report = await deliver(self.store, sender, utc_now, settle=settle_of(self.config))
        self._count_delivery(report)
        return report
