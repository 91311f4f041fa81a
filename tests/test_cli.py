"""The command line, in-process and as a real process, against the loopback simulator."""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon import __version__
from daemon.cli import build_parser, main, once_problems
from daemon.cli_silence import unmatched_member
from daemon.cycle import CycleResult
from daemon.demo import banner_lines
from daemon.ingest import PollReport
from daemon.logs import default_log_format
from daemon.notify import DeliveryReport
from daemon.rules.engine import EngineResult
from daemon.simulator import Simulator
from daemon.store import Store
from tests.fake_slack import FakeSlack

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


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and nested action under ``parser``: its words and its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from walk(sub, (*path, name))


def test_every_command_has_a_description_in_its_help() -> None:
    commands = dict(walk(build_parser()))
    assert {
        ("run",),
        ("once",),
        ("import",),
        ("demo",),
        ("silence", "add"),
        ("silence", "list"),
        ("silence", "expire"),
        ("rules", "export-prometheus"),
    } <= set(commands)
    for words, parser in commands.items():
        assert parser.description and len(parser.description) > 30, words
        first_words = " ".join(parser.description.split()[:5])
        assert first_words in " ".join(parser.format_help().split()), words


def test_nested_help_as_a_real_process() -> None:
    done = run_cli(dict(os.environ), "silence", "add", "--help")
    assert done.returncode == 0
    assert "a glob that matches nothing" in " ".join(done.stdout.split())


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


def test_silence_add_warns_when_the_member_matches_nothing_seen(
    live_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = live_config
    path.write_text(
        path.read_text() + "rules:\n  - {name: tiny, kind: budget, each: api_key, window: 24h,"
        " limit_usd: 0.01}\n"
    )
    assert main(["once", "--config", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    add = ["silence", "add", "--config", str(path), "--rule", "tiny", "--for", "1h"]
    add += ["--reason", "a load test"]
    for glob in ("prod-*", "key_4f1a*"):  # a key name, a key id: no warning
        assert main([*add, "--member", glob]) == 0
        assert "warning" not in capsys.readouterr().err
    assert main([*add, "--member", "prd-*"]) == 0  # a typo: still created, with a warning
    captured = capsys.readouterr()
    assert captured.out.startswith("silence 3: tiny / prd-* until ")
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "'prd-*' matches no API key (by id or name) of the 5 seen so far" in warning
    assert main([*add, "--member", "claude-*"]) == 0  # a model, but the rule is per key
    assert "matches no API key" in capsys.readouterr().err
    store = Store.open(path.parent / "state.db")
    try:
        assert [s.member for s in store.silences(datetime.now(UTC))] == [
            "prod-*",
            "key_4f1a*",
            "prd-*",
            "claude-*",
        ]
    finally:
        store.close()


def test_unmatched_member_matches_like_silences_do() -> None:
    keys, models = {"key_1": "prod-web"}, ["gpt-4o"]
    assert unmatched_member("gpt-*", None, keys, models) is None
    assert unmatched_member("prod-*", "api_key", keys, models) is None
    assert unmatched_member("key_?", "api_key", keys, models) is None
    assert unmatched_member("Prod-*", None, keys, models) is not None  # case-sensitive
    warning = unmatched_member("gpt-*", "api_key", keys, models)
    assert warning is not None and "model" not in warning.split(";")[0]
    warning = unmatched_member("x*", None, {}, [])
    assert warning is not None
    assert "no API key (by id or name) of the 0 seen or model of the 0 seen so far" in warning


def test_the_log_format_follows_the_terminal() -> None:
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    assert default_log_format(None, Stream(True)) == "console"
    assert default_log_format(None, Stream(False)) == "json"
    assert default_log_format("json", Stream(True)) == "json"
    assert default_log_format("console", Stream(False)) == "console"
    assert default_log_format(None, object()) == "json"  # no isatty at all


def read_all(fd: int, proc: subprocess.Popen[bytes], deadline: float = 60.0) -> str:
    """What the process writes to a pty until it exits (EIO once the last writer is gone)."""
    import time

    chunks: list[bytes] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("env_format", [None, "json"])
def test_console_logs_on_a_terminal_as_a_real_process(
    tmp_path: Path, env_format: str | None
) -> None:
    import pty

    path = tmp_path / "config.yaml"
    path.write_text("langdock: {api_key: sk-inline-secret}\nstate: {path: s.db}\n")
    path.chmod(0o644)  # an inline secret in a world-readable file: a config_warning log line
    env = {k: v for k, v in os.environ.items() if k != "LANGDOCK_BUDGET_LOG_FORMAT"}
    if env_format:
        env["LANGDOCK_BUDGET_LOG_FORMAT"] = env_format
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(path), "check"],
            stdout=subprocess.DEVNULL,
            stderr=follower,
            env=env,
            cwd=ROOT,
        )
        os.close(follower)
        text = read_all(leader, proc)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(leader)
    (line,) = [line for line in text.splitlines() if "config_warning" in line]
    if env_format == "json":
        assert line.startswith("{") and '"event": "config_warning"' in line
    else:
        assert not line.startswith("{") and "[warning" in line
    assert "sk-inline-secret" not in text
    piped = run_cli(env, "--config", str(path), "check")  # stderr is a pipe: JSON
    assert '"event": "config_warning"' in piped.stderr


def test_importing_the_cli_and_running_check_does_not_load_polars(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("langdock: {api_key: x}\nstate: {path: s.db}\ntimezone: UTC\n")
    config.chmod(0o600)
    calls = tmp_path / "calls.csv"
    calls.write_text(
        "Date,API Key ID,Model,Input Tokens,Output Tokens,Input Token Price,Output Token Price\n"
        "2026-11-20 10:15:00,k1,gpt-4o,500,1200,2.50,10.00\n"
    )
    probe = (
        "import sys\n"
        "import daemon.cli, daemon.service\n"
        "assert 'polars' not in sys.modules, 'polars loaded by an import'\n"
        "assert daemon.cli.main(['check', '--config', sys.argv[1]]) == 0\n"
        "assert 'polars' not in sys.modules, 'polars loaded by check'\n"
        "assert daemon.cli.main(['import', '--config', sys.argv[1], sys.argv[2]]) == 0\n"
        "print('import loaded polars:', 'polars' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(config), str(calls)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "import loaded polars: True" in done.stdout  # the probe does see it when loaded


def test_the_demo_banner_has_room_for_the_metrics_urls() -> None:
    args = argparse.Namespace(interval="15s", backfill="26h", spike_after="30s")
    lines = banner_lines(args, "http://127.0.0.1:5000", "/tmp/demo-x")
    assert lines[0] == (
        "demo: simulator at http://127.0.0.1:5000, throw-away store in /tmp/demo-x; Ctrl-C stops."
    )
    assert len(lines) == 2 and "'nightly-batch' key starts spiking 30s in:" in lines[1]
    more = banner_lines(
        args,
        "http://127.0.0.1:5000",
        "/tmp/demo-x",
        metrics_url="http://127.0.0.1:9464/metrics",
        health_url="http://127.0.0.1:9464/healthz",
    )
    assert more[1:3] == [
        "demo: Prometheus metrics at http://127.0.0.1:9464/metrics",
        "demo: health check at http://127.0.0.1:9464/healthz",
    ]
