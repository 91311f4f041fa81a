"""Carrying out fetch plans: each `Fetch` (see `daemon.coverage`) is one export call whose
rows replace their range in the store, or wait in its staging area when they refine a
coarse range. `poll` runs the cycle's plan; the background refiner (`daemon.refine`) runs
its own plan one fetch at a time through `fetch_into`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog

from daemon.coverage import EXPORTS, ExportKind, Fetch, Segment, horizon
from daemon.langdock import LangdockError, TransientError
from daemon.langdock.pacing import Pacer
from daemon.logs import redact
from daemon.rules.windows import Period
from daemon.sdnotify import notify
from daemon.store import DB_ERRORS, BackendError, Store

if TYPE_CHECKING:
    from daemon.langdock import LangdockClient

Progress = Callable[[int, int], None]
log = structlog.get_logger("langdock_budget.ingest")


def load_segments(
    store: Store, now: datetime, tz: ZoneInfo, backfill: timedelta
) -> dict[ExportKind, list[Segment]]:
    """Every stored range of both exports that reaches into the backfill."""
    since = horizon(now, tz, backfill)
    return {export: store.segments(export, since) for export in EXPORTS}


@dataclass
class FetchFailure:
    export: ExportKind
    bucket: Period
    reason: str
    message: str

    def __post_init__(self) -> None:
        self.message = redact(self.message)  # it is printed, stored and logged


@dataclass
class PollReport:
    started: datetime
    planned: int = 0
    fetched: int = 0
    rows: int = 0
    calls: int = 0
    seconds: float = 0.0
    aborted: str | None = None
    failures: list[FetchFailure] = field(default_factory=list)
    export_seconds: dict[str, float] = field(default_factory=dict)
    export_ok_at: dict[str, datetime] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # rows left out, one line each

    @property
    def ok(self) -> bool:
        return not self.failures and self.aborted is None


async def poll(
    client: LangdockClient,
    store: Store,
    plan: Sequence[Fetch],
    *,
    now: Callable[[], datetime],
    progress: Progress | None = None,
    on_stored: Callable[[], None] | None = None,
) -> PollReport:
    """Carry out ``plan`` (newest first) into the store; never raises on remote errors.

    Data problems of one range are recorded and the poll goes on; an authentication error,
    exhausted retries or a store that can take no bucket (disk full, locked) end the poll
    early (the next poll tries again); a bucket the store refuses fails alone.
    """
    started = now()
    report = PollReport(started=started)
    wall = time.perf_counter()
    calls_before = client.requests_sent
    client.take_rejections()  # only this poll's
    report.planned = len(plan)
    log.info("poll_started", due_buckets=len(plan))
    for done, fetch in enumerate(plan, start=1):
        export, bucket = fetch.export, _period(fetch)
        began = time.perf_counter()
        try:
            report.rows += await fetch_into(client, store, fetch, now)
            report.fetched += 1
            report.export_ok_at[export] = now()
            if on_stored is not None:
                on_stored()
        except LangdockError as exc:
            failure = FetchFailure(export, bucket, exc.reason, str(exc))
            report.failures.append(failure)
            log.warning(
                "fetch_failed",
                export=export,
                bucket=bucket.start.isoformat(),
                reason=exc.reason,
                error=str(exc),
            )
            _record(store, failure, now())
            if isinstance(exc, TransientError) or exc.reason in ("auth", "bad_request"):
                report.aborted = exc.reason
                break
        except Exception as exc:  # storing failed: this bucket, or every bucket (disk full)
            message, fix = store_failure(exc)
            failure = FetchFailure(export, bucket, "store", message)
            report.failures.append(failure)
            log.error(
                "store_write_failed",
                export=export,
                bucket=bucket.start.isoformat(),
                error=message,
                fix=fix or "the other buckets are stored, this one is fetched again next poll",
            )
            if fix is not None:
                report.aborted = "store"
                break
            _record(store, failure, now())
        finally:
            report.export_seconds[export] = (
                report.export_seconds.get(export, 0.0) + time.perf_counter() - began
            )
        if progress is not None:
            progress(done, len(plan))
    report.calls = client.requests_sent - calls_before
    report.rejected = client.take_rejections()
    report.seconds = time.perf_counter() - wall
    log.info(
        "poll_finished",
        planned=report.planned,
        fetched=report.fetched,
        rows=report.rows,
        calls=report.calls,
        failures=len(report.failures),
        duration_s=round(report.seconds, 3),
        **({"aborted": report.aborted} if report.aborted else {}),
    )
    return report


async def fetch_into(
    client: LangdockClient, store: Store, fetch: Fetch, now: Callable[[], datetime]
) -> int:
    """One export call into the store; returns the row count. Raises `LangdockError`."""
    if fetch.export == "api-keys":
        key_rows = await client.key_usage(fetch.start, fetch.end)
        if _covered_meanwhile(store, fetch):
            return 0
        if not fetch.staged:
            return store.replace_key_usage(fetch.start, fetch.end, key_rows, now())
        count = store.stage_key_usage(fetch.start, fetch.end, key_rows, now())
        if fetch.within is not None:  # the last hour of a coarse range replaces it
            store.promote_staged(*fetch.within, fetch.hours)
        return count
    model_rows = await client.model_usage(fetch.start, fetch.end)
    if _covered_meanwhile(store, fetch):
        return 0
    return store.replace_model_usage(fetch.start, fetch.end, model_rows, now())


def _covered_meanwhile(store: Store, fetch: Fetch) -> bool:
    """A background hour whose range a cycle stored while the call was out (a coarse day,
    say): the cycle's answer stays; writing the hour would drop that whole range."""
    return fetch.why == "history" and store.overlaps(fetch.export, fetch.start, fetch.end)


_STORE_DOWN = (  # SQLite errors no bucket gets past: (error name, message), what to do
    ("SQLITE_FULL", "database or disk is full", "free disk space"),
    ("SQLITE_BUSY", "database is locked", "stop the other process holding the store"),
    ("SQLITE_LOCKED", "table is locked", "stop the other process holding the store"),
    ("SQLITE_READONLY", "readonly database", "make state.path writable for the daemon"),
    ("SQLITE_CANTOPEN", "unable to open", "make state.path writable for the daemon"),
    ("SQLITE_IOERR", "disk i/o error", "check the disk that holds state.path"),
    ("SQLITE_CORRUPT", "malformed", "the store file is damaged; see docs/OPERATIONS.md"),
    ("SQLITE_NOTADB", "not a database", "the store file is damaged; see docs/OPERATIONS.md"),
)


def store_failure(exc: Exception) -> tuple[str, str | None]:
    """What storing a bucket failed on (what SQLite said, or the exception), and what to do
    when no bucket can be stored (disk full, locked, read-only, damaged), else None."""
    if isinstance(exc.__context__, DB_ERRORS):  # e.g. a ROLLBACK of what SQLite undid
        exc = exc.__context__
    if isinstance(exc, BackendError):  # PostgreSQL: a lost connection is tried again
        return f"PostgreSQL said: {exc}", "check that the server in state.url is reachable"
    if not isinstance(exc, sqlite3.Error):
        return f"storing the bucket failed: {type(exc).__name__}: {exc}", None
    name = "_".join((getattr(exc, "sqlite_errorname", None) or "").split("_")[:2])
    said = str(exc).lower()
    for code, text, fix in _STORE_DOWN:
        if name == code or (not name and text in said):
            return f"SQLite said: {exc} ({code})", fix
    return f"SQLite said: {exc}" + (f" ({name})" if name else ""), None


def _period(fetch: Fetch) -> Period:
    return Period(fetch.start.isoformat(), fetch.start, fetch.end)


def _record(store: Store, failure: FetchFailure, at: datetime) -> None:
    try:
        store.record_failure(
            failure.export,
            failure.bucket.start,
            failure.bucket.end,
            at,
            failure.reason,
            failure.message,
        )
    except Exception as exc:  # a broken store must not hide the fetch error
        log.error("store_write_failed", error=str(exc))


class ProgressLog:
    """Progress of a long poll (a first start): a log line at most once a minute, with
    counts and the time left at the current pace, and the systemd status."""

    def __init__(self, pacer: Pacer, every: float = 60.0) -> None:
        self.pacer, self.every = pacer, every
        self.logged = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        clock = time.monotonic()
        if done >= total or clock - self.logged < self.every:
            return
        self.logged = clock
        left = round((total - done) * 60 / max(self.pacer.per_minute, 1))
        log.info("poll_progress", done=done, total=total, eta_s=left)
        notify(f"STATUS=first poll: {done}/{total} ranges, about {left}s left")
