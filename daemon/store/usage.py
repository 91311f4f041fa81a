"""Usage goes in: key and model usage, the hours that refine a coarse range, the keys and
models seen, and compaction.

Usage lives in buckets (one local hour of the configured zone, see `rules.windows`) per
(api_key_id, model), and per model for the models export. A fetch replaces a whole bucket in
one transaction, so fetching the same hour twice gives the same totals and a failed or
truncated fetch leaves the earlier data untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from functools import partial
from operator import is_not, itemgetter

from daemon.langdock.csv import TOKEN_FIELDS, KeyUsage, ModelUsage
from daemon.rules.windows import calendar_period
from daemon.store.db import _dt, _ts, split_nanos
from daemon.store.fetches import Fetches
from daemon.store.rollups import DailySums
from daemon.store.schema import _HOURLY_TOKENS, USAGE_TABLES


class UsageWrites(DailySums, Fetches):
    """Stores fetched (or imported) usage, one bucket or range per transaction."""

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
        with self._kept_sums_follow(), self._transaction():
            self._clear_key_range(s, e)
            self._insert_key_rows("key_usage", s, e, rows)
            self._known_keys(rows, s, e)
            self._sum_buckets(s, e)
            self._mark_segment(export, s, e, fetched_at, len(rows))
            self._sums.after_write()
        return len(rows)

    @contextmanager
    def _kept_sums_follow(self) -> Iterator[None]:
        """Around a rewrite of key usage: kept window sums are moved inside its transaction
        (`SumCache.before_write` / `after_write`); if the transaction fails, they are dropped."""
        try:
            yield
        except BaseException:
            self._sums.clear()
            raise

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
        with self._kept_sums_follow(), self._transaction():
            self._clear_key_range(s, e)
            self._conn.execute(
                f"INSERT INTO key_usage SELECT * FROM staged_key_usage WHERE {span}", (s, e)
            )
            self._sum_buckets(s, e)
            self._sums.after_write()
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
        self._sums.before_write(lo, hi)  # the old sums of what changes, out of kept sums
        self._points.written(lo, hi)  # kept points of what changes: read again when next used
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
                requests = {table}.requests + excluded.requests,
                cost_nanos = {table}.cost_nanos + excluded.cost_nanos,
                cost_rest = dec_add({table}.cost_rest, excluded.cost_rest),
                {", ".join(f"{n} = dec_add({table}.{n}, excluded.{n})" for n in TOKEN_FIELDS)}""",
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

    def first_seen(self) -> dict[str, dict[str, datetime]]:
        """Start of the first bucket with usage, per API key and per model."""
        keys = self._conn.execute("SELECT api_key_id, first_seen FROM api_keys")
        models = self._conn.execute("SELECT model, first_seen FROM models")
        return {"api_key": {k: _dt(s) for k, s in keys}, "model": {m: _dt(s) for m, s in models}}

    def api_key_names(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT api_key_id, name FROM api_keys"))

    def models(self) -> list[str]:
        return [m for (m,) in self._conn.execute("SELECT model FROM models ORDER BY model")]

    def compact(self, before: datetime) -> int:
        """Drop usage buckets (and their fetch marks) that start before ``before``."""
        cutoff = _ts(before)
        self._sums.clear()
        self._points.clear()
        with self._transaction():
            removed = 0
            for table in USAGE_TABLES:
                cur = self._conn.execute(f"DELETE FROM {table} WHERE bucket_start < ?", (cutoff,))
                removed += cur.rowcount
            # the daily sums of the days that ended before the cutoff
            day = _ts(calendar_period("day", before, self.tz).start)
            self._conn.execute("DELETE FROM key_usage_daily WHERE day_start < ?", (day,))
            self._conn.execute("DELETE FROM fetch_log WHERE at < ?", (cutoff,))
            self._conn.execute("DELETE FROM alert_events WHERE at < ?", (cutoff,))
        return removed


_is_set = partial(is_not, None)  # `x is not None`, without a Python frame per row


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
