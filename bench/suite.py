"""How long `make test` takes: the whole suite, run after run, wall time and CPU.

Runs ``make test`` in this tree ``--runs`` times (default 3) and prints, per run, its wall
time, the CPU (user + system) of every process it waited for (pytest, its workers, the daemons
and servers they started and waited for; a PostgreSQL server is started by ``pg_ctl`` and not
waited for, so its CPU is not counted), the load average and how fast the machine ran Python
just before it (`probe_s`), and the ranges.

    python bench/suite.py [--runs 3] [--workers 3,4] [--baseline DIR]

``--workers`` alternates worker counts (``TEST_WORKERS``) in the same runs; ``--baseline DIR``
alternates with the suite of another tree (e.g. ``git archive REV | tar -x -C DIR``), run with
this tree's virtualenv. The target in docs/PERFORMANCE.md: under a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 60.0


def run_suite(tree: Path, workers: str | None) -> tuple[float, float, str]:
    """One ``make test`` in ``tree``: wall seconds, CPU seconds, pytest's summary line."""
    # this tree's virtualenv as it is (-o: its install stamp counts as current): a baseline
    # tree's newer pyproject.toml would otherwise reinstall this tree's package from there
    venv = ROOT / ".venv"
    command = ["make", "--no-print-directory", "-o", f"{venv}/.installed", "test", f"VENV={venv}"]
    if workers:
        command.append(f"TEST_WORKERS={workers}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = re.findall(r"^=+ (.*(?:passed|failed|error).*) =+$", done.stdout, re.M)
    summary = found[-1] if found else f"no pytest summary (exit {done.returncode})"
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-3000:] + done.stderr[-2000:])
    return wall, cpu, summary


def probe_s() -> float:
    """CPU seconds of a fixed pure-Python loop: how fast the machine runs Python right now.
    On this VM the same suite takes from 74 to 121 s of CPU from one hour to the next; the
    probe moves with it, so runs of different hours can be told apart from changes."""
    started = time.process_time()
    sum(i * i for i in range(5_000_000))
    return time.process_time() - started


def span(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", help="worker counts to alternate, e.g. 3,4")
    parser.add_argument("--baseline", type=Path, help="a tree whose suite to alternate with")
    args = parser.parse_args()
    # started in the background (`cmd &`, nohup), this process ignores SIGINT and so would
    # every process of the suite: the CLI's SIGTERM tests need it handled as usual
    signal.signal(signal.SIGINT, signal.default_int_handler)
    counts: list[str | None] = args.workers.split(",") if args.workers else [None]
    sides = [(f"{n} workers" if n else "this tree", ROOT, n) for n in counts]
    if args.baseline:
        sides.append((f"baseline {args.baseline}", args.baseline.resolve(), None))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in sides}
    cores = len(os.sched_getaffinity(0))
    for run in range(1, args.runs + 1):
        for name, tree, workers in sides:
            load, probe = os.getloadavg()[0], probe_s()
            wall, cpu, summary = run_suite(tree, workers)
            results[name].append((wall, cpu))
            print(
                f"suite run {run}, {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, load before"
                f" {load:.1f} on {cores} cores, CPU probe {probe:.2f} s; {summary}",
                flush=True,
            )
    for name, measured in results.items():
        walls = [w for w, _ in measured]
        print(
            f"suite: make test, {name:<24} {span(walls)} s wall, {span([c for _, c in measured])}"
            f" s CPU over {len(measured)} runs   target < {TARGET_S:g} s"
            f"   ratio {max(walls) / TARGET_S:.2f} (slowest)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
