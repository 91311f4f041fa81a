"""The tables of the store and the migrations that create them.

A store records its schema in ``PRAGMA user_version``; opening it runs every migration after
that version, each in its own transaction (`db.StoreBase.open`). Migrations are never edited
once released: a change to the tables is a new one.
"""

from __future__ import annotations

SCHEMA_VERSION = 11

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
    # who made a silence (the status page asks; `silence add --by`, default $USER)
    9: """
    ALTER TABLE silences ADD COLUMN created_by TEXT;
    """,
    # how many stored rows each daily sum stands for: window sums kept between cycles count
    # rows the same whichever table a range is read from (`daemon.store.sum_cache`); the
    # daily sums are made again by the next cycle
    10: """
    ALTER TABLE key_usage_daily ADD COLUMN rows INTEGER NOT NULL DEFAULT 0;
    DELETE FROM key_usage_daily;
    UPDATE meta SET value = '0' WHERE key = 'rolled_until';
    """,
    # the leader lease of replicas sharing a PostgreSQL store (`daemon.leadership`): who holds
    # it, its term (``epoch``; ``term`` names it in a unique column, changed only when the
    # lease changes hands, so a writer's fence, FOR KEY SHARE, holds off takeovers but not
    # renewals) and until when, in the server's milliseconds; an SQLite store has the table
    # but never uses it (its file lock is the lease)
    11: """
    CREATE TABLE leader_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        term TEXT NOT NULL UNIQUE,
        expires_at INTEGER NOT NULL,
        acquired_at INTEGER NOT NULL
    );
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

# the tokens a row of key_usage counts (what the daily and workspace sums keep as "tokens")
_HOURLY_TOKENS = "coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)"

# the tables that hold usage by time range (compaction and a zone change clear them)
USAGE_TABLES = (
    "key_usage",
    "key_usage_buckets",
    "model_usage",
    "segments",
    "staged_key_usage",
    "staged_segments",
)
