"""The command line, in-process and as a real process, against the loopback simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import __version__
from daemon.cli import main
from daemon.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-cli-test-77f0e1d2"


@pytest.fixture
def live_simulator() -> Iterator[Simulator]:
    """The simulator on the real clock: the CLI reads the wall clock like a user would."""
    sim = Simulator(api_key=SECRET)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def live_config(tmp_path: Path, live_simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config for the live simulator, its key in the environment as ${CLI_TEST_KEY}."""
    monkeypatch.setenv("CLI_TEST_KEY", SECRET)
    return config_for(tmp_path, live_simulator.base_url)


def config_for(tmp_path: Path, base_url: str, key_var: str = "CLI_TEST_KEY") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"langdock:\n  base_url: {base_url}\n  api_key: ${{{key_var}}}\n"
        "  max_requests_per_minute: 250\n"
        "timezone: Europe/Berlin\npoll: {backfill: 3h}\nstate: {path: state.db}\n"
    )
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"langdock-budget {__version__}"


def test_check_valid_and_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", SECRET)
    path = config_for(tmp_path, "https://api.langdock.com")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(valid)" in out and "Europe/Berlin" in out and SECRET not in out
    path.write_text(path.read_text() + "rules: [{name: x, kind: budget, window: 2 weeks}]\n")
    monkeypatch.setenv("LANGDOCK_BUDGET_CONFIG", str(path))  # the default when --config is absent
    assert main(["check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{path}: rules[0].window: unknown window '2 weeks'")


def test_once_then_status(live_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = live_config
    assert main(["--config", str(path), "once", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "prod-web (key_4f1a9c)" in captured.out and "claude-sonnet-4" in captured.out
    assert "TOTAL" in captured.out and "export calls" in captured.out
    assert SECRET not in captured.out + captured.err
    assert '"event": "poll_finished"' in captured.err  # JSON logs on stderr
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


def test_status_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", SECRET)
    assert main(["status", "--config", str(config_for(tmp_path, "https://api.langdock.com"))]) == 0
    assert "run `langdock-budget once` first" in capsys.readouterr().out


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m daemon.cli ARGS` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


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


def test_demo_runs_a_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--cycles", "1", "--backfill", "2h", "--log-level", "warning"]) == 0
    out = capsys.readouterr().out
    assert "demo: simulator at http://127.0.0.1:" in out
    assert "prod-web (key_4f1a9c)" in out and "--- poll 1 ---" in out
    assert "per-key-daily" in out and "model-spend-spike" in out
