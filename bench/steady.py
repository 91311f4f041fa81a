"""Steady-state benchmark: the cycles of a daemon that has run for a month.

Builds (once, then reuses: bench/.cache/) the store a daemon holds after 30 days with
KEYS keys x 10 models, written hour by hour as the poller would, plus the daily sums. Then,
in a fresh process per run (so each peak RSS is its own), it plays what `run` does every five
minutes for two hours from 21:40: the running hour's bucket rewritten with new values, the hour
that settled 90 minutes ago fetched once more, and a cycle of the scale benchmark's 200 rules:
evaluate, load what /metrics shows, build the snapshot, render it. The first cycle is the one
after a restart (nothing kept yet); the others are the steady ones.

Each run plays the polls twice, in two processes: with the window sums kept between cycles
(`daemon/store/sum_cache.py`, the daemon's way) and with them summed again every cycle (the
previous way: the kept sums and the alert states dropped before each cycle).

    python bench/steady.py [--keys 1000] [--polls 24] [--runs 3] [--modes kept,summed]
                           [--baseline DIR]

``--modes kept,postgresql`` plays the same polls on a PostgreSQL copy of the store as well
(`bench/pg_store.py`: a throw-away server from Debian's binaries), as the lease's holder,
interleaved with SQLite's.

``--baseline DIR`` also plays the polls (sums kept) with the code of another tree, e.g. the
last commit unpacked by ``git archive HEAD | tar -x -C DIR``, in the same runs, interleaved:
the before and after of a change under the same load. `make bench` runs 1,000 keys (three
runs) and then 10,000 keys (one run, the daemon's way only: a run takes minutes).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.langdock.csv import KeyUsage

sys.path.insert(0, str(Path(__file__).parent))

from scale import rules_yaml

MODELS, DAYS = 10, 30
END = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)  # the store holds buckets up to here
FIRST_POLL = datetime(2026, 11, 30, 21, 40, tzinfo=UTC)
CACHE = Path(__file__).parent / ".cache"
INITDB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's, not on PATH


def rows_of(keys: int, hour: datetime, change: int = 0) -> list[KeyUsage]:
    from daemon.langdock.csv import KeyUsage

    salt = int(hour.timestamp()) // 3600 + change
    return [
        KeyUsage(
            f"key_{k:05d}",
            f"team-{k % 97}-key-{k}",
            f"model-{m}",
            (k + m + salt) % 5 + 1,
            Decimal((k * MODELS + m + 1 + salt) % 997) / 10_000,
            prompt_tokens=k + m,
            completion_tokens=m,
        )
        for k in range(keys)
        for m in range(MODELS)
    ]


def build(keys: int) -> Path:
    """The month's store for ``keys`` (built once, then reused)."""
    from daemon.logs import configure_logging
    from daemon.store import Store

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"steady-{keys}x{MODELS}x{DAYS}d.db"
    if path.exists():
        return path
    configure_logging("json", "warning")
    rows = keys * MODELS * 24 * DAYS
    print(
        f"steady: building {path.name} ({rows:,} rows; once, then reused from bench/.cache/):"
        f" about {rows / 80_000 / 60:.0f} min on the 2-core VM (80,000 rows a second)",
        flush=True,
    )
    started = time.perf_counter()
    store = Store.open(path.with_suffix(".part"), exclusive=True, tz=None)
    hour = END - timedelta(days=DAYS)
    done = 0
    while hour <= END:
        store.replace_key_usage(hour, hour + timedelta(hours=1), rows_of(keys, hour), hour)
        hour += timedelta(hours=1)
        done += 1
        spent = time.perf_counter() - started
        if done % 72 == 0 and spent > 30:  # every third day: how far, and how long still
            left = spent / done * (DAYS * 24 + 1 - done)
            print(f"steady: {done // 24} of {DAYS} days stored, about {left / 60:.0f} min left")
    store.refresh_rollups(END)
    store.close()
    path.with_suffix(".part").rename(path)
    path.with_suffix(".part.lock").unlink(missing_ok=True)
    print(f"steady: built {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def play(keys: int, polls: int, kept: bool, url: str | None = None) -> dict[str, object]:
    """One process: the polls, each cycle timed; returns the times and the peak RSS. With
    ``url``, on that PostgreSQL copy of the store (`bench/pg_store.py`), as the leader."""
    import tempfile

    from daemon.config import load_config
    from daemon.cycle import CycleResult, evaluate_rules
    from daemon.ingest import PollReport
    from daemon.logs import configure_logging
    from daemon.metrics import render
    from daemon.notify import DeliveryReport
    from daemon.published import load_published
    from daemon.service import Daemon
    from daemon.state import open_store

    configure_logging("json", "warning")
    path = build(keys)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        state = (
            f"{{path: '{path}'}}"
            if url is None
            else f"{{url: '{url}', password: '${{PGPASSWORD}}'}}"
        )
        config_path.write_text(
            f"langdock: {{api_key: bench}}\ntimezone: UTC\nstate: {state}\n" + rules_yaml()
        )
        config = load_config(config_path)
        store = open_store(config, exclusive=True)  # PostgreSQL: the lease, renewed, fenced
        store.save_alerts({})  # every run starts from the same state: no alerts, and no
        with store._transaction():  # transitions logged by the runs before (a digest's log)
            store._conn.execute("DELETE FROM alert_events")
        daemon = Daemon(config_path, config, store)
        times, cpu, between, lines = [], [], [], 0
        now = FIRST_POLL
        for poll in range(polls):
            running = now.replace(minute=0)
            store.replace_key_usage(
                running,
                running + timedelta(hours=1),
                rows_of(keys, running, poll),
                now,
            )
            if now.minute == 30:  # settle_after 90m: the hour that ended 90 minutes ago
                settled = running - timedelta(hours=2)
                store.replace_key_usage(
                    settled,
                    settled + timedelta(hours=1),
                    rows_of(keys, settled, 1),
                    now,
                )
            store.refresh_rollups(now)
            if not kept:
                store._sums.clear()  # the previous way: everything summed again
                store._points.clear()
                store._alerts_known = None
            started, cpu_started = time.perf_counter(), time.process_time()
            engine = evaluate_rules(store, config, now)
            published = load_published(store, config, engine, now)
            daemon.publish(
                CycleResult(PollReport(started=now), engine, DeliveryReport(), published=published)
            )
            lines = render(daemon.collector).count("\n")  # as a scrape: the text, once
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            started = time.perf_counter()
            daemon.heap.cycle_ended()  # as `run` does after each cycle (`daemon.heap`)
            between.append(time.perf_counter() - started)
            now += timedelta(minutes=5)
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"times": times, "cpu": cpu, "between": between, "peak_mb": peak, "lines": lines}


def span(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--polls", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="kept,summed",
        help="kept, summed, postgresql (kept, on a PostgreSQL copy of the store), comma-separated",
    )
    parser.add_argument("--baseline", type=Path, help="a tree with the code to compare with")
    parser.add_argument("--play", choices=["kept", "summed"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.play:
        print(json.dumps(play(args.keys, args.polls, args.play == "kept", args.url)))
        return None
    modes = args.modes.split(",") + (["baseline"] if args.baseline else [])
    if "postgresql" not in modes:
        build(args.keys)
        measure(args, modes, None)
        return None
    from pg_store import postgres_copy

    if not any(shutil.which(name) for name in ("initdb", *glob.glob(INITDB))):
        print("steady: PostgreSQL is not installed (Debian package postgresql): no PostgreSQL row")
        return None
    with postgres_copy(build(args.keys)) as (url, password):
        os.environ["PGPASSWORD"] = password
        measure(args, modes, url)
    return None


def measure(args: argparse.Namespace, modes: list[str], url: str | None) -> None:
    """Each run plays every mode, one process each, interleaved."""
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode in results:
            script, env = Path(__file__), None
            if mode == "baseline":
                script = args.baseline.resolve() / "bench" / "steady.py"
                env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
            out = subprocess.run(
                [
                    sys.executable,
                    str(script),
                    "--keys",
                    str(args.keys),
                    "--polls",
                    str(args.polls),
                    "--play",
                    "summed" if mode == "summed" else "kept",
                    *(["--url", url] if mode == "postgresql" and url else []),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                sys.exit(f"steady: the {mode} run failed:\n{out.stderr}")
            stdout = out.stdout
            results[mode].append(json.loads(stdout.strip().splitlines()[-1]))
    stored = args.keys * MODELS * 24 * DAYS
    print(
        f"steady: {args.keys:,} keys x {MODELS} models x {DAYS} days ({stored:,} rows),"
        f" 200 rules, {args.polls} polls 5 min apart from 21:40 (two hours turn, two settle"
        f" rewrites), {results[modes[0]][0]['lines']:,} metric lines; ranges of {args.runs} runs,"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    labels = {
        "kept": "sums kept (the daemon)",
        "summed": "summed again (before)",
        "baseline": f"kept, {args.baseline}",
        "postgresql": "kept, on PostgreSQL",
    }
    for mode in modes:
        runs, label = results[mode], labels[mode]
        first = [float(r["times"][0]) for r in runs]
        steady: list[list[float]] = [r["times"][1:] for r in runs]
        medians = [statistics.median(t) for t in steady]
        worst = [max(t) for t in steady]
        cpu = [statistics.median(r.get("cpu", [0.0, 0.0])[1:]) for r in runs]
        peaks = [float(r["peak_mb"]) for r in runs]
        # the heap's care after a cycle (`daemon.heap`): a freeze, an hourly full collection
        heap = [max(r.get("between", [0.0])) for r in runs]
        print(
            f"steady: {label:<24} cycle median {span(medians)} s ({span(cpu)} s CPU),"
            f" slowest {span(worst)} s,"
            f" first after start {span(first)} s, peak RSS {span(peaks, 0)} MB,"
            f" between cycles at most {span(heap)} s"
        )


if __name__ == "__main__":
    sys.exit(main())
