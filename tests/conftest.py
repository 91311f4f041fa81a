"""Shared fixtures: a fixed clock, the loopback Langdock simulator, and a client wired to it."""

from __future__ import annotations

import atexit
import functools
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.config import Config
from daemon.coverage import EXPORTS, uncovered
from daemon.langdock import LangdockClient
from daemon.langdock.simulator import Simulator
from daemon.logs import configure_logging
from daemon.rules.windows import bucket_end, bucket_start, buckets
from daemon.store import Store
from tests import read_ahead

# the PostgreSQL server's fixture, for every module from here (a module or a conftest that
# imported it itself would get a fixture of its own); one server a run, see tests/postgres.py
from tests.postgres import end_run, postgres  # noqa: F401

# hypothesis' profiles, `full` (CI's `make coverage`) and `quick` (`make test`), registered
# before pytest loads the one it is given: tests/properties.py
from tests.properties import PROFILES  # noqa: F401

# polars (`import FILE.csv`) starts a thread per core in every process that loads it: the test
# workers (a core each, and two more) and the processes they start would share the cores
# with a pool each. One thread a process; the imports' results do not depend on it.
os.environ.setdefault("POLARS_MAX_THREADS", "1")

NOW = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)  # a Friday
API_KEY = "sk-test-4c7d1e9f0a2b"


class FakeClock:
    """Wall clock (aware UTC) and monotonic clock that only move when told to."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.monotonic = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
        self.monotonic += delta.total_seconds()

    async def sleep(self, seconds: float) -> None:
        """Recorded instead of slept; time moves on as if we had waited."""
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        self.monotonic += seconds

    def mono(self) -> float:
        return self.monotonic


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    yield
    configure_logging()  # a test may have pointed logs at a stream that is now closed


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[Simulator]:
    sim = Simulator(api_key=API_KEY, clock=clock)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
async def client(simulator: Simulator, clock: FakeClock) -> AsyncIterator[LangdockClient]:
    async with LangdockClient(
        simulator.base_url,
        API_KEY,
        max_requests_per_minute=6000,
        max_retries=3,
        sleep=clock.sleep,
        clock=clock.mono,
    ) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state.db")
    yield s
    s.close()


def fill_history(store: Store, config: Config, now: datetime) -> None:
    """Mark every hour of the backfill that nothing was stored for as fetched and empty, as
    if the first start and its background refinement were over (rules stop warming up)."""
    _fill(store, config.tz, config.poll.backfill, now)


def _fill(store: Store, tz: ZoneInfo, backfill: timedelta, now: datetime) -> None:
    for export in EXPORTS:
        segments = store.segments(export, now - backfill - timedelta(hours=2))
        start = bucket_start(now - backfill, tz)
        for lo, hi in uncovered(segments, start, bucket_end(now, tz)):
            for bucket in buckets(lo, hi, tz):
                if export == "api-keys":
                    store.replace_key_usage(bucket.start, bucket.end, [], now)
                else:
                    store.replace_model_usage(bucket.start, bucket.end, [], now)


def store_with_history(config: Config, now: datetime, *, tz: ZoneInfo | None = None) -> Store:
    """``Store.open(config.state.path, tz=tz)`` of a new store that holds what `fill_history`
    writes at ``now`` already: usage written to it afterwards replaces its empty hours, as
    `fill_history` would have left them alone. A copy of a store filled once per worker (the
    default backfill is 1,680 writes, a second under coverage)."""
    path = config.state.path
    assert not path.exists(), f"{path}: a store with history starts new"
    shutil.copy(_filled(config.tz, config.poll.backfill, now, tz), path)  # its mode (0600) too
    return Store.open(path, tz=tz)


@functools.cache
def _filled(tz: ZoneInfo, backfill: timedelta, now: datetime, store_tz: ZoneInfo | None) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="langdock-budget-history-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    store = Store.open(directory / "state.db", tz=store_tz)
    try:
        _fill(store, tz, backfill, now)
    finally:
        store.close()
    return store.path


def pytest_configure(config: pytest.Config) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # once a run, before any worker starts
        read_ahead.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """At the end of the run, the PostgreSQL server of a worker that died before stopping it
    (the last worker to finish stops it otherwise: `tests.postgres.shared_server`)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        end_run(os.getpid())


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection left alive (the modules, the tests) lives to the end: frozen out of the
    collector's full collections, which the tests' garbage would otherwise make look at it
    again and again (tests/test_heap.py unfreezes it, as the daemon's `CycleHeap` does)."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (seconds each) run first, otherwise in the collected order:
    xdist (`make test`) hands tests to its workers in this order, so a long test starts
    early instead of keeping one worker busy after the others have finished."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
