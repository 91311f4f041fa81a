"""The background backfill of `run`: coarse ranges refined into their hours, and the rest of
the backfill fetched hour by hour, newest first (`coverage.refine_plan`).

It makes one export call at a time, waits while a cycle runs (the poll of the current hour
always goes first) and leaves part of the pace to the poll (its client's ``reserve``). A
range that fails on its own (a damaged file) is tried again later, 5 minutes doubling to an
hour, while the others go on; when Langdock or the store fail for everything it pauses a
minute. Nothing ends it but `stop`. Progress is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

import structlog

from daemon.config import Config
from daemon.coverage import BackfillProgress, Fetch, backfill_progress, first_windows, refine_plan
from daemon.cycle import refine_pace
from daemon.ingest import fetch_into, load_segments, store_failure
from daemon.langdock import AuthError, LangdockClient, LangdockError, TransientError
from daemon.logs import redact
from daemon.store import DB_ERRORS, Store

log = structlog.get_logger("langdock_budget.refine")
RETRY_PAUSE = 60.0  # seconds after Langdock or the store failed for every range
SKIP_FIRST, SKIP_MAX = 300.0, 3600.0  # a range that failed alone waits 5 min, doubling to 1 h
Outcome = Literal["ok", "skip", "pause"]
LOG_EVERY = 60.0  # seconds between progress lines
Sleep = Callable[[float], Awaitable[None]]


class Refiner:
    """Runs until cancelled; `wake` after each cycle (new gaps or a new hour may need work)."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        client: Callable[[], LangdockClient],
        now: Callable[[], datetime],
        idle: asyncio.Event,
        *,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._config, self._client, self._now = config, client, now
        self.idle = idle  # set while no cycle runs
        self._sleep, self._monotonic = sleep, monotonic
        self.woken = asyncio.Event()
        self.fetched = 0
        self.failures = 0
        self.progress: BackfillProgress | None = None
        self._logged_at = -LOG_EVERY
        self.on_progress: Callable[[BackfillProgress], None] | None = None
        self.on_complete: Callable[[], None] | None = None
        self._complete = False  # the completion of the current backfill was reported
        self.rate: float | None = None  # calls a minute it achieved (latency bounds it too)
        self._fetched_at_log = 0
        # ranges that failed on their own: (export, start) → (monotonic retry time, delay)
        self._later: dict[tuple[str, datetime], tuple[float, float]] = {}

    def wake(self) -> None:
        self.woken.set()

    def plan(self) -> list[Fetch]:
        config, at = self._config(), self._now()
        tz, backfill = config.tz, config.poll.backfill
        segments = load_segments(self.store, at, tz, backfill)
        staged = self.store.staged_starts()
        self.progress = backfill_progress(segments, staged, at, tz, backfill)
        return refine_plan(
            at,
            tz,
            backfill=backfill,
            segments=segments,
            staged=staged,
            windows=first_windows(config.rules, at, tz),
        )

    async def drain(self) -> int:
        """Fetch everything the plan holds now, at once (tests, benchmarks); returns how many
        calls failed."""
        failed = 0
        for fetch in self.plan():
            failed += await self._one(fetch) != "ok"
        return failed

    async def run(self) -> None:
        await self.woken.wait()  # the first cycle goes first: it fills the budget windows
        while True:
            try:
                await self._pass()
            except Exception as exc:  # a store hiccup while planning: never end the backfill
                log.error("backfill_error", error=redact(repr(exc)), fix="tried again later")
                await self._pause()

    async def _pass(self) -> None:
        """One plan, carried out until it is done, a cycle ran, or the pause of a failure."""
        self.woken.clear()
        clock = self._monotonic()
        plan = [f for f in self.plan() if self._later.get((f.export, f.start), (0.0,))[0] <= clock]
        if not plan:
            self._log_progress()
            await self.woken.wait()
            return
        for fetch in plan:
            if self.woken.is_set():
                return  # a cycle ran: plan again with what it stored
            await self.idle.wait()
            if self.woken.is_set():
                return  # a cycle ran while we waited: this plan may be stale
            outcome = await self._one(fetch)
            if outcome == "pause":
                await self._pause()
                return
            if outcome == "skip":  # this range alone: the others go on, it is tried later
                _, delay = self._later.get((fetch.export, fetch.start), (0.0, SKIP_FIRST / 2))
                delay = min(2 * delay, SKIP_MAX)
                self._later[(fetch.export, fetch.start)] = (self._monotonic() + delay, delay)
            if self._monotonic() - self._logged_at >= LOG_EVERY:
                self._log_progress()

    async def _one(self, fetch: Fetch) -> Outcome:
        try:
            await fetch_into(self._client(), self.store, fetch, self._now)
        except LangdockError as exc:
            self.failures += 1
            log.warning(
                "backfill_fetch_failed",
                export=fetch.export,
                bucket=fetch.start.isoformat(),
                reason=exc.reason,
                error=str(exc),
            )
            self._record(fetch, exc.reason, redact(str(exc)))
            if isinstance(exc, AuthError):
                await self.woken.wait()  # the cycle reports it too; try again after one
            return "pause" if isinstance(exc, TransientError | AuthError) else "skip"
        except DB_ERRORS as exc:
            self.failures += 1
            message, fix = store_failure(exc)
            log.error("store_write_failed", error=message, fix=fix or "tried again later")
            return "skip" if fix is None else "pause"
        except Exception as exc:  # e.g. a client closed by a reload: try again, keep running
            self.failures += 1
            log.warning("backfill_fetch_failed", export=fetch.export, error=redact(repr(exc)))
            return "pause"
        self.fetched += 1
        self._later.pop((fetch.export, fetch.start), None)
        return "ok"

    def _record(self, fetch: Fetch, reason: str, message: str) -> None:
        try:
            self.store.record_failure(
                fetch.export, fetch.start, fetch.end, self._now(), reason, message
            )
        except DB_ERRORS as exc:  # a broken store must not hide the fetch error
            log.error("store_write_failed", error=str(exc))

    async def _pause(self) -> None:
        """Wait a minute, or less if a cycle wakes us."""
        tasks = {
            asyncio.ensure_future(self.woken.wait()),
            asyncio.ensure_future(self._sleep(RETRY_PAUSE)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    def _log_progress(self) -> None:
        """A progress line at most once a minute, and one when the backfill completes."""
        clock = self._monotonic()
        config, at = self._config(), self._now()
        segments = load_segments(self.store, at, config.tz, config.poll.backfill)
        progress = backfill_progress(
            segments, self.store.staged_starts(), at, config.tz, config.poll.backfill
        )
        finished = progress.done and not self._complete
        self._complete = progress.done  # a later gap (downtime) is reported again
        self.progress = progress
        if finished and self.fetched:
            self._logged_at = clock
            log.info("backfill_complete", buckets=progress.buckets, fetched=self.fetched)
            if self.on_complete is not None:
                self.on_complete()  # a cycle now: the rules that warmed up are judged
        if self.on_progress is not None:
            self.on_progress(progress)
        if not progress.done and clock - self._logged_at >= LOG_EVERY:
            elapsed = clock - self._logged_at
            if self._logged_at > 0 and elapsed < 10 * LOG_EVERY:  # calls a minute, as measured
                self.rate = max(1.0, (self.fetched - self._fetched_at_log) * 60 / elapsed)
            self._logged_at, self._fetched_at_log = clock, self.fetched
            pace = min(refine_pace(config), self.rate or refine_pace(config))
            log.info(
                "backfill_progress",
                done=progress.fine,
                total=progress.buckets,
                percent=round(100 * progress.ratio, 1),
                calls_per_min=round(pace),
                eta_s=round(progress.eta(pace).total_seconds()),
            )
