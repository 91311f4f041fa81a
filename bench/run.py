"""Benchmarks whose numbers go into docs/PERFORMANCE.md. Run with `make bench`.

1. poll economy: export calls per steady-state poll (5-minute polls over two days), however
   many rules and windows there are, next to a poller that makes one call per window.
2. ingest: parse a 100,000-row grouped api-keys CSV (10,000 keys x 10 models) and replace one
   bucket in the store; wall time and peak RSS.
3. window sums: per (key, model) spend for a month window over the stored buckets.

Each prints one summary line: name, measured figure, target, ratio.
"""

from __future__ import annotations

import io
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from daemon.coverage import EXPORTS, ExportKind, Fetch, Segment, first_windows, poll_plan
from daemon.langdock.csv import parse_key_usage
from daemon.rules.windows import buckets
from daemon.store import Store

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 11, 2, 7, 3, tzinfo=UTC)


def line(name: str, measured: float, unit: str, target: float) -> None:
    print(
        f"{name:<34} {measured:>10.2f} {unit:<6} target <= {target:g} {unit:<6}"
        f" ratio {measured / target:.2f}"
    )


def poll_economy() -> None:
    backfill, settle = timedelta(days=35), timedelta(minutes=90)
    now = START
    marks: dict[ExportKind, dict[datetime, Segment]] = {export: {} for export in EXPORTS}

    def due() -> list[Fetch]:
        segments = {e: sorted(m.values(), key=lambda s: s.start) for e, m in marks.items()}
        return poll_plan(
            now,
            TZ,
            backfill=backfill,
            settle_after=settle,
            segments=segments,
            windows=first_windows([], now, TZ),
        )

    def fetch(plan: list[Fetch]) -> None:
        for item in plan:
            marks[item.export][item.start] = Segment(item.start, item.end, now)

    fetch(due())  # the first start, coarse
    for export in EXPORTS:  # what the background refines into hours
        marks[export] = {
            b.start: Segment(b.start, b.end, now) for b in buckets(now - backfill, now, TZ)
        }
    counts = []
    for _ in range(2 * 24 * 12):
        now += timedelta(minutes=5)
        plan = due()
        fetch(plan)
        counts.append(len(plan))
    windows = 6  # e.g. day, week, month, 24h, 7d, 30d; 50 rules over them
    naive = 50 * windows
    line("poll economy: max calls/poll", max(counts), "calls", 4)
    line("poll economy: mean calls/poll", sum(counts) / len(counts), "calls", 4)
    print(f"{'':<34} one-call-per-rule-and-window poller: {naive} calls/poll")


def synthetic_csv(keys: int, models: int) -> str:
    out = io.StringIO()
    out.write(
        "period_start,period_end,org_id,api_key_id,api_key_name,model,requests,"
        "total_cost_usd,sum_prompt_tokens,sum_completion_tokens\n"
    )
    for k in range(keys):
        for m in range(models):
            cost = Decimal(k * models + m + 1) / Decimal(7919)
            out.write(
                f"2026-11-20,2026-11-20,org,key_{k:05d},team-{k % 97}-key-{k},model-{m},"
                f"{(k + m) % 50 + 1},{cost:.9f},{k * 10 + m},{k + m}\n"
            )
    return out.getvalue()


def ingest_and_windows() -> None:
    text = synthetic_csv(10_000, 10)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db", exclusive=True, tz=TZ)
        t0 = time.perf_counter()
        rows = list(parse_key_usage(io.StringIO(text, newline=""), grouped=True))
        t1 = time.perf_counter()
        store.replace_key_usage(START, START + timedelta(hours=1), rows, START)
        t2 = time.perf_counter()
        line("ingest 100k rows: parse", t1 - t0, "s", 1.0)
        line("ingest 100k rows: store", t2 - t1, "s", 1.0)
        # A month of 24 buckets a day for 200 keys x 10 models (a realistic mid-size workspace).
        month_rows = rows[:2000]
        for bucket in list(buckets(START - timedelta(days=30), START, TZ)):
            store.replace_key_usage(bucket.start, bucket.end, month_rows, bucket.end)
        t3 = time.perf_counter()
        totals = store.key_model_totals(START - timedelta(days=30), START)
        t4 = time.perf_counter()
        line(f"30d sum, hourly rows ({len(totals)} series)", t4 - t3, "s", 1.0)
        summed = store.refresh_rollups(START)  # once per day in the daemon
        t5 = time.perf_counter()
        window = {"30d": (START - timedelta(days=30) + timedelta(minutes=30), START)}
        costs = store.window_costs(window)["30d"]
        t6 = time.perf_counter()
        print(f"{f'sum {summed} days (once, after each day)':<34} {t5 - t4:>10.2f} s")
        line(f"30d sum, daily sums ({len(costs)} series)", t6 - t5, "s", 1.0)
        store.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line("peak RSS", peak_mb, "MB", 150)


def main() -> None:
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()}"
        f" {platform.python_version()}, {platform.system()}"
    )
    poll_economy()
    ingest_and_windows()


if __name__ == "__main__":
    main()
