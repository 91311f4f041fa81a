"""The ingestion plan and the poll that carries it out.

Usage is kept in buckets (local hours of the configured zone). A poll fetches, for each of the
two exports, only the buckets that are not settled yet:

* the running bucket (every poll: it is still growing);
* a complete bucket never fetched (backfill, or a gap after downtime);
* a complete bucket last fetched while it was still running (once, right after it ends);
* a complete bucket not yet fetched ``settle_after`` past its end (once, for late data).

So a steady-state poll makes 2 export calls, at most 4 when an hour just ended, however many
rules or windows there are: every window is a sum over stored buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from daemon.langdock import ExportKind, LangdockClient, LangdockError, TransientError
from daemon.rules.windows import Period, buckets
from daemon.store import Store

EXPORTS: tuple[ExportKind, ...] = ("api-keys", "models")
Progress = Callable[[int, int], None]
log = structlog.get_logger("langdock_budget.ingest")


def plan_buckets(
    now: datetime,
    tz: ZoneInfo,
    backfill: timedelta,
    settle_after: timedelta,
    fetched: dict[datetime, datetime],
) -> list[Period]:
    """Buckets of one export to fetch at ``now``, newest first (see the module docstring)."""
    due = []
    for bucket in buckets(now - backfill, now, tz):
        last = fetched.get(bucket.start)
        if (
            bucket.end > now
            or last is None
            or last < bucket.end
            or (last < bucket.end + settle_after <= now)
        ):
            due.append(bucket)
    due.reverse()
    return due


@dataclass
class FetchFailure:
    export: ExportKind
    bucket: Period
    reason: str
    message: str


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

    @property
    def ok(self) -> bool:
        return not self.failures and self.aborted is None


async def poll(
    client: LangdockClient,
    store: Store,
    *,
    now: Callable[[], datetime],
    tz: ZoneInfo,
    backfill: timedelta,
    settle_after: timedelta,
    progress: Progress | None = None,
    on_stored: Callable[[], None] | None = None,
) -> PollReport:
    """Fetch every due bucket of both exports into the store; never raises on remote errors.

    Data problems of one bucket are recorded and the poll goes on; an authentication error,
    exhausted retries or a store failure end the poll early (the next poll tries again).
    """
    started = now()
    report = PollReport(started=started)
    wall = time.perf_counter()
    calls_before = client.requests_sent
    work: list[tuple[Period, ExportKind]] = []
    for export in EXPORTS:
        fetched = store.fetched_segments(export, started - backfill - timedelta(hours=2))
        work += [(b, export) for b in plan_buckets(started, tz, backfill, settle_after, fetched)]
    work.sort(
        key=lambda item: item[0].start, reverse=True
    )  # newest first: current windows fill first
    report.planned = len(work)
    log.info("poll_started", due_buckets=len(work))
    for done, (bucket, export) in enumerate(work, start=1):
        began = time.perf_counter()
        try:
            report.rows += await _fetch_bucket(client, store, export, bucket, now)
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
        except Exception as exc:  # the store failed (disk full, locked): stop, keep running
            report.aborted = "store"
            report.failures.append(FetchFailure(export, bucket, "store", str(exc)))
            log.error(
                "store_write_failed",
                export=export,
                error=str(exc),
                fix="check disk space and that no other process holds the store",
            )
            break
        finally:
            report.export_seconds[export] = (
                report.export_seconds.get(export, 0.0) + time.perf_counter() - began
            )
        if progress is not None:
            progress(done, len(work))
    report.calls = client.requests_sent - calls_before
    report.seconds = time.perf_counter() - wall
    log.info(
        "poll_finished",
        planned=report.planned,
        fetched=report.fetched,
        rows=report.rows,
        calls=report.calls,
        failures=len(report.failures),
        aborted=report.aborted,
        duration_s=round(report.seconds, 3),
    )
    return report


async def _fetch_bucket(
    client: LangdockClient,
    store: Store,
    export: ExportKind,
    bucket: Period,
    now: Callable[[], datetime],
) -> int:
    if export == "api-keys":
        key_rows = await client.key_usage(bucket.start, bucket.end)
        return store.replace_key_usage(bucket.start, bucket.end, key_rows, now())
    model_rows = await client.model_usage(bucket.start, bucket.end)
    return store.replace_model_usage(bucket.start, bucket.end, model_rows, now())


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
