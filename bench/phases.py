"""Where a steady cycle's time goes: `bench/steady.py`'s polls (sums kept, one process), each
stage of the cycle timed on its own.

    python bench/phases.py [--keys 1000] [--polls 8]

Prints, per stage, its time in the first cycle (after a restart: nothing kept) and its median
over the steady cycles. The stages are the daemon's own functions, wrapped with a timer:
loading the usage the rules read, evaluating them (budget and anomaly rules apart), saving
the alert states, the cost windows and the rest of what `/metrics` shows, the snapshot and
the text. A stage's calls within one cycle are added up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import steady

STAGES = [  # (module or class, function, label), in the cycle's order
    ("daemon.cycle", "load_usage", "load usage (series, window totals)"),
    ("daemon.rules.engine", "evaluate_budget", "  budget rules"),
    ("daemon.rules.engine", "evaluate_anomaly", "  anomaly rules"),
    ("daemon.cycle", "evaluate", "evaluate (all rules, alerts stepped)"),
    ("daemon.store:Store", "save_alerts", "save alert states"),
    ("daemon.cycle", "evaluate_rules", "= evaluate_rules"),
    ("daemon.store:Store", "cost_windows", "  cost windows"),
    ("daemon.published", "load_published", "what /metrics shows"),
    ("daemon.self_report", "build_snapshot", "  snapshot"),
    ("daemon.service:Daemon", "publish", "publish"),
    ("daemon.metrics", "render", "render /metrics"),
]


def timed(spent: dict[str, list[float]], label: str, function: Callable[..., Any]) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label].append(time.perf_counter() - started)

    return wrapper


def main() -> None:
    import importlib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--polls", type=int, default=8)
    args = parser.parse_args()
    spent: dict[str, list[float]] = defaultdict(list)
    for where, name, label in STAGES:
        module, _, owner = where.partition(":")
        target = importlib.import_module(module)
        if owner:
            target = getattr(target, owner)
        setattr(target, name, timed(spent, label, getattr(target, name)))
    result = steady.play(args.keys, args.polls, True)
    times = [float(t) for t in result["times"]]  # type: ignore[attr-defined]
    print(
        f"phases: {args.keys:,} keys, {args.polls} polls: cycle first {times[0]:.3f} s,"
        f" steady median {statistics.median(times[1:]):.3f} s,"
        f" peak RSS {result['peak_mb']:.0f} MB"
    )
    for _, _, label in STAGES:
        calls = spent[label]
        per = len(calls) // len(times)
        cycles = [sum(calls[i * per : (i + 1) * per]) for i in range(len(times))]
        print(
            f"phases: {label:<38} first {cycles[0]:7.3f} s"
            f"   steady median {statistics.median(cycles[1:]):7.3f} s"
        )


if __name__ == "__main__":
    main()
