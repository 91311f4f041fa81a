"""A stuck fetch does not hold the daemon: the cycle is abandoned at `poll.cycle_timeout`
(what was stored stays), a reload does not wait behind it, and systemd's watchdog is fed only
while cycles end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.langdock.simulator import Fault, Simulator
from daemon.service import Daemon
from daemon.store import Store
from tests.conftest import API_KEY


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(api_key=API_KEY)
    simulator.start()
    yield simulator
    simulator.stop()


def make_daemon(tmp_path: Path, sim: Simulator, cycle_timeout: str = "1s") -> Daemon:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '{API_KEY}', timeout: 60s,"
        " max_retries: 0, backfill_max_requests_per_minute: 6000}\n"
        f"poll: {{backfill: 2h, interval: 1h, cycle_timeout: {cycle_timeout}}}\n"
        "state: {path: state.db}\nmetrics: {listen: '127.0.0.1:0'}\n"
        "rules: [{name: day, kind: budget, window: day, limit_usd: 100}]\n"
    )
    config = load_config(path, {})
    return Daemon(path, config, Store.open(config.state.path, exclusive=True, tz=config.tz))


async def test_a_stuck_fetch_is_abandoned_at_the_cycle_deadline(
    tmp_path: Path, sim: Simulator
) -> None:
    daemon = make_daemon(tmp_path, sim)
    sim.faults.append(Fault(200, {}, delay=30))  # the first export call hangs for 30 s
    await daemon.cycle_job()  # returns after ~1 s (the deadline), not 30 s
    assert daemon.stats.cycle_timeouts == 1
    assert not daemon.lock.locked() and daemon.idle.is_set()
    await daemon.cycle_job()  # the next cycle goes on and fills the windows
    assert daemon.stats.cycle_timeouts == 1 and daemon.stats.polls == 1
    assert daemon.readiness is not None and daemon.readiness.warming == {}
    await daemon.stop()


async def test_a_reload_does_not_wait_behind_a_stuck_cycle(tmp_path: Path, sim: Simulator) -> None:
    daemon = make_daemon(tmp_path, sim, cycle_timeout="60s")
    await daemon.start()
    sim.faults.append(Fault(200, {}, delay=20))
    sim.request_seen.clear()
    await asyncio.get_running_loop().run_in_executor(None, sim.request_seen.wait, 10)
    await asyncio.sleep(0)  # the cycle is now waiting on the stuck export
    assert daemon.lock.locked(), "the first cycle is stuck in its fetch"
    (tmp_path / "config.yaml").write_text(
        (tmp_path / "config.yaml").read_text().replace("limit_usd: 100", "limit_usd: 200")
    )
    assert await daemon.reload()
    assert daemon.lock.locked(), "the reload finished while the cycle was still stuck"
    assert daemon.config.rules[0].model_dump()["limit_usd"] == 200
    await daemon.stop()


async def test_a_reload_during_a_cycle_gets_its_own_cycle_after_it(
    tmp_path: Path, sim: Simulator
) -> None:
    """The scheduler skips a job whose instance still runs, so a reload (or the backfill's
    end) during a cycle asks for one more, which runs when the current one ends."""
    daemon = make_daemon(tmp_path, sim, cycle_timeout="60s")
    await daemon.start()
    sim.faults.append(Fault(200, {}, delay=1))  # the first cycle is held for a second
    sim.request_seen.clear()
    await asyncio.get_running_loop().run_in_executor(None, sim.request_seen.wait, 10)
    await asyncio.sleep(0)
    assert daemon.cycle_task is not None, "the first cycle runs"
    (tmp_path / "config.yaml").write_text(
        (tmp_path / "config.yaml").read_text().replace("limit_usd: 100", "limit_usd: 200")
    )
    assert await daemon.reload()
    assert daemon.cycle_again
    while daemon.followup is None:  # the first cycle ends (abandoned at its deadline or not)
        await asyncio.sleep(0.05)
    await daemon.followup
    assert not daemon.cycle_again
    assert daemon.latest is not None
    assert daemon.latest.engine.budget_tables[0].limit == 200  # evaluated with the new rules
    await daemon.stop()


def test_the_watchdog_is_fed_only_while_cycles_end(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    daemon = make_daemon(tmp_path, sim)
    daemon._watchdog()  # just started: fed
    assert listener.recv(100) == b"WATCHDOG=1"
    daemon.cycle_ended -= 3 * 3600  # no cycle ended for three hours (interval 1h, deadline 1s)
    daemon._watchdog()
    with pytest.raises(BlockingIOError):
        listener.recv(100)
    listener.close()
    daemon.store.close()
