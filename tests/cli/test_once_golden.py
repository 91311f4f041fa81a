"""A golden test of what `once` prints, on the simulator with a fixed clock.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/cli/test_once_golden.py``
and review the diff.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.cli.once import render_cycle
from daemon.config import load_config
from daemon.cycle import run_cycle
from daemon.langdock import LangdockClient
from daemon.langdock.simulator import Simulator
from daemon.refine import Refiner
from tests.conftest import API_KEY, NOW, FakeClock

ROOT = Path(__file__).resolve().parent.parent.parent
GOLDEN = Path(__file__).parent / "golden" / "once.txt"


@pytest.mark.long
async def test_once_output_matches_golden(
    tmp_path: Path, simulator: Simulator, client: LangdockClient, clock: FakeClock
) -> None:
    shutil.copytree(ROOT / "alert_rules", tmp_path / "alert_rules")
    (tmp_path / "config.yaml").write_text(
        f"langdock: {{base_url: '{simulator.base_url}', api_key: '{API_KEY}',"
        " backfill_max_requests_per_minute: 6000}\n"
        "timezone: Europe/Berlin\n"
        "poll: {backfill: 8d}\n"
        "state: {path: state.db}\n"
        "rule_files: [alert_rules/*.yaml]\n"
    )
    config = load_config(tmp_path / "config.yaml", {})
    # the nightly-batch key floods claude-sonnet-4 during the last complete hour
    simulator.spike_start = NOW.replace(minute=0) - timedelta(hours=1)
    simulator.spike_duration = timedelta(hours=1)
    from daemon.store import Store

    store = Store.open(config.state.path)
    try:
        first = await run_cycle(config, store, client, clock)
        assert first.poll.ok and first.readiness is not None and first.readiness.warming
        # what `run` does next in the background: the history hour by hour
        refiner = Refiner(store, lambda: config, lambda: client, clock, asyncio.Event())
        assert await refiner.drain() == 0, clock.sleeps
        result = await run_cycle(config, store, client, clock)
        assert result.poll.ok and result.readiness is not None, clock.sleeps
        assert not clock.sleeps, clock.sleeps
        assert result.readiness.warming == {} and result.readiness.progress.done
        text = render_cycle(store, config, result, clock())
    finally:
        store.close()
    text = "\n".join(line.rstrip() for line in text.splitlines()[:-1])  # drop the timing line
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text + "\n")
    assert text + "\n" == GOLDEN.read_text()
    assert {n.transition.state.key.rule for n in result.engine.notices} >= {
        "model-spend-spike",
        "key-spend-spike",
    }
