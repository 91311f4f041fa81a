"""What has been fetched: the stored ranges (segments) of each export, the fetch log, and
since when the store watches the workspace."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.coverage import Segment
from daemon.logs import redact
from daemon.store.db import StoreBase, _dt, _ts

_FETCH_LOG_KEEP = 5000


@dataclass(frozen=True, slots=True)
class FetchRecord:
    export: str
    range_start: datetime
    range_end: datetime
    at: datetime
    ok: bool
    rows: int
    reason: str | None
    message: str | None


class Fetches(StoreBase):
    """The segments each export has stored, and the log of every fetch."""

    def fetched_segments(self, export: str, since: datetime) -> dict[datetime, datetime]:
        """Bucket start → time of the last successful fetch, for buckets from ``since`` on."""
        rows = self._conn.execute(
            "SELECT bucket_start, fetched_at FROM segments WHERE export = ? AND bucket_start >= ?",
            (export, _ts(since)),
        )
        return {_dt(s): _dt(f) for s, f in rows}

    def segments(self, export: str, since: datetime) -> list[Segment]:
        """The ranges of ``export`` stored (one bucket or a coarse range) that end after
        ``since``, oldest first."""
        rows = self._conn.execute(
            "SELECT bucket_start, bucket_end, fetched_at FROM segments"
            " WHERE export = ? AND bucket_end > ? ORDER BY bucket_start",
            (export, _ts(since)),
        )
        return [Segment(_dt(s), _dt(e), _dt(f)) for s, e, f in rows]

    def overlaps(self, export: str, start: datetime, end: datetime) -> bool:
        """Whether a stored range of ``export`` (one bucket or a coarse range) overlaps
        [start, end): one indexed look, however long the stored history."""
        row = self._conn.execute(
            "SELECT 1 FROM segments WHERE export = ? AND bucket_start < ? AND bucket_end > ?"
            " ORDER BY bucket_start DESC LIMIT 1",
            (export, _ts(end), _ts(start)),
        ).fetchone()
        return row is not None

    def stored_buckets(self, start: datetime, end: datetime) -> int:
        """How many hours of key usage (fetched or imported) start in [start, end)."""
        row = self._conn.execute(
            "SELECT count(DISTINCT bucket_start) FROM segments"
            " WHERE export IN ('api-keys', 'import') AND bucket_start >= ? AND bucket_start < ?",
            (_ts(start), _ts(end)),
        ).fetchone()
        return int(row[0])

    def history_start(self) -> datetime | None:
        """The oldest bucket fetched: baselines and forecasts look no further back."""
        row = self._conn.execute(
            "SELECT min(bucket_start) FROM segments WHERE export = 'api-keys'"
        ).fetchone()
        return _dt(row[0]) if row and row[0] is not None else None

    def watch_since(self) -> datetime | None:
        """When this store started watching the workspace (see `start_watching`)."""
        kept = self._meta("watch_since")
        return None if kept is None else _dt(int(kept))

    def start_watching(self, now: datetime, backfill: timedelta) -> None:
        """Remember the first poll: keys and models with usage before it are not new. A
        store from before this was kept counts from the end of its first backfill."""
        if self._meta("watch_since") is not None:
            return
        row = self._conn.execute(
            "SELECT min(bucket_start) FROM segments WHERE export = 'api-keys'"
        ).fetchone()
        since = now if row[0] is None else min(now, _dt(row[0]) + backfill + timedelta(hours=1))
        with self._transaction():
            self._set_meta("watch_since", str(_ts(since)))

    def _mark_segment(self, export: str, s: int, e: int, fetched_at: datetime, rows: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO segments VALUES (?, ?, ?, ?, ?)",
            (export, s, e, _ts(fetched_at), rows),
        )
        self._log(export, s, e, fetched_at, True, rows, None, None)

    def record_failure(
        self, export: str, start: datetime, end: datetime, at: datetime, reason: str, message: str
    ) -> None:
        with self._transaction():
            self._log(export, _ts(start), _ts(end), at, False, 0, reason, message)

    def _log(
        self,
        export: str,
        s: int,
        e: int,
        at: datetime,
        ok: bool,
        rows: int,
        reason: str | None,
        message: str | None,
    ) -> None:
        row = self._conn.execute(
            "INSERT INTO fetch_log (export, range_start, range_end, at, ok, rows, reason, message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                export,
                s,
                e,
                _ts(at),
                int(ok),
                rows,
                reason,
                None if message is None else redact(message),
            ),
        ).fetchone()
        if row[0] % 500 == 0:
            self._conn.execute("DELETE FROM fetch_log WHERE id <= ?", (row[0] - _FETCH_LOG_KEEP,))

    def last_fetches(self, limit: int = 20) -> list[FetchRecord]:
        rows = self._conn.execute(
            "SELECT export, range_start, range_end, at, ok, rows, reason, message"
            " FROM fetch_log ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            FetchRecord(x, _dt(s), _dt(e), _dt(at), bool(ok), rows_, reason, msg)
            for x, s, e, at, ok, rows_, reason, msg in rows
        ]

    def last_success(self, export: str) -> datetime | None:
        row = self._conn.execute(
            "SELECT max(at) FROM fetch_log WHERE export = ? AND ok = 1", (export,)
        ).fetchone()
        return _dt(row[0]) if row and row[0] is not None else None
