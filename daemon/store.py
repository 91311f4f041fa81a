"""The embedded usage store: SQLite, WAL, schema migrations through ``PRAGMA user_version``.

Usage lives in buckets (one local hour of the configured zone, see `rules.windows`) per
(api_key_id, model), and per model for the models export. A fetch replaces a whole bucket in
one transaction, so fetching the same hour twice gives the same totals and a failed or
truncated fetch leaves the earlier data untouched. Money is never a float: key usage cost is
split into whole nano-dollars (an INTEGER that SQLite sums exactly and fast) plus, only when
the amount has more than nine decimals, the exact decimal rest as text, summed by a `Decimal`
aggregate. The sum of both is exactly the sum of the amounts Langdock reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from fnmatch import fnmatchcase
from functools import partial
from operator import is_not, itemgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from daemon.coverage import Segment
from daemon.exports import TOKEN_FIELDS, KeyUsage, ModelUsage
from daemon.logs import redact
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.usage import Grouped, ModelPoint, Raw, SelectionFilter
from daemon.rules.windows import calendar_period

SCHEMA_VERSION = 8

# the hourly (or coarse-range) key usage; the staging area has the same columns
_KEY_USAGE_COLUMNS = """(
        bucket_start INTEGER NOT NULL,
        bucket_end INTEGER NOT NULL,
        api_key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        cost_rest TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER, cached_prompt_tokens INTEGER,
        cache_creation_tokens INTEGER, no_cache_tokens INTEGER,
        PRIMARY KEY (bucket_start, api_key_id, model)
    ) WITHOUT ROWID;"""

_MIGRATIONS: dict[int, str] = {
    1: f"""
    CREATE TABLE key_usage {_KEY_USAGE_COLUMNS}
    CREATE TABLE model_usage (
        bucket_start INTEGER NOT NULL,
        bucket_end INTEGER NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        byok INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        cost_usd TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER, cached_prompt_tokens INTEGER,
        cache_creation_tokens INTEGER, no_cache_tokens INTEGER,
        errors TEXT,
        response_time_ms TEXT,
        PRIMARY KEY (bucket_start, model, provider, byok)
    ) WITHOUT ROWID;
    CREATE TABLE api_keys (
        api_key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE models (
        model TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE segments (
        export TEXT NOT NULL,
        bucket_start INTEGER NOT NULL,
        bucket_end INTEGER NOT NULL,
        fetched_at INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        PRIMARY KEY (export, bucket_start)
    ) WITHOUT ROWID;
    CREATE TABLE fetch_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        export TEXT NOT NULL,
        range_start INTEGER NOT NULL,
        range_end INTEGER NOT NULL,
        at INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        reason TEXT,
        message TEXT
    );
    """,
    2: """
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        member TEXT NOT NULL,
        condition TEXT NOT NULL,
        period TEXT NOT NULL,
        status TEXT NOT NULL,
        since INTEGER NOT NULL,
        last_true INTEGER,
        fired_at INTEGER,
        resolved_at INTEGER,
        severity TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    3: """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL,
        route TEXT NOT NULL,
        kind TEXT NOT NULL,
        alert_ids TEXT NOT NULL,
        thread_alert TEXT,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT
    );
    CREATE TABLE alert_notify (
        alert_id TEXT PRIMARY KEY,
        last_notified_at INTEGER NOT NULL,
        channel TEXT,
        ts TEXT
    ) WITHOUT ROWID;
    """,
    4: """
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL,
        member TEXT,
        starts INTEGER NOT NULL,
        ends INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    5: """
    CREATE TABLE alert_events (
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        rule TEXT NOT NULL,
        member TEXT NOT NULL,
        condition TEXT NOT NULL,
        severity TEXT NOT NULL
    );
    CREATE INDEX alert_events_at ON alert_events (at);
    """,
    6: """
    CREATE TABLE key_usage_daily (
        day_start INTEGER NOT NULL,
        api_key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        cost_rest TEXT,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (day_start, api_key_id, model)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE key_usage_buckets (
        bucket_start INTEGER PRIMARY KEY,
        requests INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        cost_rest TEXT,
        tokens INTEGER NOT NULL
    );
    INSERT INTO key_usage_buckets
        SELECT bucket_start, sum(requests), sum(cost_nanos),
               dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL),
               sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
        FROM key_usage GROUP BY bucket_start;
    """,
    7: f"""
    CREATE TABLE staged_key_usage {_KEY_USAGE_COLUMNS}
    CREATE TABLE staged_segments (
        bucket_start INTEGER PRIMARY KEY,
        bucket_end INTEGER NOT NULL,
        fetched_at INTEGER NOT NULL,
        rows INTEGER NOT NULL
    );
    """,
    # the outbox: a send that may have arrived (checked in Slack before posting again), the
    # fingerprint of a dead letter's route when Slack refused it (re-queued when it changes),
    # and each bot route's channel id as Slack named it (history is read by id)
    8: """
    ALTER TABLE outbox ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN route_target TEXT;
    CREATE TABLE slack_channels (route TEXT PRIMARY KEY, channel TEXT NOT NULL) WITHOUT ROWID;
    """,
}
# A segment of the api-keys export is one bucket or a coarse range inside one local day
# (docs/DESIGN.md, "First start: coarse to fine"); its rows carry the range's start. The
# hours that refine a coarse range wait in staged_key_usage / staged_segments until all of
# them are in, then replace it in one transaction: no sum ever counts a range twice.
# key_usage_buckets holds the workspace's sum of each hour (the series of workspace forecasts);
# key_usage_daily holds the sums of key_usage per local day (in the zone meta "rollup_tz") for
# every day before meta "rolled_until"; window totals read those whole days from it and the
# rest from the hourly buckets. Rewriting an older bucket moves "rolled_until" back.
_HOURLY_TOKENS = "coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)"
_FETCH_LOG_KEEP = 5000


class StoreError(Exception):
    """The store cannot be opened or written; the message says what to do."""


class _DecimalSum:
    """SQLite aggregate ``dec_sum(text)``: exact decimal sum, returned as text."""

    def __init__(self) -> None:
        self.total = Decimal(0)
        self.seen = False

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)
            self.seen = True

    def finalize(self) -> str | None:
        return str(self.total) if self.seen else None


_BILLION = Decimal(1_000_000_000)
_WIDE = Context(prec=200)  # wide enough that scaling any amount by 1e9 is exact


def split_nanos(amount: object) -> tuple[int, str | None]:
    """``Decimal("0.0123456789")`` → ``(12345678, "9E-10")``: whole nano-dollars, exact rest."""
    assert isinstance(amount, Decimal)
    scaled = _WIDE.multiply(amount, _BILLION)
    nanos = int(scaled)  # truncates toward zero
    if nanos == scaled:  # the common case: no finer part
        return nanos, None
    rest = _WIDE.subtract(amount, _WIDE.divide(Decimal(nanos), _BILLION))
    return nanos, str(rest)


def join_nanos(nanos: int | None, rest: str | None) -> Decimal:
    """The exact inverse of summing `split_nanos` parts."""
    total = Decimal(nanos or 0).scaleb(-9)
    return total + Decimal(rest) if rest is not None else total


def _ts(instant: datetime) -> int:
    return int(instant.timestamp())


def _dt(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _opt_dt(seconds: int | None) -> datetime | None:
    return None if seconds is None else _dt(seconds)


def _opt_ts(instant: datetime | None) -> int | None:
    return None if instant is None else _ts(instant)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


@dataclass(frozen=True, slots=True)
class KeyModelTotal:
    api_key_id: str
    api_key_name: str
    model: str
    requests: int
    cost_usd: Decimal
    tokens: int


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
class Silence:
    """Slack stays quiet for alerts of ``rule`` (and ``member``, a glob) until ``ends``."""

    id: int
    rule: str
    member: str | None
    starts: datetime
    ends: datetime
    reason: str

    def active(self, now: datetime) -> bool:
        return self.starts <= now < self.ends

    def matches(self, rule: str, member_id: str, label: str) -> bool:
        return rule == self.rule and (
            self.member is None
            or fnmatchcase(member_id, self.member)
            or fnmatchcase(label, self.member)
        )


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


class Store:
    """One SQLite database file; all methods are synchronous and short."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int | None = None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path: Path, *, exclusive: bool = False, tz: ZoneInfo | None = None) -> Store:
        """Open (and create, mode 0600) the store.

        ``exclusive`` is for the processes that write and notify (`run`, `once`, `demo`): only
        one may use a store at a time, or alerts would be sent twice. Readers (`status`,
        `check`) don't take the lock.
        """
        lock_fd = None
        try:
            if str(path) != ":memory:":
                path.parent.mkdir(parents=True, exist_ok=True)
                if exclusive:
                    lock_fd = _lock(path)
                if not path.exists():
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.create_aggregate("dec_sum", 1, _DecimalSum)  # type: ignore[arg-type]
            conn.create_function("dec_add", 2, _dec_add, deterministic=True)
            store = cls(conn, path, lock_fd)
            store._migrate()
            store._use_zone(tz, rebuild=exclusive)
        except StoreError:
            _unlock(lock_fd)
            raise
        except sqlite3.DatabaseError as exc:
            _unlock(lock_fd)
            raise StoreError(
                f"cannot open the store {path}: {exc}; check state.path, its permissions, and"
                " that no other langdock-budget process uses it"
            ) from None
        except OSError as exc:
            _unlock(lock_fd)
            raise StoreError(
                f"cannot create the store {path}: {exc.strerror}; check state.path and permissions"
            ) from None
        return store

    def close(self) -> None:
        self._conn.close()
        _unlock(self._lock_fd)
        self._lock_fd = None

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} has schema {version}, newer than this version knows"
                f" ({SCHEMA_VERSION}); upgrade langdock-budget or point state.path elsewhere"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={target}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    # ------------------------------------------------------------- daily roll-up

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _use_zone(self, tz: ZoneInfo | None, *, rebuild: bool) -> None:
        """Keep the daily sums in ``tz`` (None: the zone they are kept in, or UTC)."""
        kept = self._meta("rollup_tz")
        if tz is None:
            tz, rebuild = ZoneInfo(kept or "UTC"), kept is None
        self.tz = tz
        self._days: dict[int, int] = {}  # bucket start → start of its local day
        self._rollups = kept == tz.key
        if not self._rollups and rebuild:  # a new store, or the configured zone changed
            with self._transaction():
                self._conn.execute("DELETE FROM key_usage_daily")
                self._set_meta("rollup_tz", tz.key)
                self._set_meta("rolled_until", "0")
            self._rollups = True

    def _day_start(self, bucket: int) -> int:
        day = self._days.get(bucket)
        if day is None:
            day = self._days[bucket] = _ts(calendar_period("day", _dt(bucket), self.tz).start)
        return day

    def _rolled_until(self) -> int:
        return int(self._meta("rolled_until") or 0) if self._rollups else 0

    def refresh_rollups(self, now: datetime) -> int:
        """Sum every finished local day not summed yet; return how many days were summed."""
        if not self._rollups:
            return 0
        today = _ts(calendar_period("day", now, self.tz).start)
        since = self._rolled_until()
        if since >= today:
            return 0
        buckets = self._conn.execute(
            "SELECT DISTINCT bucket_start FROM key_usage"
            " WHERE bucket_start >= ? AND bucket_start < ?",
            (since, today),
        )
        days = sorted({self._day_start(bucket) for (bucket,) in buckets})
        with self._transaction():
            for day in days:
                end = _ts(calendar_period("day", _dt(day), self.tz).end)
                self._conn.execute(
                    f"""INSERT INTO key_usage_daily
                        SELECT ?, api_key_id, model, sum(requests), sum(cost_nanos),
                               dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL),
                               sum({_HOURLY_TOKENS})
                        FROM key_usage WHERE bucket_start >= ? AND bucket_start < ?
                        GROUP BY api_key_id, model""",
                    (day, day, end),
                )
            self._set_meta("rolled_until", str(today))
        return len(days)

    def _sources(self, start: datetime, end: datetime) -> list[tuple[str, str, str, int, int]]:
        """[start, end) as (table, time column, tokens, from, to): the summed whole days from
        the daily table, the rest from the hourly buckets."""
        s, e = _ts(start), _ts(end)
        first = calendar_period("day", start, self.tz)
        d0 = _ts(first.start) if _ts(first.start) == s else _ts(first.end)
        dn = min(_ts(calendar_period("day", end, self.tz).start), self._rolled_until())
        hourly = ("key_usage", "bucket_start", _HOURLY_TOKENS)
        if d0 >= dn:
            return [(*hourly, s, e)]
        parts = [(*hourly, s, d0), ("key_usage_daily", "day_start", "tokens", d0, dn)]
        parts.append((*hourly, dn, e))
        return [p for p in parts if p[3] < p[4]]

    # ---------------------------------------------------------------- writes

    def replace_key_usage(
        self,
        start: datetime,
        end: datetime,
        rows: Iterable[KeyUsage],
        fetched_at: datetime,
        *,
        export: str = "api-keys",
    ) -> int:
        """Replace the range [start, end) of the grouped api-keys export (one bucket or a
        coarse range); return the row count. Any stored range that overlaps it is dropped
        whole (its uncovered rest becomes a gap the poller fetches again).

        ``export="import"`` marks data from a per-call file: the poller still fetches the
        bucket from the API later (only "api-keys" marks count as fetched).
        """
        rows = list(rows)
        s, e = _ts(start), _ts(end)
        with self._transaction():
            self._clear_key_range(s, e)
            self._insert_key_rows("key_usage", s, e, rows)
            self._known_keys(rows, s, e)
            self._sum_buckets(s, e)
            self._mark_segment(export, s, e, fetched_at, len(rows))
        return len(rows)

    def stage_key_usage(
        self, start: datetime, end: datetime, rows: Iterable[KeyUsage], fetched_at: datetime
    ) -> int:
        """Keep one hour that refines a coarse range aside until `promote_staged`."""
        rows = list(rows)
        s, e = _ts(start), _ts(end)
        with self._transaction():
            self._conn.execute("DELETE FROM staged_key_usage WHERE bucket_start = ?", (s,))
            self._insert_key_rows("staged_key_usage", s, e, rows)
            self._known_keys(rows, s, e)
            self._conn.execute(
                "INSERT OR REPLACE INTO staged_segments VALUES (?, ?, ?, ?)",
                (s, e, _ts(fetched_at), len(rows)),
            )
            self._log("api-keys", s, e, fetched_at, True, len(rows), None, None)
        return len(rows)

    def staged_starts(self) -> list[datetime]:
        return [_dt(b) for (b,) in self._conn.execute("SELECT bucket_start FROM staged_segments")]

    def promote_staged(self, start: datetime, end: datetime, hours: Sequence[datetime]) -> bool:
        """Replace the coarse range [start, end) by its staged ``hours`` once all are in."""
        s, e = _ts(start), _ts(end)
        staged = {
            b
            for (b,) in self._conn.execute(
                "SELECT bucket_start FROM staged_segments WHERE bucket_start >= ? AND"
                " bucket_start < ?",
                (s, e),
            )
        }
        if staged != {_ts(h) for h in hours}:
            return False
        span = "bucket_start >= ? AND bucket_start < ?"
        with self._transaction():
            self._clear_key_range(s, e)
            self._conn.execute(
                f"INSERT INTO key_usage SELECT * FROM staged_key_usage WHERE {span}", (s, e)
            )
            self._sum_buckets(s, e)
            self._conn.execute(
                "INSERT OR REPLACE INTO segments SELECT 'api-keys', bucket_start, bucket_end,"
                f" fetched_at, rows FROM staged_segments WHERE {span}",
                (s, e),
            )
            for table in ("staged_key_usage", "staged_segments"):
                self._conn.execute(f"DELETE FROM {table} WHERE {span}", (s, e))
        return True

    def _clear_key_range(self, s: int, e: int) -> None:
        """Drop the key usage of [s, e) and of every stored range that overlaps it."""
        lo, hi = self._conn.execute(
            "SELECT min(bucket_start), max(bucket_end) FROM segments"
            " WHERE export IN ('api-keys', 'import') AND bucket_start < ? AND bucket_end > ?",
            (e, s),
        ).fetchone()
        lo, hi = min(s, lo if lo is not None else s), max(e, hi if hi is not None else e)
        if lo < self._rolled_until():  # a summed day changes: sum it (and later ones) again
            day = self._day_start(lo)
            self._conn.execute("DELETE FROM key_usage_daily WHERE day_start >= ?", (day,))
            self._set_meta("rolled_until", str(day))
        span = "bucket_start >= ? AND bucket_start < ?"
        for table in ("key_usage", "key_usage_buckets"):
            self._conn.execute(f"DELETE FROM {table} WHERE {span}", (lo, hi))
        self._conn.execute(
            f"DELETE FROM segments WHERE export IN ('api-keys', 'import') AND {span}", (lo, hi)
        )

    def _insert_key_rows(self, table: str, s: int, e: int, rows: list[KeyUsage]) -> None:
        # Only the token columns that have a value in this bucket are bound (the others
        # default to NULL): binding is a good part of the cost of storing 100,000 rows.
        tokens = [
            (name, index)
            for index, name in enumerate(TOKEN_FIELDS, start=5)
            if any(map(_is_set, map(itemgetter(index), rows)))
        ]
        token_indexes = [index for _, index in tokens]
        columns = ["api_key_id", "model", "requests", "cost_nanos", "cost_rest"]
        columns += [name for name, _ in tokens]
        # the same (key, model) twice in one export: the rows add up
        self._conn.executemany(
            f"""INSERT INTO {table} (bucket_start, bucket_end, {", ".join(columns)})
            VALUES ({s}, {e}{", ?" * len(columns)})
            ON CONFLICT (bucket_start, api_key_id, model) DO UPDATE SET
                requests = requests + excluded.requests,
                cost_nanos = cost_nanos + excluded.cost_nanos,
                cost_rest = dec_add(cost_rest, excluded.cost_rest),
                {", ".join(f"{n} = dec_add({n}, excluded.{n})" for n in TOKEN_FIELDS)}""",
            (
                (
                    row[0],
                    row[2],
                    row[3],
                    *split_nanos(row[4]),
                    *[row[index] for index in token_indexes],
                )
                for row in rows
            ),
        )

    def _known_keys(self, rows: list[KeyUsage], s: int, e: int) -> None:
        names = {row.api_key_id: row.api_key_name for row in rows}
        self._conn.executemany(
            """INSERT INTO api_keys VALUES (?, ?, ?, ?)
            ON CONFLICT (api_key_id) DO UPDATE SET
                name = CASE WHEN excluded.last_seen >= api_keys.last_seen
                            THEN excluded.name ELSE api_keys.name END,
                first_seen = min(api_keys.first_seen, excluded.first_seen),
                last_seen = max(api_keys.last_seen, excluded.last_seen)""",
            ((key_id, name, s, e) for key_id, name in names.items()),
        )
        self._upsert_models({row.model for row in rows if row.model}, s, e)

    def _sum_buckets(self, s: int, e: int) -> None:
        """The workspace's sum of each stored range that starts in [s, e)."""
        self._conn.execute(
            f"""INSERT OR REPLACE INTO key_usage_buckets
                SELECT bucket_start, sum(requests), sum(cost_nanos),
                       dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL),
                       sum({_HOURLY_TOKENS})
                FROM key_usage WHERE bucket_start >= ? AND bucket_start < ?
                GROUP BY bucket_start""",
            (s, e),
        )

    def replace_model_usage(
        self, start: datetime, end: datetime, rows: Iterable[ModelUsage], fetched_at: datetime
    ) -> int:
        """Replace the bucket [start, end) of the models export; return row count."""
        totals: dict[tuple[str, str, bool], list[object]] = {}
        count = 0
        for row in rows:
            count += 1
            key = (row.model, row.provider, row.byok)
            latency_weight = (
                row.response_time_ms * row.requests if row.response_time_ms is not None else None
            )
            vals = [
                row.requests,
                row.cost_usd,
                *(getattr(row, f) for f in TOKEN_FIELDS),
                row.errors,
                latency_weight,
            ]
            if key in totals:
                _accumulate(totals[key], vals)
            else:
                totals[key] = vals
        s, e = _ts(start), _ts(end)
        with self._transaction():
            self._conn.execute(
                "DELETE FROM model_usage WHERE bucket_start >= ? AND bucket_start < ?", (s, e)
            )
            self._conn.executemany(
                "INSERT INTO model_usage VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    (
                        s,
                        e,
                        model,
                        provider,
                        int(byok),
                        v[0],
                        _text(v[1]),
                        *v[2:7],
                        _text(v[7]),
                        _text(_mean(v[8], v[0])),
                    )
                    for (model, provider, byok), v in totals.items()
                ),
            )
            self._upsert_models({model for model, _, _ in totals}, s, e)
            self._mark_segment("models", s, e, fetched_at, count)
        return count

    def _upsert_models(self, models: set[str], s: int, e: int) -> None:
        self._conn.executemany(
            """INSERT INTO models VALUES (?, ?, ?) ON CONFLICT (model) DO UPDATE SET
                first_seen = min(models.first_seen, excluded.first_seen),
                last_seen = max(models.last_seen, excluded.last_seen)""",
            ((m, s, e) for m in models),
        )

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
        cur = self._conn.execute(
            "INSERT INTO fetch_log (export, range_start, range_end, at, ok, rows, reason, message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        )
        if cur.lastrowid is not None and cur.lastrowid % 500 == 0:
            self._conn.execute(
                "DELETE FROM fetch_log WHERE id <= ?", (cur.lastrowid - _FETCH_LOG_KEEP,)
            )

    # ---------------------------------------------------------------- reads

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

    def stored_buckets(self, start: datetime, end: datetime) -> int:
        """How many hours of key usage (fetched or imported) start in [start, end)."""
        row = self._conn.execute(
            "SELECT count(DISTINCT bucket_start) FROM segments"
            " WHERE export IN ('api-keys', 'import') AND bucket_start >= ? AND bucket_start < ?",
            (_ts(start), _ts(end)),
        ).fetchone()
        return int(row[0])

    def key_model_totals(self, start: datetime, end: datetime) -> list[KeyModelTotal]:
        """Spend per (key, model) over buckets that start in [start, end)."""
        token_sum = " + ".join(f"coalesce(sum(u.{f}), 0)" for f in TOKEN_FIELDS[:2])
        rows = self._conn.execute(
            f"""SELECT u.api_key_id, coalesce(k.name, u.api_key_id), u.model,
                       sum(u.requests), sum(u.cost_nanos),
                       dec_sum(u.cost_rest) FILTER (WHERE u.cost_rest IS NOT NULL), {token_sum}
                FROM key_usage u LEFT JOIN api_keys k ON k.api_key_id = u.api_key_id
                WHERE u.bucket_start >= ? AND u.bucket_start < ?
                GROUP BY u.api_key_id, u.model""",
            (_ts(start), _ts(end)),
        )
        return [
            KeyModelTotal(key_id, name, model, int(req), join_nanos(nanos, rest), int(tokens))
            for key_id, name, model, req, nanos, rest, tokens in rows
        ]

    def member_points(self, selection: SelectionFilter, start: datetime, end: datetime) -> Grouped:
        """One selection's members, per bucket in [start, end), summed by SQLite: 10,000 keys
        x 10 models x 2 hours come back as 20,000 rows per key, not 200,000."""
        return self._grouped(_MEMBER_COLUMN[selection.by], selection, start, end)

    def member_parts(
        self, selection: SelectionFilter, member_id: str, start: datetime, end: datetime
    ) -> Grouped:
        """A member's contributors (the models of a key, the keys of a model or scope)."""
        part = "model" if selection.by == "api_key" else "api_key_id"
        if selection.by is None:  # the workspace (or a scope): every selected row
            return self._grouped(part, selection, start, end)
        only = "api_key_id = ?" if selection.by == "api_key" else "model = ?"
        return self._grouped(part, selection, start, end, only, member_id)

    def _grouped(
        self,
        group: str,
        selection: SelectionFilter,
        start: datetime,
        end: datetime,
        condition: str = "",
        *values: object,
    ) -> Grouped:
        kept, kept_params = _selection_sql(selection)
        where = ["bucket_start >= ? AND bucket_start < ?", *([condition] if condition else [])]
        # the whole workspace hour by hour: one stored sum per hour
        table, tokens = "key_usage", _HOURLY_TOKENS
        if group == "'*'" and not kept and not condition:
            table, tokens = "key_usage_buckets", "tokens"
        value = {
            "cost_usd": "sum(cost_nanos), dec_sum(cost_rest) FILTER (WHERE cost_rest IS NOT NULL)",
            "requests": "sum(requests), NULL",
            "tokens": f"sum({tokens}), NULL",
        }[selection.metric]
        grouped: Grouped = {}
        for member, bucket, total, rest in self._conn.execute(
            f"""SELECT {group}, bucket_start, {value} FROM {table}
                WHERE {" AND ".join(where + kept)} GROUP BY 1, 2""",
            [_ts(start), _ts(end), *values, *kept_params],
        ):
            points = grouped.get(member)
            if points is None:
                points = grouped[member] = {}
            points[bucket] = total if rest is None else total + Decimal(rest).scaleb(9)
        return grouped

    def _windows_pass(
        self, windows: Sequence[tuple[datetime, datetime]], columns: str
    ) -> tuple[str, list[object], list[tuple[str, list[object]]]]:
        """One pass over the rows several windows need: the merged hourly edges and daily
        sums as a UNION ALL (``columns`` may use ``{tokens}``), plus for each window the
        condition (and its parameters) that picks its rows from that pass."""
        sources = [self._sources(start, end) for start, end in windows]
        parts = [
            f"SELECT 0 AS kind, bucket_start AS t, {columns.format(tokens=_HOURLY_TOKENS)}"
            " FROM key_usage WHERE 0"
        ]
        values: list[object] = []
        for table, time, tokens in (
            ("key_usage", "bucket_start", _HOURLY_TOKENS),
            ("key_usage_daily", "day_start", "tokens"),
        ):
            spans = _merge([(lo, hi) for srcs in sources for t, _, _, lo, hi in srcs if t == table])
            for lo, hi in spans:
                parts.append(
                    f"SELECT {int(table != 'key_usage')} AS kind, {time} AS t,"
                    f" {columns.format(tokens=tokens)} FROM {table}"
                    f" WHERE {time} >= ? AND {time} < ?"
                )
                values += [lo, hi]
        picks: list[tuple[str, list[object]]] = []
        for srcs in sources:
            terms = [f"(kind = {int(t != 'key_usage')} AND t >= ? AND t < ?)" for t, *_ in srcs]
            picks.append((" OR ".join(terms) or "0", [v for *_, lo, hi in srcs for v in (lo, hi)]))
        return " UNION ALL ".join(parts), values, picks

    def member_totals(
        self, selection: SelectionFilter, windows: Sequence[tuple[datetime, datetime]]
    ) -> list[dict[str, Raw]]:
        """Each member's total over each window (cost in nano-dollars), in one pass; whole
        days come from the daily sums: a month of 10,000 keys without 7 million rows."""
        member = _MEMBER_COLUMN[selection.by]
        value = {"cost_usd": "cost_nanos", "requests": "requests", "tokens": "{tokens}"}
        rest = "cost_rest" if selection.metric == "cost_usd" else "NULL"
        kept, kept_params = _selection_sql(selection)
        inner, values, picks = self._windows_pass(
            windows,
            f"{member} AS member, {value[selection.metric]} AS v, {rest} AS rest,"
            " api_key_id, model",
        )
        sums, params = _window_sums(picks)
        totals: list[dict[str, Raw]] = [{} for _ in windows]
        for row in self._conn.execute(
            f"""SELECT member, {sums} FROM ({inner}) {"WHERE " + " AND ".join(kept) if kept else ""}
                GROUP BY member""",
            [*params, *values, *kept_params],
        ):
            for index, total, extra in _picked(row, 1, len(windows)):
                totals[index][row[0]] = total if extra is None else total + Decimal(extra).scaleb(9)
        return totals

    def model_points(self, start: datetime, end: datetime) -> list[ModelPoint]:
        rows = self._conn.execute(
            """SELECT bucket_start, model, requests, errors, response_time_ms FROM model_usage
               WHERE bucket_start >= ? AND bucket_start < ?""",
            (_ts(start), _ts(end)),
        )
        return [
            ModelPoint(_dt(s), model, req, _dec(errors), _dec(latency))
            for s, model, req, errors, latency in rows
        ]

    def history_start(self) -> datetime | None:
        """The oldest bucket fetched: baselines and forecasts look no further back."""
        row = self._conn.execute(
            "SELECT min(bucket_start) FROM segments WHERE export = 'api-keys'"
        ).fetchone()
        return _dt(row[0]) if row and row[0] is not None else None

    def load_alerts(self) -> dict[str, AlertState]:
        rows = self._conn.execute(
            "SELECT rule, member, condition, period, status, since, last_true, fired_at,"
            " resolved_at, severity FROM alerts"
        )
        states = {}
        for rule, member, cond, period, status, since, last_true, fired, resolved, sev in rows:
            key = AlertKey(rule, member, cond, period)
            states[key.id] = AlertState(
                key, status, _dt(since), _opt_dt(last_true), _opt_dt(fired), _opt_dt(resolved), sev
            )
        return states

    def save_alerts(
        self,
        states: dict[str, AlertState],
        outbox: Sequence[OutboxItem] = (),
        notified: dict[str, datetime] | None = None,
        events: Sequence[tuple[datetime, str, AlertState]] = (),
    ) -> None:
        """Replace the alert states and queue their notifications, in one transaction.

        Either both the new states and the messages about them are stored, or neither: a
        crash in between can neither lose a message nor leave one about a state never saved.
        """
        with self._transaction():
            self._replace_alerts(states)
            self._insert_outbox(outbox)
            self._conn.executemany(
                """INSERT INTO alert_notify (alert_id, last_notified_at) VALUES (?, ?)
                ON CONFLICT (alert_id)
                DO UPDATE SET last_notified_at = excluded.last_notified_at""",
                ((alert_id, _ts(at)) for alert_id, at in (notified or {}).items()),
            )
            self._conn.execute(
                "DELETE FROM alert_notify WHERE alert_id NOT IN (SELECT id FROM alerts)"
            )
            self._conn.executemany(
                "INSERT INTO alert_events VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (_ts(at), kind, s.key.rule, s.key.member, s.key.condition, s.severity)
                    for at, kind, s in events
                ),
            )

    def _insert_outbox(self, items: Sequence[OutboxItem]) -> None:
        self._conn.executemany(
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

    def _replace_alerts(self, states: dict[str, AlertState]) -> None:
        self._conn.execute("DELETE FROM alerts")
        self._conn.executemany(
            "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    s.key.id,
                    s.key.rule,
                    s.key.member,
                    s.key.condition,
                    s.key.period,
                    s.status,
                    _ts(s.since),
                    _opt_ts(s.last_true),
                    _opt_ts(s.fired_at),
                    _opt_ts(s.resolved_at),
                    s.severity,
                )
                for s in states.values()
            ),
        )

    def last_notified(self) -> dict[str, datetime]:
        rows = self._conn.execute("SELECT alert_id, last_notified_at FROM alert_notify")
        return {alert_id: _dt(at) for alert_id, at in rows}

    def thread_of(self, alert_id: str) -> tuple[str, str] | None:
        """(channel, ts) of the first message about ``alert_id`` (bot token routes)."""
        row = self._conn.execute(
            "SELECT channel, ts FROM alert_notify WHERE alert_id = ? AND ts IS NOT NULL",
            (alert_id,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def set_thread(self, alert_id: str, channel: str, ts: str) -> None:
        with self._transaction():
            self._conn.execute(
                "UPDATE alert_notify SET channel = ?, ts = ? WHERE alert_id = ?",
                (channel, ts, alert_id),
            )

    def queue(self, items: Sequence[OutboxItem]) -> None:
        """Queue messages that belong to no alert state (digests)."""
        with self._transaction():
            self._insert_outbox(items)

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

    def outbox_sending(self, item_id: int, settled: datetime) -> None:
        """A send starts: until it is known to have failed it may have arrived, so after a
        crash it is looked for in Slack first, once it ``settled``."""
        with self._transaction():
            self._conn.execute(
                "UPDATE outbox SET uncertain = 1, next_attempt_at = ? WHERE id = ?",
                (_ts(settled), item_id),
            )

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

    def compact(self, before: datetime) -> int:
        """Drop usage buckets (and their fetch marks) that start before ``before``."""
        cutoff = _ts(before)
        with self._transaction():
            removed = 0
            for table in (
                "key_usage",
                "key_usage_buckets",
                "model_usage",
                "segments",
                "staged_key_usage",
                "staged_segments",
            ):
                cur = self._conn.execute(f"DELETE FROM {table} WHERE bucket_start < ?", (cutoff,))
                removed += cur.rowcount
            # the daily sums of the days that ended before the cutoff
            day = _ts(calendar_period("day", before, self.tz).start)
            self._conn.execute("DELETE FROM key_usage_daily WHERE day_start < ?", (day,))
            self._conn.execute("DELETE FROM fetch_log WHERE at < ?", (cutoff,))
            self._conn.execute("DELETE FROM alert_events WHERE at < ?", (cutoff,))
        return removed

    def vacuum(self) -> None:
        self._conn.execute("VACUUM")

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    def add_silence(
        self, rule: str, member: str | None, starts: datetime, ends: datetime, reason: str
    ) -> int:
        with self._transaction():
            cur = self._conn.execute(
                "INSERT INTO silences (rule, member, starts, ends, reason, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (rule, member, _ts(starts), _ts(ends), reason, _ts(starts)),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def silences(self, now: datetime, *, include_expired: bool = False) -> list[Silence]:
        rows = self._conn.execute(
            "SELECT id, rule, member, starts, ends, reason FROM silences"
            + ("" if include_expired else " WHERE ends > ?")
            + " ORDER BY id",
            () if include_expired else (_ts(now),),
        )
        return [Silence(i, r, m, _dt(s), _dt(e), reason) for i, r, m, s, e, reason in rows]

    def expire_silence(self, silence_id: int, now: datetime) -> bool:
        with self._transaction():
            cur = self._conn.execute(
                "UPDATE silences SET ends = ? WHERE id = ? AND ends > ?",
                (_ts(now), silence_id, _ts(now)),
            )
        return cur.rowcount == 1

    def top_keys(self, start: datetime, end: datetime, within: datetime, limit: int) -> list[str]:
        """The ``limit`` keys with the most spend in [start, end) among the keys with usage
        in [within, end), ties (and keys without spend there) by id."""
        inner, values, ((spent, spent_params), (seen, seen_params)) = self._windows_pass(
            [(start, end), (min(start, within), end)], "api_key_id, cost_nanos"
        )
        rows = self._conn.execute(
            f"""SELECT api_key_id, coalesce(sum(CASE WHEN {spent} THEN cost_nanos END), 0)
                FROM ({inner}) WHERE {seen} GROUP BY api_key_id
                ORDER BY 2 DESC, api_key_id LIMIT ?""",
            [*spent_params, *values, *seen_params, limit],
        )
        return [key_id for key_id, _ in rows]

    def window_costs(
        self, ranges: dict[str, tuple[datetime, datetime]], keep: Collection[str] | None = None
    ) -> dict[str, list[tuple[str | None, str, Decimal]]]:
        """Cost per (key id, model) for several windows, in one pass.

        With ``keep``, the keys not in it are summed per model under the key id None (the
        metrics' "other" series): 10,000 keys x 10 models need not come back to Python.
        """
        names = list(ranges)
        inner, values, picks = self._windows_pass(
            list(ranges.values()), "api_key_id, model, cost_nanos AS v, cost_rest AS rest"
        )
        key_column, params = "api_key_id", list[object]()
        if keep is not None:
            key_column = (
                "CASE WHEN api_key_id IN (SELECT value FROM json_each(?)) THEN api_key_id END"
            )
            params.append(json.dumps(sorted(keep)))
        sums, sum_params = _window_sums(picks)
        params += sum_params
        result: dict[str, list[tuple[str | None, str, Decimal]]] = {name: [] for name in names}
        for row in self._conn.execute(
            f"SELECT {key_column} AS kept, model, {sums} FROM ({inner}) GROUP BY kept, model",
            [*params, *values],
        ):
            for index, nanos, rest in _picked(row, 2, len(names)):
                result[names[index]].append((row[0], row[1], join_nanos(nanos, rest)))
        return result

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

    def first_seen(self) -> dict[str, dict[str, datetime]]:
        """Start of the first bucket with usage, per API key and per model."""
        keys = self._conn.execute("SELECT api_key_id, first_seen FROM api_keys")
        models = self._conn.execute("SELECT model, first_seen FROM models")
        return {"api_key": {k: _dt(s) for k, s in keys}, "model": {m: _dt(s) for m, s in models}}

    def alert_events(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, str, str, str, str, str]]:
        """(at, kind, rule, member, condition, severity) of alert transitions in [start, end)."""
        rows = self._conn.execute(
            "SELECT at, kind, rule, member, condition, severity FROM alert_events"
            " WHERE at >= ? AND at < ? ORDER BY at",
            (_ts(start), _ts(end)),
        )
        return [
            (_dt(at), kind, rule, member, cond, sev) for at, kind, rule, member, cond, sev in rows
        ]

    def api_key_names(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT api_key_id, name FROM api_keys"))

    def models(self) -> list[str]:
        return [m for (m,) in self._conn.execute("SELECT model FROM models ORDER BY model")]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
            self._conn.execute("ROLLBACK")


def _lock(path: Path) -> int:
    """Take the store's process lock (``<store>.lock``, holding the owner's pid)."""
    lock_path = Path(f"{path}.lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"the store {path} is in use by another langdock-budget process (pid {owner});"
            " stop it first (one writer per store), or point state.path elsewhere"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_is_set = partial(is_not, None)  # `x is not None`, without a Python frame per row


_MEMBER_COLUMN = {"api_key": "api_key_id", "model": "model", None: "'*'"}  # by → column


def _window_sums(picks: list[tuple[str, list[object]]]) -> tuple[str, list[object]]:
    """Per window of a `_windows_pass`: how many rows it picks, the sum of their ``v`` and
    the exact sum of their ``rest`` (SQL, and its parameters)."""
    sql = ", ".join(
        f"count(CASE WHEN {pick} THEN 1 END), sum(CASE WHEN {pick} THEN v END),"
        f" dec_sum(rest) FILTER (WHERE rest IS NOT NULL AND ({pick}))"
        for pick, _ in picks
    )
    return sql, [p for _, pick_params in picks for p in pick_params * 3]


def _picked(row: Sequence[Any], first: int, windows: int) -> Iterator[tuple[int, Any, Any]]:
    """(window index, sum, rest) of the windows that picked rows, from a `_window_sums` row
    whose sums start at column ``first``."""
    for index in range(windows):
        count, total, rest = row[first + 3 * index : first + 3 * index + 3]
        if count:
            yield index, total, rest


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [lo, hi) spans, merged."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _selection_sql(selection: SelectionFilter) -> tuple[list[str], list[object]]:
    """The WHERE conditions (and their parameters) that keep a selection's keys and models."""
    where: list[str] = []
    params: list[object] = []
    for column, kept in (("api_key_id", selection.keys), ("model", selection.models)):
        if kept is not None:
            where.append(f"{column} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(kept)))
    return where, params


def _dec_add(a: str | int | None, b: str | int | None) -> str | int | None:
    """SQLite ``dec_add(a, b)``: a + b, exact for integers and decimal text; NULL counts as
    missing, not zero (a token count missing from both rows stays missing)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return str(Decimal(a) + Decimal(b))


def _accumulate(into: list[object], values: list[object]) -> None:
    for i, value in enumerate(values):
        if value is None:
            continue
        current = into[i]
        into[i] = value if current is None else current + value  # type: ignore[operator]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _mean(weighted: object, requests: object) -> Decimal | None:
    if weighted is None or not requests:
        return None
    assert isinstance(weighted, Decimal) and isinstance(requests, int)
    return weighted / requests
