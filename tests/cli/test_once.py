"""`once` in-process and as a real process, against the loopback simulator; and why it exits 1."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.cli.app import main
from daemon.cli.once import once_problems
from daemon.cycle import CycleResult
from daemon.ingest import PollReport
from daemon.langdock.simulator import Simulator
from daemon.notify import DeliveryReport
from daemon.rules.engine import EngineResult
from tests.cli.conftest import SECRET, config_for, run_cli
from tests.fake_slack import FakeSlack


def test_once_then_status(live_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = live_config
    assert main(["--config", str(path), "once", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "prod-web (key_4f1a9c)" in captured.out and "claude-sonnet-4" in captured.out
    assert "TOTAL" in captured.out and "export calls" in captured.out
    assert SECRET not in captured.out + captured.err
    assert '"event": "poll_finished"' in captured.err  # JSON logs on stderr
    assert "once:" not in captured.err  # nothing failed: no problem line, exit 0
    assert main(["status", "--config", str(path)]) == 0
    status = capsys.readouterr().out
    assert (
        "prod-web (key_4f1a9c)" in status and "last successful api-keys fetch: 0 min ago" in status
    )


def test_rules_in_once_check_and_status(
    live_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = live_config
    path.write_text(
        path.read_text()
        + """rules:
  - {name: tiny-daily, kind: budget, each: api_key, window: 24h, limit_usd: 0.01}
  - {name: ghost, kind: budget, scope: {api_key: "ghost-*"}, window: month, limit_usd: 5}
"""
    )
    assert main(["check", "--config", str(path)]) == 0
    assert "no store yet" in capsys.readouterr().out
    assert main(["once", "--config", str(path)]) == 0
    once = capsys.readouterr()
    assert "tiny-daily" in once.out and "100% FIRING" in once.out
    assert '"event": "alert_firing"' in once.err
    assert main(["check", "--config", str(path)]) == 0
    check = capsys.readouterr().out
    assert "tiny-daily: intern-sandbox (key_d61f2b), nightly-batch (key_a5e870)" in check
    assert "warning: ghost: scope.api_key 'ghost-*' matches no API key seen so far" in check
    assert main(["status", "--config", str(path)]) == 0
    status = capsys.readouterr().out
    assert "Active alert" in status and "FIRING    critical" not in status
    assert status.count("tiny-daily") >= 10  # five budget rows and five active alerts


def test_once_fails_with_exit_1_on_a_bad_key(
    tmp_path: Path,
    live_simulator: Simulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", "sk-wrong-9a8b7c6d")
    path = config_for(tmp_path, live_simulator.base_url)
    assert main(["--config", str(path), "once"]) == 1
    captured = capsys.readouterr()
    assert "USAGE_EXPORT_API" in captured.out
    assert "sk-wrong-9a8b7c6d" not in captured.out + captured.err
    (problem,) = [line for line in captured.err.splitlines() if line.startswith("once: ")]
    assert problem.startswith("once: fetch failed: ") and "USAGE_EXPORT_API" in problem
    assert "fix the langdock section of the config" in problem
    assert "notify failed" not in captured.err


def test_once_as_a_real_process(tmp_path: Path, live_simulator: Simulator) -> None:
    path = config_for(tmp_path, live_simulator.base_url)
    env = {**os.environ, "CLI_TEST_KEY": SECRET}
    done = run_cli(env, "--config", str(path), "--log-level", "debug", "once")
    assert done.returncode == 0, done.stderr
    assert "nightly-batch (key_a5e870)" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0
    bad = run_cli(env, "--config", str(tmp_path / "missing.yaml"), "once")
    assert bad.returncode == 2 and "file not found" in bad.stderr


def test_once_names_a_notify_failure(live_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slack = FakeSlack().start()
    try:
        live_config.write_text(
            live_config.read_text()
            + "slack: {token: xoxb-revoked-one, channel: '#llm-costs',"
            + f" api_url: {slack.url}/api/}}"
            + "\nrules:\n  - {name: tiny, kind: budget, each: api_key, window: 24h,"
            " limit_usd: 0.01}\n"
        )
        assert main(["once", "--config", str(live_config)]) == 1
    finally:
        slack.stop()
    captured = capsys.readouterr()
    (problem,) = [line for line in captured.err.splitlines() if line.startswith("once: ")]
    assert problem.startswith("once: notify failed: 0 Slack message(s) queued for retry,")
    assert "rejected" in problem and "langdock-budget test-alert" in problem
    assert "fetch failed" not in captured.err


def test_once_problems_name_each_part_that_failed() -> None:
    ok = PollReport(started=datetime(2026, 11, 20, tzinfo=UTC), planned=2, fetched=2)
    assert once_problems(CycleResult(ok, EngineResult(), DeliveryReport(sent=3))) == []
    queued = once_problems(CycleResult(ok, EngineResult(), DeliveryReport(deferred=2)))
    assert queued == [
        "notify failed: 2 Slack message(s) queued for retry, 0 rejected; Slack or the network is"
        " failing; the next once or run sends what is queued"
    ]
    (store,) = once_problems(
        CycleResult(ok, EngineResult(), DeliveryReport(), store_error="database or disk is full")
    )
    assert store.startswith("store failed: the alert state was not saved (database or disk")
    aborted = PollReport(started=ok.started, planned=9, aborted="store")
    (fetch,) = once_problems(CycleResult(aborted, EngineResult(), DeliveryReport()))
    assert fetch.startswith("fetch failed: 0 of 9 buckets not fetched (stopped: store)")
    assert "free disk space" in fetch
