"""The store's tests run against both backends: SQLite (a file) and PostgreSQL (a real server
from `tests.postgres`, a schema of its own per database)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import settings

from daemon.store import Store
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
        ``tz``). SQLite: a copy of a file filled once a ``key``; PostgreSQL: filled anew."""
        if self._server is not None:
            return self._fill(fill, tz)
        if key not in self._filled:
            self._filled[key] = self._fill(fill, tz)
        copy = self.new()
        shutil.copy(self._filled[key], copy)
        return copy

    def _fill(self, fill: Callable[[Store], None], tz: ZoneInfo) -> str:
        where = self.new()
        store = self.open(where, exclusive=True, tz=tz)
        try:
            fill(store)
        finally:
            store.close()
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
    return settings(
        max_examples=sqlite if stores.backend == "sqlite" else postgresql, deadline=None
    )
