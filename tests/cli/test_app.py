"""The program as a whole (`daemon.cli.app`): version, help, log format, what importing loads."""

from __future__ import annotations

import argparse
import os
import runpy
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import __version__
from daemon.cli.app import build_parser, main
from daemon.logs import default_log_format
from tests.cli.conftest import ROOT, run_cli


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"langdock-budget {__version__}"


def test_python_m_daemon_cli_runs_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m daemon.cli` (daemon/cli/__main__.py), in-process."""
    monkeypatch.setattr(sys, "argv", ["langdock-budget", "--version"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("daemon.cli", run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"langdock-budget {__version__}"


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


@pytest.mark.long  # two processes each
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


@pytest.mark.long  # a process that loads polars
def test_check_loads_no_network_web_or_columnar_library_and_import_loads_polars(
    tmp_path: Path,
) -> None:
    """`check` (and the daemon's modules, imported) load none of the libraries only some
    paths need: polars (import), slack-sdk (a Slack route), httpx (export calls), apscheduler,
    starlette and uvicorn (`run`): each process of the CLI starts faster for it."""
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
        "import daemon.cli\n"
        "assert daemon.cli.main(['check', '--config', sys.argv[1]]) == 0\n"
        "named = {'polars', 'slack_sdk', 'httpx', 'apscheduler', 'starlette', 'uvicorn'}\n"
        "assert not named & sys.modules.keys(), sorted(named & sys.modules.keys())\n"
        "import daemon.service\n"
        "assert 'polars' not in sys.modules, 'polars loaded by the service'\n"
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
