"""A PostgreSQL copy of a benchmark's SQLite store, for `bench/steady.py --backend postgresql`.

Starts a throw-away PostgreSQL server from Debian's binaries (the tests' `tests.postgres`:
initdb in a temporary directory, C locale; durability settings off, as for the tests), lets
the daemon create its tables there (`Store.open_url`), then copies every table of the SQLite
store in with COPY: the same rows the SQLite run reads, without replaying a month of polls.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres import PASSWORD, PostgresServer

# copied in this order; the lease and the schema version are the daemon's own
TABLES = (
    "meta",
    "api_keys",
    "models",
    "segments",
    "staged_segments",
    "key_usage",
    "staged_key_usage",
    "key_usage_buckets",
    "key_usage_daily",
    "model_usage",
    "alerts",
    "alert_notify",
    "alert_events",
    "silences",
    "slack_channels",
    "fetch_log",
    "outbox",
)


@contextmanager
def postgres_copy(sqlite_path: Path) -> Iterator[tuple[str, str]]:
    """(url, password) of a PostgreSQL server holding the rows of ``sqlite_path``."""
    import psycopg

    from daemon.store import Store

    root = Path(tempfile.mkdtemp(prefix="langdock-budget-bench-pg-"))
    root.chmod(0o755)
    server = PostgresServer.start(root)
    try:
        url = server.url()
        Store.open_url(url, PASSWORD).close()  # the tables, at this code's schema
        started = time.perf_counter()
        source = sqlite3.connect(sqlite_path)
        rows = 0
        with psycopg.connect(url, password=PASSWORD) as conn:
            for table in TABLES:
                columns = [c[1] for c in source.execute(f"PRAGMA table_info({table})")]
                names = ", ".join(columns)
                conn.execute(f"TRUNCATE {table}")
                with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in source.execute(f"SELECT {names} FROM {table}"):
                        copy.write_row(row)
                        rows += 1
            for table in ("fetch_log", "outbox", "silences"):  # identity columns go on
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                )
            conn.execute("ANALYZE")
        source.close()
        print(
            f"steady: copied {rows:,} rows into PostgreSQL in"
            f" {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        yield url, PASSWORD
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
