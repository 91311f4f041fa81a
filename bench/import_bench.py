"""Per-call import benchmark: 1,000,000-row web-UI CSV, ours next to pandas.

Each contender runs in its own child process (so peak RSS is its own): `importer.read_calls`
(streams, groups by hour/key/model/prices, prices exactly) and `pandas.read_csv` + `groupby`
(float money) on the same file. Needs pandas (`pip install pandas`); skipped without it.
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROWS = 1_000_000
HEADER = (
    "Date,API Key ID,API Key Name,Provider,Model,Input Tokens,Output Tokens,"
    "Completion Time (ms),Input Token Price (USD/1M tokens),Output Token Price (USD/1M tokens)"
)
MODELS = [
    ("openai", "gpt-4o", "2.50", "10.00"),
    ("anthropic", "claude-sonnet-4", "3.00", "15.00"),
    ("mistral", "mistral-large", "2.00", "6.00"),
    ("openai", "text-embedding-3-small", "0.02", "0"),
]


def write_file(path: Path) -> None:
    rng = random.Random(1)
    start = datetime(2026, 10, 24, tzinfo=UTC)
    with path.open("w") as out:
        out.write(HEADER + "\n")
        for i in range(ROWS):
            when = start + timedelta(seconds=i * 2.6)
            key = rng.randrange(200)
            provider, model, pin, pout = MODELS[rng.randrange(4)]
            out.write(
                f"{when:%Y-%m-%d %H:%M:%S},key_{key:03d},team-{key},{provider},{model},"
                f"{rng.randrange(50, 4000)},{rng.randrange(0, 1500)},{rng.randrange(200, 5000)},"
                f"{pin},{pout}\n"
            )


def ours(path: str, queue: Any) -> None:
    from zoneinfo import ZoneInfo

    import polars  # noqa: F401  (loaded before the clock starts, as pandas is below)

    from daemon.importer import read_calls

    t0 = time.perf_counter()
    result = read_calls(Path(path), ZoneInfo("Europe/Berlin"))
    elapsed = time.perf_counter() - t0
    queue.put(
        (elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, result.group_count)
    )


def theirs(path: str, queue: Any) -> None:
    import pandas as pd

    t0 = time.perf_counter()
    frame = pd.read_csv(path, parse_dates=["Date"])
    frame["cost"] = (
        frame["Input Tokens"] * frame["Input Token Price (USD/1M tokens)"]
        + frame["Output Tokens"] * frame["Output Token Price (USD/1M tokens)"]
    ) / 1e6
    frame["hour"] = frame["Date"].dt.floor("h")
    groups = frame.groupby(["hour", "API Key ID", "Model"])["cost"].sum()
    elapsed = time.perf_counter() - t0
    queue.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(groups)))


def run(target: Any, path: str) -> tuple[float, float, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(path, queue))
    proc.start()
    result: tuple[float, float, int] = queue.get(timeout=600)
    proc.join()
    return result


def main() -> int:
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("import bench: pandas is not installed (pip install pandas); skipped")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calls.csv"
        write_file(path)
        ours_s, ours_mb, ours_groups = run(ours, str(path))
        pandas_s, pandas_mb, pandas_groups = run(theirs, str(path))
    print(
        f"import 1M rows: ours {ours_s:.2f} s, {ours_mb:.0f} MB peak, {ours_groups:,} groups;"
        f" pandas {pandas_s:.2f} s, {pandas_mb:.0f} MB peak, {pandas_groups:,} groups"
    )
    print(
        f"{'import: time vs pandas':<34} {ours_s / pandas_s:>10.2f} x      target <= 1.5 x"
        f"    ratio {ours_s / pandas_s / 1.5:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
