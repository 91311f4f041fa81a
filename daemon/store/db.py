"""Opening the store: the SQLite connection (WAL), the process lock, migrations,
transactions, and how money and instants are kept in SQLite.

Money is never a float: key usage cost is split into whole nano-dollars (an INTEGER that
SQLite sums exactly and fast) plus, only when the amount has more than nine decimals, the
exact decimal rest as text, summed by a `Decimal` aggregate (``dec_sum``). The sum of both is
exactly the sum of the amounts Langdock reported. Instants are whole UTC seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from zoneinfo import ZoneInfo

from daemon.store.dialect import FENCE
from daemon.store.points_cache import PointsCache
from daemon.store.schema import _MIGRATIONS, SCHEMA_VERSION, USAGE_TABLES
from daemon.store.sum_cache import SumCache

if TYPE_CHECKING:
    from daemon.store.pg import PgConnection


class StoreError(Exception):
    """The store cannot be opened or written; the message says what to do."""


class BackendError(Exception):
    """An error of a database server (`daemon.store.pg.PgError`), as one line."""


class NotLeader(BackendError):
    """A write of a replica whose lease ended (`daemon.leadership`): nothing was written."""


NO_TERM = ("", -1)  # the fence of a replica that does not lead: it matches no lease


# what a failing database raises, whichever backend: callers that must keep running catch it
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, BackendError)


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


def _dec_add(a: str | int | None, b: str | int | None) -> str | int | None:
    """SQLite ``dec_add(a, b)``: a + b, exact for integers and decimal text; NULL counts as
    missing, not zero (a token count missing from both rows stays missing)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return str(Decimal(a) + Decimal(b))


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


class StoreBase:
    """One SQLite database file and its connection, which every part of `Store` shares; all
    methods are synchronous and short."""

    def __init__(
        self, conn: sqlite3.Connection | PgConnection, path: Path, lock_fd: int | None = None
    ) -> None:
        self._conn: Any = conn  # `sqlite3.Connection`, or `PgConnection` that acts like one
        self.path = path
        self.where = str(path)  # for messages: the file, or the server without its password
        self._lock_fd = lock_fd
        # the only writer of alert state and usage (SQLite: the lock's holder; PostgreSQL: the
        # leader, `lead`) keeps what it wrote in memory between cycles
        self.writer = lock_fd is not None
        self._sums = SumCache()  # window sums kept between cycles (`daemon.store.sum_cache`)
        self._points = PointsCache()  # and hourly points (`daemon.store.points_cache`)
        self._kept_meta: dict[str, str | None] = {}  # the writer's meta values, as stored
        self._fence: tuple[str, int] | None = None  # PostgreSQL: the leader's term (`lead`)
        self._closers: list[Callable[[], None]] = []
        # PostgreSQL, a command holding the lease: whether it may still send (`LeaderOnly`)
        self.held: Callable[[], bool] | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if isinstance(self._conn, sqlite3.Connection) else "postgresql"

    @classmethod
    def open_url(
        cls,
        url: str,
        password: str | None = None,
        *,
        writer: bool = False,
        tz: ZoneInfo | None = None,
        upgrade: bool = True,
    ) -> Self:
        """Open the store in PostgreSQL (`daemon.store.pg`), migrating its schema. Which
        replica writes is decided by the lease (`daemon.leadership`); ``writer`` is for the
        commands that hold it (`lead`)."""
        from daemon.store.pg import PgConnection, redact

        where = redact(url)
        conn = PgConnection.connect(url, password)
        store = cls(conn, Path("."), None)
        store.where = where
        try:
            found = conn.migrate(SCHEMA_VERSION, upgrade=upgrade)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {where} has schema {found}, newer than this version knows"
                    f" ({SCHEMA_VERSION}); upgrade langdock-budget or point state.url elsewhere"
                )
            if found == 0 and not upgrade:
                raise StoreError(
                    f"no store at {where} yet: run `langdock-budget once` (or `run`) first;"
                    " it creates the tables"
                )
            if found < SCHEMA_VERSION and not upgrade:
                raise StoreError(
                    f"the store {where} has schema {found}, older than this version's"
                    f" ({SCHEMA_VERSION}); start `run` or `once` of this version first (it"
                    " upgrades the schema), with the older replicas stopped"
                )
            store.writer = writer
            store._use_zone(tz, rebuild=writer)
        except BaseException:
            conn.close()
            raise
        return store

    def lead(self, term: tuple[str, int] | None) -> None:
        """Become the store's only writer for a lease's term (holder, epoch), or stop being it
        (None). What was kept in memory about the stored state is dropped either way: another
        replica may have written. Every write transaction of the term is fenced by it; without
        a term every write is refused (`NotLeader`): a deposed leader's cycle that still runs
        writes nothing."""
        self.writer = term is not None
        self._fence = term if term is not None else NO_TERM
        self.forget_kept()
        if term is not None:
            self._use_zone(self.tz, rebuild=True)  # the zone's daily sums, if another had none

    def forget_kept(self) -> None:
        """Drop what is kept in memory between cycles (read it from the store again)."""
        self._sums.clear()
        self._points.clear()
        self._kept_meta.clear()

    @classmethod
    def open(cls, path: Path, *, exclusive: bool = False, tz: ZoneInfo | None = None) -> Self:
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

    def on_close(self, action: Callable[[], None]) -> None:
        """Run ``action`` when the store closes (a command's lease is released)."""
        self._closers.append(action)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for action in closers:
            action()
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
        return _Transaction(self._conn, self.forget_kept, self._fence)

    def _meta(self, key: str) -> str | None:
        """A meta value; the writer keeps what it read or wrote (a window reads
        "rolled_until" several times a cycle: one round trip each on PostgreSQL)."""
        if key in self._kept_meta:
            return self._kept_meta[key]
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        value = None if row is None else str(row[0])
        if self.writer:
            self._kept_meta[key] = value
        return value

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        if self.writer:
            self._kept_meta[key] = value  # dropped again if the transaction fails

    def _use_zone(self, tz: ZoneInfo | None, *, rebuild: bool) -> None:
        """Keep the daily sums (`rollups`) in ``tz`` (None: the zone they are kept in, or
        UTC). Set when the store opens; compaction counts local days in it too."""
        kept = self._meta("rollup_tz")
        if tz is None:
            tz, rebuild = ZoneInfo(kept or "UTC"), kept is None
        self.tz = tz
        self._days: dict[int, int] = {}  # bucket start → start of its local day
        self._rollups = kept == tz.key
        if not self._rollups and rebuild:  # a new store, or the configured zone changed
            with self._transaction():
                self._conn.execute("DELETE FROM key_usage_daily")
                if kept is not None and hour_grid(ZoneInfo(kept)) != hour_grid(tz):
                    # the hours themselves move (UTC ↔ Asia/Kolkata): the stored ranges can't
                    # be summed into the new zone's hours, so the usage is fetched again
                    for table in USAGE_TABLES:
                        self._conn.execute(f"DELETE FROM {table}")
                self._set_meta("rollup_tz", tz.key)
                self._set_meta("rolled_until", "0")
            self._rollups = True

    def vacuum(self) -> None:
        """SQLite: give the space of compacted rows back. PostgreSQL's autovacuum does that
        itself, without a long statement on the leader's connection."""
        if isinstance(self._conn, sqlite3.Connection):
            self._conn.execute("VACUUM")

    def size_bytes(self) -> int:
        if not isinstance(self._conn, sqlite3.Connection):
            return int(self._conn.size_bytes())
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total


class _Transaction:
    def __init__(
        self, conn: Any, on_fail: Callable[[], None], fence: tuple[str, int] | None = None
    ) -> None:
        self._conn = conn
        self._on_fail = on_fail
        self._fence = fence

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        if self._fence is None:
            return
        try:
            held = self._conn.execute(FENCE, self._fence).fetchone()
        except BaseException:
            self.__exit__(BackendError, None, None)
            raise
        if held is None:
            self.__exit__(NotLeader, None, None)
            raise NotLeader(
                "this replica's lease ended (another replica leads now); nothing was written"
            )

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._on_fail()
                raise
            return
        self._on_fail()
        if self._conn.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
            with contextlib.suppress(*DB_ERRORS):  # a lost server: the transaction is gone
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


@functools.cache
def hour_grid(zone: ZoneInfo) -> frozenset[int]:
    """Where a zone's local hours begin, as minutes past the UTC hour, over 2020-2030 (a fixed
    span: the store reads no clock). Two zones with the same grid share every bucket."""
    return frozenset(
        int(offset.total_seconds() // 60) % 60
        for year in range(2020, 2031)
        for month in range(1, 13)
        for day in (1, 15)
        if (offset := datetime(year, month, day, 12, tzinfo=UTC).astimezone(zone).utcoffset())
        is not None
    )
