"""`langdock-budget run`: the long-running daemon (docs/OPERATIONS.md).

APScheduler 3's `AsyncIOScheduler` runs three jobs in the event loop: the cycle (poll,
evaluate, notify) every `poll.interval` and once at start, an outbox retry every minute, and a
nightly store compaction. Jobs share one lock, so they never overlap; late runs coalesce.
After each cycle a new metrics snapshot is swapped in. SIGTERM/SIGINT finish the current
cycle (bounded), try the outbox once more, close the store and exit 0; SIGHUP reloads config
and rules, keeping the old ones if the new are invalid. Under systemd it speaks the notify
protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from daemon import __version__
from daemon.config import Config, ConfigError, load_config
from daemon.coverage import BackfillProgress
from daemon.cycle import (
    CycleResult,
    Readiness,
    make_client,
    poll_reserve,
    run_cycle,
    settle_of,
)
from daemon.heap import CycleHeap
from daemon.ingest import ProgressLog
from daemon.jobs import Jobs, utc_now
from daemon.langdock import LangdockClient
from daemon.langdock.pacing import Pacer
from daemon.leadership import Lease
from daemon.logs import redactor
from daemon.metrics import SnapshotCollector, Stats
from daemon.notify import Sender, slack_sender
from daemon.refine import Refiner
from daemon.replica import Replica
from daemon.sdnotify import notify, watchdog_interval
from daemon.self_report import SelfReport
from daemon.state import follower_store, lease_for
from daemon.store import DB_ERRORS, Store
from daemon.web.app import make_app
from daemon.web.auth import Auth
from daemon.web.pages import Site
from daemon.web.server import WebServer

log = structlog.get_logger("langdock_budget.daemon")
STOP_TIMEOUT = 30.0
OUTBOX_EVERY = timedelta(minutes=1)


class Daemon(SelfReport, Replica, Jobs):
    """The running service: config, store, clients, metrics and the scheduler."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        store: Store,
        *,
        sender: Sender | None = None,
        on_cycle: Callable[[CycleResult], None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        """``sender`` replaces Slack (the demo prints messages); ``on_cycle`` sees each
        cycle's result (the demo prints its tables); ``lease``: replicas on PostgreSQL
        (`daemon.leadership`), this one leads only while it holds it."""
        self.config_path = config_path
        self.lease = lease
        self.leading = lease is None  # SQLite: the file lock made this process the writer
        self.config = config
        self.store = store
        self.pacer = Pacer(config.langdock.max_requests_per_minute)
        self.client = make_client(config, self.pacer)
        self.background = make_client(config, self.pacer, poll_reserve(config))
        self.console = sender is not None
        self.sender = sender or slack_sender(config)
        self.on_cycle = on_cycle
        self.idle = asyncio.Event()  # set while no cycle runs: the refiner waits for it
        self.idle.set()
        self.refiner = Refiner(
            store, lambda: self.config, lambda: self.background, utc_now, self.idle
        )
        self.refine_task: asyncio.Task[None] | None = None
        self.cycle_task: asyncio.Task[Any] | None = None
        self.readiness: Readiness | None = None
        self.progress: BackfillProgress | None = None
        self.refiner.on_progress = self._progressed
        self.refiner.on_complete = self._cycle_now
        self.stats = Stats(leader=int(self.leading))
        self.followups: set[asyncio.Task[None]] = set()
        self.collector = SnapshotCollector()
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.scheduler = AsyncIOScheduler(
            timezone="UTC",
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(config.poll.interval.total_seconds())),
            },
        )
        self.started = time.time()
        self.cycle_ended = time.monotonic()  # the start counts as progress
        self.retired: list[LangdockClient] = []  # clients replaced by a reload, to close
        self.cycles = itertools.count(1)
        self.heap = CycleHeap()  # frozen out of garbage collection after each cycle
        self.server: WebServer | None = None
        self.site: Site | None = None
        self.latest: CycleResult | None = None  # the last cycle that evaluated (the page)
        # a cycle asked for while one runs (a reload, the backfill's end): run when it ends
        self.cycle_again = False
        self.followup: asyncio.Task[None] | None = None

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        metrics = self.config.metrics
        self.site = Site(
            config=lambda: self.config,
            latest=lambda: self.latest,
            stats=lambda: self.stats,
            health=self.health,
            clock=utc_now,
        )
        hosts = self.config.web.hosts(metrics.host)
        app = make_app(self.site, Auth(self._web_tokens), self.collector, hosts)
        self.server = await WebServer(app, metrics.host, metrics.port).start()
        log.info(
            "daemon_started",
            version=__version__,
            config=str(self.config_path),
            metrics=f"{self.url}/metrics",
            rules=len(self.config.rules),
        )
        self.scheduler.add_job(
            self.cycle_job,
            "interval",
            id="cycle",
            seconds=self.config.poll.interval.total_seconds(),
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.add_job(
            self.outbox_job,
            "interval",
            id="outbox",
            # a message waiting for an uncertain send to settle goes as soon as it has
            seconds=min(OUTBOX_EVERY, settle_of(self.config)).total_seconds(),
        )
        self.scheduler.add_job(self.compact_job, "cron", id="compact", hour=3, minute=17)
        self._schedule_digests()
        interval = watchdog_interval()
        if interval:
            self.scheduler.add_job(self._watchdog, "interval", id="watchdog", seconds=interval)
        if self.lease is not None:
            await self._keep_lease()  # one replica alone leads from its first cycle
        self.scheduler.start()
        if self.lease is None:
            self._start_refiner()
        notify("READY=1\nSTATUS=started; first poll running")

    @property
    def url(self) -> str:
        """Where `/metrics` and `/healthz` are served (the bound port, if it was 0)."""
        port = self.server.port if self.server is not None else self.config.metrics.port
        host = self.config.metrics.host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        self.stopping.set()
        notify("STOPPING=1")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self._stop_refiner()
        if self.cycle_task is not None and not self.cycle_task.done():
            self.cycle_task.cancel()  # a long first poll: what is stored stays, the rest resumes
        try:
            await asyncio.wait_for(self.lock.acquire(), STOP_TIMEOUT)
        except TimeoutError:
            log.error(
                "stop_timeout",
                waited_s=STOP_TIMEOUT,
                fix="the current cycle did not finish in time; it is abandoned",
            )
        else:
            try:
                if self.leading:
                    await self._deliver()  # one last attempt for queued messages
            except DB_ERRORS as exc:
                log.error("stop_delivery_failed", error=str(exc), fix="sent after the restart")
            finally:
                self.lock.release()
        await self._stop_keeping()
        await self.client.aclose()
        await self.background.aclose()
        if self.server is not None:
            await self.server.stop()
        if self.site is not None:
            self.site.close()
        progress = self.progress
        self.store.close()
        log.info(
            "daemon_stopped",
            backfill=progress.describe(self._refine_rate()) if progress else None,
        )

    async def _close_retired(self) -> None:
        retired, self.retired = self.retired, []
        for client in retired:
            await client.aclose()

    # -------------------------------------------------------------------- jobs

    async def cycle_job(self) -> None:
        if self.stopping.is_set():
            return
        async with self.lock:
            number = next(self.cycles)
            structlog.contextvars.bind_contextvars(cycle=number)
            self.cycle_task = asyncio.current_task()
            self.idle.clear()
            try:
                deadline = self.config.poll.cycle_timeout.total_seconds()
                result = await asyncio.wait_for(
                    run_cycle(
                        self.config,
                        self.store,
                        self.client,
                        utc_now,
                        sender=self._leader_sender(),
                        console=self.console,
                        on_stored=self._stored,
                        progress=ProgressLog(self.pacer),
                        metrics=True,
                        lead=self.leading,
                    ),
                    deadline,
                )
                self._record(result)
                self.publish(result)
                if self.on_cycle is not None:
                    self.on_cycle(result)
                notify(f"STATUS=cycle {number}: {_status_text(result)}")
            except asyncio.CancelledError:
                if not self.stopping.is_set():
                    raise
                # stopping in the middle of a poll: what was stored stays, the rest resumes
            except TimeoutError:
                self.stats.cycle_timeouts += 1
                log.error(
                    "cycle_timeout",
                    deadline_s=deadline,
                    fix="Langdock or a download is stuck; what was stored stays and the next"
                    " cycle goes on; raise poll.cycle_timeout if first starts need longer",
                )
                notify(f"STATUS=cycle {number} abandoned after {deadline:.0f}s")
            except Exception as exc:  # keep running on anything from outside
                log.exception("cycle_failed", error=str(exc))
                notify(f"STATUS=cycle {number} failed: {exc}")
            finally:
                await self._close_retired()
                self.heap.cycle_ended()
                self.cycle_ended = time.monotonic()
                self.cycle_task = None
                self.idle.set()
                self.refiner.wake()
                structlog.contextvars.unbind_contextvars("cycle")
        if self.cycle_again and not self.stopping.is_set():
            # not through the scheduler: it skips a job whose instance is still running
            self.cycle_again = False
            self.followup = asyncio.get_running_loop().create_task(self.cycle_job())

    # -------------------------------------------------------------------- reload

    async def reload(self) -> bool:
        notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("reload_rejected", error=line)
            log.error("reload_kept_old_config", fix="fix the errors above and send SIGHUP again")
            notify("READY=1\nSTATUS=reload rejected; running with the previous config")
            return False
        # old and new secrets alike stay redacted (a message may still carry an old one)
        redactor.set_secrets([*self.config.secrets(), *new.secrets()])
        # Applied at once, not behind the cycle lock: a cycle stuck in a fetch must not hold a
        # reload (poll.cycle_timeout ends it). A running cycle keeps the config and clients it
        # was handed; the old clients are closed once no cycle uses them.
        if new.metrics.listen != self.config.metrics.listen:
            log.warning("reload_metrics_listen_ignored", fix="restart to move the listener")
        if new.langdock != self.config.langdock or new.timezone != self.config.timezone:
            self.retired += [self.client, self.background]
            self.client = make_client(new, self.pacer)
            self.background = make_client(new, self.pacer, poll_reserve(new))
        if new.state != self.config.state:  # path, url, password, lease: the store stays
            log.warning("reload_state_ignored", fix="restart to use another store or lease")
        if not self.console:
            self.sender = slack_sender(new)
        if new.poll.interval != self.config.poll.interval:
            self.scheduler.reschedule_job(
                "cycle", trigger="interval", seconds=new.poll.interval.total_seconds()
            )
        self.config = new.model_copy(update={"state": self.config.state})
        self._schedule_digests()
        if self.idle.is_set():
            await self._close_retired()
        log.info("config_reloaded", rules=len(new.rules))
        notify("READY=1\nSTATUS=config reloaded")
        self._cycle_now()
        return True

    def _web_tokens(self) -> tuple[str | None, str | None]:
        web = self.config.web
        return (
            None if web.admin_token is None else web.admin_token.get_secret_value(),
            None if web.read_token is None else web.read_token.get_secret_value(),
        )

    def _cycle_now(self) -> None:
        """A cycle as soon as possible: now, or right after the one that runs."""
        if not self.scheduler.running or self.stopping.is_set():
            return
        if self.cycle_task is not None:  # the scheduler would skip it: run it after this one
            self.cycle_again = True
            return
        self.scheduler.modify_job("cycle", next_run_time=datetime.now(UTC))


def _status_text(result: CycleResult) -> str:
    poll = result.poll
    text = (
        f"{'ok' if result.ok else 'degraded'}: fetched {poll.fetched}/{poll.planned} buckets,"
        f" {len(poll.failures)} failures, {len(result.engine.firing)} firing,"
        f" {result.delivery.sent} sent"
    )
    return text


async def run_daemon(config_path: Path) -> int:
    config = load_config(config_path)
    redactor.set_secrets(config.secrets())
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    lease = None
    if config.state.url is None:
        store = Store.open(config.state.path, exclusive=True, tz=config.tz)
    else:
        store, lease = follower_store(config), lease_for(config)
    daemon = Daemon(config_path, config, store, lease=lease)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await daemon.start()
    except OSError as exc:
        store.close()
        log.error(
            "start_failed",
            error=str(exc),
            fix=f"is another process listening on {config.metrics.listen}? change metrics.listen",
        )
        return 1
    await daemon.stopping.wait()
    await daemon.stop()
    return 0
