"""Per-call import benchmark: 1,000,000-row web-UI CSV, ours next to pandas.

Each contender runs in its own child process (so peak RSS is its own): `importer.read_calls`
(reads the file a few megabytes at a time, checks every row, groups by hour/key/model, prices
exactly) and `pandas.read_csv` + `groupby` (float money) on the same file. Each reports its wall
time, its peak RSS and its RSS before reading (the interpreter and the libraries loaded).
Needs pandas (`pip install pandas`); skipped without it.

``--candidates`` also runs the other engines measured for the choice (docs/PERFORMANCE.md
"Import"), the same way on the same file: polars reading the whole file (`read_csv`, then
`group_by`), polars' streaming engine (`scan_csv` ... `collect(engine="streaming")`), and
DuckDB's `read_csv` + `GROUP BY` when duckdb is installed. They only group and sum (hour
prefix, key, model, the prices' texts): no checks, no time zone, no pricing, so they are a
floor for what each engine could do, not an import.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
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
TIME_TARGET = 1.0  # x pandas' wall time
MEMORY_TARGET = 0.5  # x pandas' peak RSS


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


def rss_mb() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(path: str, queue: Any) -> None:
    from zoneinfo import ZoneInfo

    from daemon.importer import read_calls
    from daemon.importer.read import load_polars

    load_polars()  # loaded before the clock starts, as pandas is below (and as `import` does)
    before = rss_mb()
    t0 = time.perf_counter()
    result = read_calls(Path(path), ZoneInfo("Europe/Berlin"))
    queue.put((time.perf_counter() - t0, peak_mb(), before, result.group_count))


def theirs(path: str, queue: Any) -> None:
    import pandas as pd

    before = rss_mb()
    t0 = time.perf_counter()
    frame = pd.read_csv(path, parse_dates=["Date"])
    frame["cost"] = (
        frame["Input Tokens"] * frame["Input Token Price (USD/1M tokens)"]
        + frame["Output Tokens"] * frame["Output Token Price (USD/1M tokens)"]
    ) / 1e6
    frame["hour"] = frame["Date"].dt.floor("h")
    groups = frame.groupby(["hour", "API Key ID", "Model"])["cost"].sum()
    queue.put((time.perf_counter() - t0, peak_mb(), before, len(groups)))


_KEYS = ["hour", "API Key ID", "Model", "Input Token Price (USD/1M tokens)"]
_KEYS += ["Output Token Price (USD/1M tokens)"]


def polars_eager(path: str, queue: Any) -> None:
    import polars as pl

    before = rss_mb()
    t0 = time.perf_counter()
    frame = pl.read_csv(path, infer_schema=False)
    groups = frame.group_by(pl.col("Date").str.slice(0, 13).alias("hour"), *_KEYS[1:]).agg(
        calls=pl.len(),
        input=pl.col("Input Tokens").cast(pl.Int64).sum(),
        output=pl.col("Output Tokens").cast(pl.Int64).sum(),
    )
    queue.put((time.perf_counter() - t0, peak_mb(), before, groups.height))


def polars_streaming(path: str, queue: Any) -> None:
    import polars as pl

    before = rss_mb()
    t0 = time.perf_counter()
    groups = (
        pl.scan_csv(path, infer_schema=False)
        .group_by(pl.col("Date").str.slice(0, 13).alias("hour"), *_KEYS[1:])
        .agg(
            calls=pl.len(),
            input=pl.col("Input Tokens").cast(pl.Int64).sum(),
            output=pl.col("Output Tokens").cast(pl.Int64).sum(),
        )
        .collect(engine="streaming")
    )
    queue.put((time.perf_counter() - t0, peak_mb(), before, groups.height))


def duckdb_sql(path: str, queue: Any) -> None:
    import duckdb

    before = rss_mb()
    t0 = time.perf_counter()
    keys = ", ".join(f'"{key}"' for key in _KEYS[1:])
    row = (
        duckdb.connect()
        .execute(
            f"SELECT count(*) FROM (SELECT left(Date, 13) AS hour, {keys}, count(*) AS calls,"
            ' sum(CAST("Input Tokens" AS BIGINT)), sum(CAST("Output Tokens" AS BIGINT))'
            f" FROM read_csv('{path}', all_varchar = true) GROUP BY ALL)"
        )
        .fetchone()
    )
    queue.put((time.perf_counter() - t0, peak_mb(), before, row[0] if row else 0))


def run(target: Callable[[str, Any], None], path: str) -> tuple[float, float, float, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(path, queue))
    proc.start()
    result: tuple[float, float, float, int] = queue.get(timeout=600)
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--candidates", action="store_true", help="also the other engines (see above)"
    )
    args = parser.parse_args(argv)
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("import bench: pandas is not installed (pip install pandas); skipped")
        return 0
    contenders: list[tuple[str, Callable[[str, Any], None]]] = [("ours", ours)]
    contenders.append(("pandas", theirs))
    if args.candidates:
        contenders += [("polars read_csv", polars_eager), ("polars streaming", polars_streaming)]
        try:
            import duckdb  # noqa: F401
        except ImportError:
            print("import bench: duckdb is not installed; its candidate is skipped")
        else:
            contenders.append(("duckdb", duckdb_sql))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calls.csv"
        write_file(path)
        figures = {name: run(target, str(path)) for name, target in contenders}
    for name, (seconds, peak, before, groups) in figures.items():
        print(
            f"import 1M rows: {name:<16} {seconds:5.2f} s, {peak:4.0f} MB peak RSS"
            f" ({before:3.0f} MB before reading), {groups:,} groups"
        )
    ours_s, ours_mb, _, _ = figures["ours"]
    pandas_s, pandas_mb, _, _ = figures["pandas"]
    print(
        f"{'import: time vs pandas':<34} {ours_s / pandas_s:>10.2f} x      target <="
        f" {TIME_TARGET} x    ratio {ours_s / pandas_s / TIME_TARGET:.2f}"
    )
    print(
        f"{'import: peak RSS vs pandas':<34} {ours_mb / pandas_mb:>10.2f} x      target <="
        f" {MEMORY_TARGET} x    ratio {ours_mb / pandas_mb / MEMORY_TARGET:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
