"""SIGTERM and Ctrl-C stop `once` and `demo` as real processes: no traceback, a clear exit
code, and the demo's throw-away store removed."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from daemon.langdock.simulator import Simulator
from daemon.store import Store
from tests.cli.conftest import ROOT, SECRET

pytestmark = pytest.mark.long  # each test starts a process and stops it mid-run
DEADLINE = 60.0


# a job a shell starts in the background ignores SIGINT (so Ctrl-C reaches the foreground only)
IN_THE_BACKGROUND = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


class Process:
    """A CLI process whose stdout and stderr are read line by line as they come (with
    ``background``, started as a shell's background job: SIGINT ignored)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, background: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [*(IN_THE_BACKGROUND if background else []), sys.executable, "-m", "daemon.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            (self.out if name == "out" else self.err).append(line)
            self.lines.put((name, line))

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line (on stdout or stderr) matching ``pattern``, within the deadline."""
        end = time.monotonic() + DEADLINE
        while (left := end - time.monotonic()) > 0:
            try:
                _name, line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matched {pattern!r}; stderr: {''.join(self.err)[-2000:]}")

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=DEADLINE)
        for reader in self._readers:
            reader.join(timeout=DEADLINE)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def backfill_config(tmp_path: Path, base_url: str) -> Path:
    """35 days at 30 export calls a minute: a backfill that runs for about an hour."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"langdock:\n  base_url: {base_url}\n  api_key: ${{CLI_TEST_KEY}}\n"
        "  max_requests_per_minute: 30\n"
        "timezone: Europe/Berlin\npoll: {backfill: 35d}\nstate: {path: state.db}\n"
    )
    return path


@pytest.mark.parametrize(
    ("sig", "code", "background"),
    [(signal.SIGTERM, 0, False), (signal.SIGINT, 130, False), (signal.SIGTERM, 0, True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-to-a-background-job"],
)
def test_a_signal_during_a_backfill_stops_once_cleanly(
    tmp_path: Path, live_simulator: Simulator, sig: signal.Signals, code: int, background: bool
) -> None:
    config = backfill_config(tmp_path, live_simulator.base_url)
    once = Process(
        "--config", str(config), "once", env={"CLI_TEST_KEY": SECRET}, background=background
    )
    try:
        once.wait_for(r'"event": "poll_started"')
        assert once.stop(sig) == code
    finally:
        once.kill()
    err = "".join(once.err)
    assert "Traceback" not in err and "Error" not in err, err
    (stopped,) = [line for line in once.err if '"event": "stopped"' in line]
    assert f'"signal": "{sig.name}"' in stopped and '"command": "once"' in stopped
    assert once.out == []  # no half-printed tables
    # the store was closed properly: the next run opens it (exclusively) and goes on
    Store.open(tmp_path / "state.db", exclusive=True).close()


@pytest.mark.usefixtures("demo_port")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_demo_removes_its_store_when_stopped(sig: signal.Signals) -> None:
    demo = Process("demo", "--interval", "1h", "--backfill", "2h", "--log-level", "warning")
    try:
        store = Path(demo.wait_for(r"throw-away store in (\S+);").group(1))
        assert store.is_dir() and (store / "config.yaml").exists()
        demo.wait_for(r"export calls in")  # the first poll is done: the demo waits an hour
        assert demo.stop(sig) == 0
    finally:
        demo.kill()
    assert "Traceback" not in "".join(demo.err), "".join(demo.err)
    assert "demo: stopped.\n" in demo.out
    assert not store.exists()


@pytest.mark.usefixtures("demo_port")
@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background-job"])
def test_sigterm_mid_poll_also_removes_the_demo_store(background: bool) -> None:
    """A slow first poll (long backfill): the stop lands while export calls are in flight;
    also where the demo runs as a shell's background job (SIGINT ignored)."""
    demo = Process("demo", "--backfill", "30d", "--log-level", "info", background=background)
    try:
        store = Path(demo.wait_for(r"throw-away store in (\S+);").group(1))
        demo.wait_for(r"poll_started")
        assert demo.stop(signal.SIGTERM) == 0
    finally:
        demo.kill()
    assert "Traceback" not in "".join(demo.err), "".join(demo.err)
    assert not store.exists()
