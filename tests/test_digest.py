"""Spend digests: content from the store, the CLI dry run, and the daemon's cron jobs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.cycle import run_cycle
from daemon.digest import build_digest, digest_message
from daemon.langdock import LangdockClient
from daemon.langdock.simulator import Simulator
from daemon.service import Daemon
from daemon.store import Store
from tests.conftest import API_KEY, FakeClock


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"langdock: {{base_url: '{base_url}', api_key: '{API_KEY}',"
        " max_requests_per_minute: 250}\n"
        "timezone: Europe/Berlin\npoll: {backfill: 3d}\nstate: {path: state.db}\n"
        "metrics: {listen: '127.0.0.1:0'}\n"
        "rules: [{name: monthly, kind: budget, window: month, limit_usd: 10000, forecast: true},"
        " {name: spike, kind: anomaly, each: model, window: 1h, baseline: 1d}]\n" + extra
    )
    return path


async def test_daily_digest_content(
    tmp_path: Path, simulator: Simulator, client: LangdockClient, clock: FakeClock
) -> None:
    config = load_config(write_config(tmp_path, simulator.base_url), {})
    store = Store.open(config.state.path)
    await run_cycle(config, store, client, clock)
    digest = build_digest(store, config, clock(), "day")
    assert digest.period.id == "2026-11-19"
    truth = sum(t.cost_usd for t in store.key_model_totals(digest.period.start, digest.period.end))
    assert digest.total == truth and digest.previous_total > 0
    assert digest.top_keys[0][0] == "prod-web (key_4f1a9c)" and len(digest.top_models) == 4
    assert [b.rule for b in digest.budgets] == ["monthly"]
    message = digest_message(digest, config.tz)
    assert message.text.startswith("Daily LLM spend digest: 2026-11-19: $")
    assert "vs the period before" in message.text
    week = build_digest(store, config, clock() + timedelta(days=3), "week")
    assert week.period.id == "2026-W47"
    store.close()


def test_digest_dry_run_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = Simulator(api_key=API_KEY)
    sim.start()
    try:
        path = write_config(tmp_path, sim.base_url)
        path.write_text(path.read_text().replace("backfill: 3d", "backfill: 3h"))
        assert main(["once", "--config", str(path)]) == 0
        capsys.readouterr()
        assert main(["digest", "--config", str(path), "--period", "day", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "Daily LLM spend digest" in out and "Top keys" in out and "Budgets now" in out
    finally:
        sim.stop()


async def test_digests_are_scheduled_in_the_local_zone(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "http://127.0.0.1:9",
        "digests:\n  - {period: day, at: '9:05'}\n  - {period: week, at: '08:00', weekday: mon}\n",
    )
    config = load_config(path, {})
    store = Store.open(config.state.path)
    daemon = Daemon(path, config, store)
    await daemon.start()
    try:
        triggers = {job.id: str(job.trigger) for job in daemon.scheduler.get_jobs()}
        assert "hour='9', minute='5'" in triggers["digest-0"]
        assert "day_of_week='mon', hour='8', minute='0'" in triggers["digest-1"]
        assert daemon.scheduler.get_job("digest-0").trigger.timezone.key == "Europe/Berlin"
    finally:
        daemon.stopping.set()
        await daemon.stop()
