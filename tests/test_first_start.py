"""The first start, cycle by cycle: budgets right from the first poll, anomaly rules warming
up until the background has the hourly history, nothing "new" about keys that were always
there, and a key that really is new still announced."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.cycle import evaluate_rules, run_cycle
from daemon.langdock import LangdockClient
from daemon.langdock.csv import KeyUsage
from daemon.langdock.simulator import Simulator
from daemon.refine import Refiner
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from daemon.store import Store
from tests.conftest import API_KEY, FakeClock

RULES = """
rules:
  - {name: keys-month, kind: budget, each: api_key, window: month, limit_usd: 100000}
  - {name: ws-7d, kind: budget, window: 7d, limit_usd: 100000}
  - {name: spike, kind: anomaly, each: model, metric: cost_usd, window: 1h, baseline: 3d}
  - {name: new-keys, kind: new_member, each: api_key}
"""


def make_config(tmp_path: Path, sim: Simulator) -> Config:
    """Five days of backfill: the anomaly rule's 3-day baseline and two days more (what the
    test checks does not grow with the backfill; the refinement's calls, 2 an hour, do)."""
    (tmp_path / "config.yaml").write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '{API_KEY}',"
        " backfill_max_requests_per_minute: 6000}\n"
        "timezone: Europe/Berlin\npoll: {backfill: 5d}\nstate: {path: state.db}\n" + RULES
    )
    return load_config(tmp_path / "config.yaml", {})


def truth(sim: Simulator, key_index: int, start: object, end: object) -> Decimal:
    return sum(
        (sim.pair_usage(key_index, mi, start, end)["cost"] for mi in range(len(sim.models))),  # type: ignore[arg-type]
        Decimal(0),
    )


@pytest.mark.long
async def test_first_start_budgets_right_anomalies_warm_up_no_new_member_flood(
    tmp_path: Path, simulator: Simulator, client: LangdockClient, clock: FakeClock
) -> None:
    config = make_config(tmp_path, simulator)
    store = Store.open(config.state.path, tz=config.tz)
    first = await run_cycle(config, store, client, clock)
    assert first.poll.ok and first.readiness is not None
    assert first.poll.calls < 2 * 5 * 24 / 4, "coarse: far fewer calls than one per hour"
    assert set(first.readiness.warming) == {"spike"}
    assert "baseline" in first.readiness.warming["spike"]
    month = calendar_period("month", clock(), config.tz)
    by_key = {
        e.member.id: e.spend
        for e in first.engine.all_evaluations()
        if isinstance(e, BudgetEvaluation) and e.rule == "keys-month"
    }
    for ki, key in enumerate(simulator.keys):
        start = max(month.start, bucket_start(clock() - config.poll.backfill, config.tz))
        assert by_key[key.id] == truth(simulator, ki, start, clock()), key.name
    assert first.engine.notices == [], "nothing is new and nothing can fire while warming up"

    refiner = Refiner(store, lambda: config, lambda: client, clock, asyncio.Event())
    assert await refiner.drain() == 0
    second = await run_cycle(config, store, client, clock)
    assert second.readiness is not None and second.readiness.warming == {}
    assert second.readiness.progress.done
    assert not [n for n in second.engine.notices if n.transition.state.key.rule == "new-keys"]

    # a key that shows up after the first start is new
    clock.advance(timedelta(hours=1))
    hour = bucket_start(clock(), config.tz)
    rows = [KeyUsage("key_new", "brand-new", "gpt-4o", 3, Decimal("0.5"))]
    store.replace_key_usage(hour, bucket_end(clock(), config.tz), rows, clock())
    third = evaluate_rules(store, config, clock(), persist=False)
    new = [e for e in third.all_evaluations() if e.rule == "new-keys"]
    holding = {e.member.id for e in new for c in e.conditions if c.holds}
    assert holding == {"key_new"}
    store.close()
