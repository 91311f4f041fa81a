"""Shared by the command-line tests: the simulator on the real clock, a config for it, and the
CLI as a real process."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.langdock.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = "sk-cli-test-77f0e1d2"


@pytest.fixture
def demo_port() -> Iterator[None]:
    """`demo` listens on 9464 when nothing listens there yet: two demos started at once (by
    parallel test workers, or test runs side by side) would both pick it and one would fail.
    A lock on a file in the temporary directory lets one demo test run at a time."""
    with (Path(tempfile.gettempdir()) / "langdock-budget-demo-port.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


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
