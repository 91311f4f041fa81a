"""The background refiner and what `run` builds around it: completion is reported (and
triggers a cycle), requests go in UTC (the repeated DST hour is two requests), and a
published metrics snapshot never mixes two cycles."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from structlog.testing import capture_logs

from daemon.config import Config, load_config
from daemon.coverage import Segment
from daemon.cycle import CycleResult, make_client, run_cycle
from daemon.ingest import PollReport
from daemon.langdock import DataError, LangdockClient
from daemon.langdock.csv import KeyUsage, ModelUsage, parse_key_usage, parse_model_usage
from daemon.langdock.pacing import Pacer
from daemon.langdock.simulator import Simulator
from daemon.metrics import SnapshotCollector, Stats, render
from daemon.notify import DeliveryReport
from daemon.published import load_published
from daemon.refine import Refiner
from daemon.rules.engine import EngineResult
from daemon.rules.windows import bucket_start
from daemon.snapshot import build_snapshot
from daemon.store import Store
from tests.conftest import FakeClock

NOW = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


class DirectClient:
    """The simulator's exports without HTTP, and the pacer the refiner reads."""

    def __init__(self, sim: Simulator) -> None:
        self.sim, self.pacer = sim, Pacer(1000)

    async def key_usage(self, start: datetime, end: datetime) -> list[KeyUsage]:
        text, _ = self.sim.api_keys_csv(start, end, grouped=True)
        return list(parse_key_usage(io.StringIO(text, newline=""), grouped=True))

    async def model_usage(self, start: datetime, end: datetime) -> list[ModelUsage]:
        text, _ = self.sim.models_csv(start, end)
        return list(parse_model_usage(io.StringIO(text, newline="")))


def config_of(**langdock: object) -> Config:
    return Config.model_validate(
        {
            "langdock": {"api_key": "k", **langdock},
            "timezone": "Europe/Berlin",
            "poll": {"backfill": "3h"},
        }
    )


async def test_the_refiner_reports_completion_once_and_asks_for_a_cycle() -> None:
    config = config_of()
    store = Store.open(Path(":memory:"), tz=config.tz)
    idle = asyncio.Event()
    idle.set()
    client = DirectClient(Simulator(clock=lambda: NOW))
    refiner = Refiner(store, lambda: config, lambda: client, lambda: NOW, idle)  # type: ignore[arg-type]
    cycles: list[str] = []
    refiner.on_complete = lambda: cycles.append("now")
    with capture_logs() as logs:
        refiner.wake()  # as the daemon does after its first cycle
        task = asyncio.create_task(refiner.run())
        while not (refiner.progress is not None and refiner.progress.done and cycles):
            await asyncio.sleep(0.01)
        refiner.wake()  # another cycle: nothing left, nothing reported again
        await asyncio.sleep(0.05)
        task.cancel()
    assert refiner.fetched == 6
    assert [e["event"] for e in logs].count("backfill_complete") == 1
    assert cycles == ["now"]
    store.close()


async def test_the_repeated_dst_hour_is_two_different_requests() -> None:
    """Berlin's 02:00-03:00 on 2026-10-25 happens twice (00:00 and 01:00 UTC): the client
    `run` builds asks for each by its UTC instants, and gets each hour's own usage."""
    sim = Simulator(api_key="k", clock=lambda: NOW)
    sim.start()
    try:
        client = make_client(config_of(base_url=sim.base_url))
        first, second = (datetime(2026, 10, 25, h, tzinfo=UTC) for h in (0, 1))
        got = []
        for start in (first, second):
            rows = await client.key_usage(start, start + timedelta(hours=1))
            got.append(sum((r.cost_usd for r in rows), Decimal(0)))
        await client.aclose()
        bodies = [r.body for r in sim.export_requests()]
        truth = [
            sum(
                (
                    sim.pair_usage(k, m, s, s + timedelta(hours=1))["cost"]
                    for k in range(len(sim.keys))
                    for m in range(len(sim.models))
                ),
                Decimal(0),
            )
            for s in (first, second)
        ]
    finally:
        sim.stop()
    assert bodies[0] != bodies[1]
    assert got == truth and got[0] != got[1]


def test_a_published_snapshot_does_not_change_when_the_next_cycle_records(
    tmp_path: Path,
) -> None:
    config = Config.model_validate(
        {"langdock": {"api_key": "k"}, "state": {"path": str(tmp_path / "s.db")}}
    )
    store = Store.open(config.state.path)
    stats = Stats()
    published = load_published(store, config, EngineResult(), NOW)
    result = CycleResult(
        PollReport(started=NOW), EngineResult(), DeliveryReport(), published=published
    )
    collector = SnapshotCollector()
    collector.snapshot = build_snapshot(result, stats, None)
    before = render(collector)
    stats.polls += 1  # the next cycle records before it publishes its own snapshot
    stats.count(stats.export_errors, ("api-keys", "server"))
    assert render(collector) == before
    store.close()


def refiner_config(tmp_path: Path, base_url: str, window: str = "24h") -> Config:
    (tmp_path / "config.yaml").write_text(
        f"langdock: {{base_url: '{base_url}', api_key: 'sk-test-4c7d1e9f0a2b'}}\n"
        "timezone: Europe/Berlin\npoll: {backfill: 3d}\nstate: {path: state.db}\n"
        f"rules:\n  - {{name: ws, kind: budget, window: {window}, limit_usd: 100000}}\n"
    )
    return load_config(tmp_path / "config.yaml", {})


async def spin(until: Callable[[], bool], within: float = 30.0) -> None:
    """Let the loop run until ``until()`` holds. Not a timing: the bound only stops a broken
    test (fetches go over real loopback HTTP, whose turns of the loop a busy machine makes
    many more of than a quiet one)."""
    deadline = time.monotonic() + within
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


async def test_one_damaged_hour_does_not_stop_the_background_backfill(tmp_path: Path) -> None:
    """An hour whose file is damaged on every try waits (5 min, doubling) while every other
    range goes on; the refiner does not pause the whole backfill for it."""
    config = refiner_config(tmp_path, "http://127.0.0.1:9")
    broken = bucket_start(NOW, config.tz) - timedelta(hours=3)

    class Client(DirectClient):
        requests_sent = 0

        def take_rejections(self) -> list[str]:
            return []

        async def key_usage(self, start: datetime, end: datetime) -> list[KeyUsage]:
            if start <= broken < end and end - start == timedelta(hours=1):
                raise DataError("api-keys export: the file is damaged every time", "malformed")
            return await super().key_usage(start, end)

    client = Client(Simulator(clock=lambda: NOW))
    store = Store.open(config.state.path, tz=config.tz)
    await run_cycle(config, store, client, lambda: NOW)  # type: ignore[arg-type]
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    refiner = Refiner(
        store,
        lambda: config,
        lambda: client,
        lambda: NOW,
        asyncio.Event(),
        sleep=sleep,  # type: ignore[arg-type]
    )
    refiner.idle.set()
    task = asyncio.create_task(refiner.run())
    refiner.wake()
    await spin(lambda: refiner.fetched >= 2 * 3 * 24 - 30)
    task.cancel()
    assert refiner.fetched >= 2 * 3 * 24 - 30 and refiner.failures == 1 and pauses == []
    store.close()


async def test_a_store_error_while_planning_does_not_end_the_backfill(
    tmp_path: Path, simulator: Simulator, client: LangdockClient, clock: FakeClock
) -> None:
    config = refiner_config(tmp_path, simulator.base_url, window="day")
    store = Store.open(config.state.path, tz=config.tz)
    await run_cycle(config, store, client, clock)
    refiner = Refiner(
        store, lambda: config, lambda: client, clock, asyncio.Event(), sleep=clock.sleep
    )
    refiner.idle.set()
    real = store.segments
    failures = iter([sqlite3.OperationalError("database is locked")])

    def flaky(export: str, since: datetime) -> list[Segment]:
        for exc in failures:
            raise exc
        return real(export, since)

    store.segments = flaky  # type: ignore[method-assign]
    task = asyncio.create_task(refiner.run())
    refiner.wake()
    await spin(lambda: refiner.fetched > 0 or task.done())
    assert not task.done() and refiner.fetched > 0
    task.cancel()
    store.close()
