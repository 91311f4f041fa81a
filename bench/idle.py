"""Idle benchmark: RSS and CPU of `langdock-budget run` between polls, over 60 seconds.

Starts the bundled simulator in this process and the daemon as a child (poll interval 10m,
so after the first cycle it only idles), waits for the first cycle on a NOTIFY_SOCKET, then
samples the child's /proc for 60 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.langdock.simulator import Simulator

SECONDS = float(os.environ.get("IDLE_SECONDS", "60"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    sim = Simulator(api_key="idle-key")
    sim.start()
    with tempfile.TemporaryDirectory() as tmp:
        notify_path = Path(tmp) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.settimeout(120)
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"langdock: {{base_url: '{sim.base_url}', api_key: idle-key,"
            " max_requests_per_minute: 250}\npoll: {interval: 10m, backfill: 6h}\n"
            "state: {path: state.db}\nmetrics: {listen: '127.0.0.1:0'}\n"
            "rules: [{name: monthly, kind: budget, each: api_key, window: month, limit_usd: 500}]\n"
        )
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        while "STATUS=cycle 1" not in sock.recv(4096).decode():
            pass
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - t0 < SECONDS:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(1)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    sim.stop()
    print(
        f"{'idle: RSS between polls':<34} {peak:>10.1f} MB     target <= 60 MB    ratio"
        f" {peak / 60:.2f}"
    )
    print(
        f"{'idle: CPU between polls':<34} {cpu:>10.2f} %      target <= 1 %      ratio"
        f" {cpu / 1:.2f}"
    )


if __name__ == "__main__":
    main()
