"""The store's tests run against both backends: SQLite (a file) and PostgreSQL (a real server
from `tests.postgres`, a schema of its own per database)."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import settings

from daemon.store import Store
from daemon.store.schema import SCHEMA_VERSION
from tests import properties
from tests.postgres import PASSWORD, PostgresServer


class Stores:
    """Databases of one backend: `new` makes an empty one (a file, or a schema), `open` opens
    one (again: a second process's view). ``exclusive`` is the writer (SQLite: the file
    lock; PostgreSQL: the lease's holder)."""

    def __init__(self, backend: str, root: Path, server: PostgresServer | None) -> None:
        self.backend = backend
        self._root = root
        self._server = server
        self._numbers = itertools.count(1)
        self._filled: dict[Hashable, str] = {}

    def new(self) -> str:
        if self._server is not None:
            return self._server.fresh_url()
        return str(self._root / f"state-{next(self._numbers)}.db")

    def open(self, where: str, *, exclusive: bool = False, tz: ZoneInfo | None = None) -> Store:
        """A store the caller closes."""
        if self._server is not None:
            return Store.open_url(where, PASSWORD, writer=exclusive, tz=tz)
        return Store.open(Path(where), exclusive=exclusive, tz=tz)

    def filled(self, key: Hashable, fill: Callable[[Store], None], tz: ZoneInfo) -> str:
        """A new database holding what ``fill`` writes into an empty one as its writer (in
        ``tz``): an SQLite file filled once a ``key``, copied. PostgreSQL gets its tables row
        for row (the schema is the same; writing a history of hundreds of hours statement by
        statement over the socket cost the store's property tests about 5 s of CPU; the tests'
        polls still write, and sum their days, through PostgreSQL's own path)."""
        if key not in self._filled:
            self._filled[key] = self._fill(fill, tz)
        if self._server is not None:
            return self._copy_to_postgres(self._filled[key], tz)
        copy = self.new()
        shutil.copy(self._filled[key], copy)
        return copy

    def _fill(self, fill: Callable[[Store], None], tz: ZoneInfo) -> str:
        where = str(self._root / f"state-{next(self._numbers)}.db")
        store = Store.open(Path(where), exclusive=True, tz=tz)
        try:
            fill(store)
        finally:
            store.close()
        return where

    def _copy_to_postgres(self, path: str, tz: ZoneInfo) -> str:
        """A new PostgreSQL schema holding every row of the SQLite store at ``path``."""
        import psycopg  # here: every xdist worker collects the store's tests

        from daemon.store.pg import schema_tables

        assert self._server is not None
        where = self._server.fresh_url()
        self.open(where, exclusive=True, tz=tz).close()  # the tables, as the writer makes them
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            # AUTOINCREMENT's counters: an identity goes on where SQLite's would
            counters = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
            with psycopg.connect(where, password=PASSWORD) as target:
                for table, (columns, _) in schema_tables(SCHEMA_VERSION):
                    if table.startswith("sqlite_"):
                        continue
                    names = ", ".join(columns)
                    rows = source.execute(f"SELECT {names} FROM {table}").fetchall()
                    target.execute(f"DELETE FROM {table}")  # the opening's meta, its lease
                    with target.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    if counters.get(table):
                        target.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)",
                            (counters[table],),
                        )
        finally:
            source.close()
        return where


# module scope: hypothesis tests take it (each example makes its own database with `new`)
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stores:
    backend = str(request.param)
    server = request.getfixturevalue("postgres") if backend == "postgresql" else None
    return Stores(backend, tmp_path_factory.mktemp("stores"), server)


@pytest.fixture
def store(stores: Stores) -> Iterator[Store]:
    opened = stores.open(stores.new())
    yield opened
    opened.close()


def examples(stores: Stores, *, sqlite: int, postgresql: int) -> settings:
    """Hypothesis settings for a property run on either backend: PostgreSQL answers each
    statement over a socket, so it runs fewer examples of the same property (the SQL it is
    given is the same; the examples check its dialect)."""
    full = sqlite if stores.backend == "sqlite" else postgresql
    return settings(max_examples=properties.examples(full), deadline=None)
