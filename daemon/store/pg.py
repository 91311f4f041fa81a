"""The PostgreSQL backend: a connection that speaks to the store's parts as SQLite's does.

`PgConnection` offers the few `sqlite3.Connection` methods the store's parts use (`execute`,
`executemany`, `in_transaction`, `close`), translating each statement once
(`daemon.store.dialect`). Parameters are bound client-side (`psycopg.ClientCursor`), as
literals, so a value means what it means in SQLite whatever the statement's context.
Integers come back as `int` (a ``sum`` of BIGINT is NUMERIC in PostgreSQL), exact decimals as
text, as from SQLite. Every psycopg error leaves as `PgError` (see `daemon.store.db`),
with the password never in its message.

The schema version lives in ``schema_version``; migrations run under an advisory lock, so
two replicas starting together migrate once (docs/OPERATIONS.md, "Two replicas").
psycopg is imported here only: an SQLite daemon never loads it.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import ClientCursor
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus

from daemon.store.db import BackendError, _DecimalSum
from daemon.store.dialect import Tables, ddl_to_postgres, freeze_tables, to_postgres
from daemon.store.schema import _MIGRATIONS

IDLE_IN_TRANSACTION = "5s"  # the server ends a transaction whose client went quiet this long
MIGRATION_LOCK = 7_351_208_114  # pg_advisory_xact_lock key: one migration at a time

# what SQLite computes with its own functions (`daemon.store.db`), in SQL
FUNCTIONS = [
    """CREATE OR REPLACE FUNCTION dec_add(a BIGINT, b BIGINT) RETURNS BIGINT
       LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
       ELSE a + b END $$""",
    """CREATE OR REPLACE FUNCTION dec_add(a TEXT, b TEXT) RETURNS TEXT
       LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
       ELSE (a::numeric + b::numeric)::text END $$""",
    """CREATE OR REPLACE FUNCTION dec_sum_step(s NUMERIC, v TEXT) RETURNS NUMERIC
       LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN v IS NULL THEN s
       ELSE coalesce(s, 0) + v::numeric END $$""",
    """CREATE OR REPLACE FUNCTION dec_sum_final(s NUMERIC) RETURNS TEXT
       LANGUAGE sql IMMUTABLE AS $$ SELECT s::text $$""",
    """DO $$ BEGIN
         CREATE AGGREGATE dec_sum(TEXT) (SFUNC = dec_sum_step, STYPE = NUMERIC,
                                         FINALFUNC = dec_sum_final);
       EXCEPTION WHEN duplicate_function THEN NULL; END $$""",
]


class PgError(BackendError):
    """A PostgreSQL error, as one line without secrets."""


class _IntNumericLoader(Loader):
    """NUMERIC as `int` when whole (sums of BIGINT), else `Decimal`."""

    def load(self, data: Any) -> int | Decimal:
        text = bytes(data).decode()
        return Decimal(text) if "." in text or "e" in text.lower() else int(text)


class _BoolAsIntDumper(Dumper):
    """`bool` as 0/1: the store's flags are integers, as in SQLite."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


_PASSWORD = re.compile(r"(password=)\S+|(://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)


def redact(message: str) -> str:
    """An error message without any password a connection string may have put in it."""
    return _PASSWORD.sub(lambda m: f"{m[1] or m[2]}***" + ("@" if m[2] else ""), message)


def error_text(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()))


class _Cursor:
    """What a statement gave back: rows (iterable) and ``rowcount``."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)


BATCH = 500  # rows per multi-row INSERT

_TOKEN = re.compile(r"%%|%s")


@functools.lru_cache(maxsize=1024)
def _pieces(statement: str) -> tuple[str, ...]:
    """``statement`` (psycopg's placeholders) cut at its ``%s``, each ``%%`` back to ``%``."""
    pieces: list[str] = []
    current: list[str] = []
    at = 0
    for token in _TOKEN.finditer(statement):
        current.append(statement[at : token.start()])
        if token.group() == "%%":
            current.append("%")
        else:
            pieces.append("".join(current))
            current = []
        at = token.end()
    current.append(statement[at:])
    pieces.append("".join(current))
    return tuple(pieces)


def unescape(statement: str) -> str:
    """``statement`` with each ``%%`` back to ``%`` (its placeholders kept)."""
    return "%s".join(_pieces(statement))


def literal(value: object) -> str:
    """A parameter as an SQL literal, as psycopg's client-side binding writes it (strings
    quoted for ``standard_conforming_strings``, which every connection sets)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value) if value >= 0 else f"({value})"
    if isinstance(value, str):
        if "\x00" in value:
            raise PgError("a text value holds a NUL character, which PostgreSQL cannot store")
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, Decimal | float) and math.isfinite(value):
        return f"'{value}'::numeric"
    raise PgError(f"cannot write a {type(value).__name__} into a statement")


def compose(statement: str, params: Sequence[Any]) -> str:
    """``statement`` with its parameters written in: parsed once per statement text (psycopg
    would parse every long statement again: 16 ms for a window pass), sent as it is."""
    pieces = _pieces(statement)
    if len(pieces) != len(params) + 1:
        raise PgError(f"{len(params)} parameters for {len(pieces) - 1} placeholders")
    if not params:
        return pieces[0]
    parts = [pieces[0]]
    for value, piece in zip(params, pieces[1:], strict=True):
        parts.append(literal(value))
        parts.append(piece)
    return "".join(parts)


_INSERT = re.compile(
    r"^(\s*INSERT INTO (\w+)(?:\s+AS\s+\w+)?\s*(?:\(([^)]*)\))?\s*VALUES\s*)\(([^()]*)\)(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_CONFLICT = re.compile(r"ON CONFLICT \(([^)]*)\)", re.IGNORECASE)


@dataclass(frozen=True)
class InsertShape:
    """A one-row INSERT ... VALUES (...), taken apart to send many rows at once."""

    head: str
    group: str
    tail: str
    keys: tuple[int, ...] | None  # the parameters that make the conflict key (None: no key)

    def statement(self, rows: Sequence[Sequence[Any]]) -> str:
        """The INSERT of ``rows``, their values written in (`compose`)."""
        group = f"({self.group})"
        values = ", ".join(compose(group, row) for row in rows)
        return f"{unescape(self.head)}{values}{unescape(self.tail)}"

    def unique(self, rows: Sequence[Sequence[Any]]) -> bool:
        """No two rows meet on the conflict key (else PostgreSQL refuses the statement)."""
        if self.keys is None:
            return True
        keys = self.keys
        return len({tuple(row[i] for i in keys) for row in rows}) == len(rows)


@functools.lru_cache(maxsize=256)
def insert_shape(statement: str, tables: Tables) -> InsertShape | None:
    """How to send ``statement`` for many rows at once (None: row by row)."""
    match = _INSERT.match(statement)
    if match is None or "%s" not in match[4]:
        return None
    head, table, listed, group, tail = match.groups()
    known = dict(tables).get(table)
    columns = [c.strip() for c in listed.split(",")] if listed else list(known[0] if known else [])
    items = [item.strip() for item in group.split(",")]
    if len(items) != len(columns):
        return None
    conflict = _CONFLICT.search(tail)
    keys: tuple[int, ...] | None = None
    if conflict is not None:
        param_of: dict[str, int] = {}
        for column, item in zip(columns, items, strict=True):
            if item == "%s":
                param_of[column] = len(param_of)
        keys = tuple(param_of[c.strip()] for c in conflict[1].split(",") if c.strip() in param_of)
    return InsertShape(head, group, tail, keys)


class PgConnection:
    """One PostgreSQL connection, used like the store's `sqlite3.Connection`."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn = connect()
        self._tables: Tables = ()

    @classmethod
    def connect(
        cls,
        url: str,
        password: str | None,
        *,
        timeout: float = 10.0,
        settings: dict[str, str] | None = None,
    ) -> PgConnection:
        """Connect with keepalives and a socket timeout, so a lost server is an error within
        seconds instead of a hang. ``settings``: session settings (the lease's timeouts);
        every connection ends a transaction left idle for `IDLE_IN_TRANSACTION` (a frozen
        leader's lock on the lease row must not hold off a takeover)."""
        session = {
            "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION,
            "standard_conforming_strings": "on",  # `literal` relies on it
            **(settings or {}),
        }
        extra: dict[str, Any] = {
            "connect_timeout": max(1, int(timeout)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": int(timeout * 1000),
            "application_name": "langdock-budget",
        }
        if password is not None:
            extra["password"] = password

        def connect() -> psycopg.Connection[Any]:
            try:
                conn = psycopg.connect(url, autocommit=True, cursor_factory=ClientCursor, **extra)
            except psycopg.Error as exc:
                raise PgError(error_text(exc)) from None
            conn.adapters.register_loader("numeric", _IntNumericLoader)
            conn.adapters.register_dumper(bool, _BoolAsIntDumper)
            try:
                for name, value in session.items():
                    conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            except psycopg.Error as exc:
                conn.close()
                raise PgError(error_text(exc)) from None
            return conn

        return cls(connect)

    def _ready(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the server dropped it (a restart, a failover, a
        terminated backend): the statement that failed failed; the next one reconnects."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    # --------------------------------------------------------------- sqlite3-like API

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Cursor:
        statement = to_postgres(sql, self._tables)
        if statement == "ROLLBACK" and self.broken:
            return _Cursor([], 0)  # the server ended the transaction with the connection
        text = compose(statement, params or ())
        try:
            with self._ready().cursor() as cur:
                cur.execute(text.encode())  # no parameters: psycopg sends it as it is
                rows = cur.fetchall() if cur.description is not None else []
                return _Cursor(rows, cur.rowcount)
        except psycopg.Error as exc:
            raise PgError(error_text(exc)) from None

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> _Cursor:
        """Many rows: a one-row INSERT goes as multi-row INSERTs of `BATCH` rows (a round trip
        per batch, not per row), except a batch in which two rows meet the same conflict key
        (an upsert that adds them up must see them one by one)."""
        statement = to_postgres(sql, self._tables)
        rows = [tuple(row) for row in params]
        if not rows:
            return _Cursor([], 0)
        shape = insert_shape(statement, self._tables)
        count = 0
        try:
            with self._ready().cursor() as cur:
                for start in range(0, len(rows), BATCH if shape else len(rows)):
                    batch = rows[start : start + BATCH] if shape else rows
                    if shape is None or not shape.unique(batch):
                        cur.executemany(statement, batch)  # pipelined, one row each
                    else:
                        cur.execute(shape.statement(batch).encode())
                    count += max(cur.rowcount, 0)
                return _Cursor([], count)
        except psycopg.Error as exc:
            raise PgError(error_text(exc)) from None

    @property
    def in_transaction(self) -> bool:
        return not self.broken and self._conn.info.transaction_status != TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    def close(self) -> None:
        self._conn.close()

    # --------------------------------------------------------------- schema

    def migrate(self, newest: int, *, upgrade: bool = True) -> int:
        """Bring the schema to ``newest``; return the version found (newer: nothing done;
        without ``upgrade``, a reader's, nothing either)."""
        conn = self._ready()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT)")
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                found = int(row[0]) if row and row[0] is not None else 0
                if upgrade and found < newest:
                    for statement in FUNCTIONS:
                        conn.execute(statement)
                    for target in range(found + 1, newest + 1):
                        for statement in ddl_to_postgres(_MIGRATIONS[target]):
                            conn.execute(statement)
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version VALUES (%s)", (newest,))
        except psycopg.Error as exc:
            raise PgError(error_text(exc)) from None
        self._tables = schema_tables(newest)
        return found

    def size_bytes(self) -> int:
        row = self.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


@functools.cache
def schema_tables(version: int) -> Tables:
    """Each table's columns and primary key at ``version``: read from the same migrations
    run in an in-memory SQLite database (no catalog queries on every connection)."""
    conn = sqlite3.connect(":memory:")
    conn.create_aggregate("dec_sum", 1, _DecimalSum)  # type: ignore[arg-type]
    for target in range(1, version + 1):
        conn.executescript(_MIGRATIONS[target])
    tables: dict[str, tuple[list[str], list[str]]] = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()
        key = [column for _, column, _, _, _, pk in sorted(info, key=lambda c: c[5]) if pk]
        tables[name] = ([column for _, column, *_ in info], key)
    conn.close()
    return freeze_tables(tables)
