"""First-start benchmark (issue #13): how soon a fresh daemon's budgets are right.

At the shipped default pace (``max_requests_per_minute`` 30, ``backfill_max_requests_per_minute``
90; the benchmark config sets neither), ``backfill: 35d``, a workspace of 20 keys x 2 models,
month / day / rolling-7d budget rules (``each: api_key``) and one anomaly rule:

- ``run``: the first instant at which every member of every budget rule shows its exact spend
  on ``/metrics`` (polled every 0.5 s), target <= 120 s after the process starts; at that
  instant ``status`` must show the workspace's month spend right too;
- ``once`` on an empty store: wall time, target <= 120 s, exit code 0 and the month spend
  right (exact in the store, to the cent in the printed table).

Also: export calls in the first poll, the most calls the simulator saw in any 60 s window
(the pacer's cap is 90 here) and the background refinement to full hourly history: measured
with ``--refine`` (about 20-50 minutes), otherwise estimated from the rate the refiner kept
while it was observed.

The bundled simulator serves the exports on loopback in this process, with its clock frozen at
the start of each run, so the truth cannot move while the daemon catches up; each export POST
and each download waits a configurable time first (real exports prepare a file, then it is
downloaded from storage). Truth comes from `Simulator.pair_usage` as exact Decimals; the
metric text carries floats, compared with a relative tolerance of 1e-9. A run is started only
when the wall-clock hour has enough time left for the measurement, so the rolling window's
first counted bucket (the first that starts at or after ``now - 7d``) stays the same.

    .venv/bin/python bench/firstrun.py [--runs 3] [--refine] [--post-latency 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from daemon.langdock.sim_workspace import DEFAULT_MODELS, SimKey
from daemon.langdock.simulator import Simulator
from daemon.rules.windows import bucket_end, bucket_start, calendar_period, window_period

ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Europe/Berlin")
SECRET = "sk-bench-firstrun-7d1c"
KEYS = tuple(SimKey(f"key_{i:04x}b7", f"team-{i:02d}", round(0.85**i, 4)) for i in range(20))
MODELS = DEFAULT_MODELS[:2]  # gpt-4o, claude-sonnet-4
BUDGETS = {"keys-month": "month", "keys-day": "day", "keys-7d": "7d"}
TARGET = 120.0  # seconds, both targets
POLL = timedelta(minutes=5)  # poll.interval in the benchmark's config
CAP = 90  # backfill_max_requests_per_minute, shipped default
SPEND = re.compile(r'^langdock_budget_spend_usd\{rule="([^"]*)",scope="([^"]*)"\} (\S+)$')
REMAINING = re.compile(r"^langdock_backfill_remaining_buckets (\S+)$")
RULES = """rules:
  - {name: keys-month, kind: budget, each: api_key, window: month, limit_usd: 2500}
  - {name: keys-day, kind: budget, each: api_key, window: day, limit_usd: 100}
  - {name: keys-7d, kind: budget, each: api_key, window: 7d, limit_usd: 600}
  - name: model-spend-spike
    kind: anomaly
    scope: {model: "*"}
    each: model
    metric: cost_usd
    window: 1h
    baseline: 14d
    min_delta_usd: 5
"""


class SlowSimulator(Simulator):
    """The simulator with a fixed wait before each export POST and each download, and the
    arrival time (wall clock) of every export POST with its body."""

    def __init__(self, post_latency: float, download_latency: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.post_latency, self.download_latency = post_latency, download_latency
        self.posts: list[tuple[float, str, Any]] = []  # (time.time(), path, body)
        self._log_lock = threading.Lock()

    def _export(self, handler: Any, path: str, headers: dict[str, str], body: Any) -> None:
        with self._log_lock:
            self.posts.append((time.time(), path, body))
        time.sleep(self.post_latency)
        with contextlib.suppress(ConnectionError):  # the daemon was stopped meanwhile
            super()._export(handler, path, headers, body)

    def _download(self, handler: Any, token: str, headers: dict[str, str]) -> None:
        time.sleep(self.download_latency)
        with contextlib.suppress(ConnectionError):
            super()._download(handler, token, headers)

    def post_log(self) -> list[tuple[float, str, Any]]:
        with self._log_lock:
            return list(self.posts)


@dataclass
class Truth:
    """Exact spend per key for each budget rule, and the workspace's month total."""

    per_rule: dict[str, dict[str, Decimal]]  # rule -> scope (key id) -> spend
    month_total: Decimal


def truth_at(sim: Simulator, now: datetime) -> Truth:
    """What the store sums at ``now`` (an instant in the same hour as the simulator's frozen
    clock): buckets that start in [window start, now), so a rolling window that begins
    mid-hour counts from the next bucket on (see tests/test_coverage.py `check`)."""
    per_rule: dict[str, dict[str, Decimal]] = {}
    for rule, window in BUDGETS.items():
        edge = window_period(window, now, TZ).start
        start = edge if bucket_start(edge, TZ) == edge else bucket_end(edge, TZ)
        per_rule[rule] = {
            key.id: sum(
                (sim.pair_usage(ki, mi, start, now)["cost"] for mi in range(len(MODELS))),
                Decimal(0),
            )
            for ki, key in enumerate(KEYS)
        }
    return Truth(per_rule, sum(per_rule["keys-month"].values(), Decimal(0)))


def matches(metric: str, truth: Decimal) -> bool:
    """A metric sample (a float in Prometheus text) against the exact Decimal truth."""
    value = Decimal(metric)
    return abs(value - truth) <= Decimal("1e-9") * max(abs(truth), Decimal("1e-12"))


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def table_month_total(text: str) -> Decimal | None:
    """The month column of the first TOTAL row of a spend table (`once`, `status`)."""
    for line in text.splitlines():
        if line.startswith("TOTAL"):
            cells = re.split(r"\s{2,}", line.strip())  # TOTAL, requests today, today, month, 24h
            return Decimal(cells[3].replace("$", "").replace(",", ""))
    return None


STORED_MONTH = """
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo
from daemon.rules.windows import calendar_period
from daemon.store import Store
tz, now = ZoneInfo(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
store = Store.open(Path(sys.argv[1]), tz=tz)
rows = store.key_model_totals(calendar_period("month", now, tz).start, now)
store.close()
print(sum((r.cost_usd for r in rows), Decimal(0)))
"""


def stored_month(path: Path, now: datetime) -> Decimal:
    """The store's exact month total, read by a child process: the same daemon code as the
    process that wrote the store (this one imported it earlier)."""
    done = subprocess.run(
        [sys.executable, "-c", STORED_MONTH, str(path), TZ.key, now.isoformat()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return Decimal(done.stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, base_url: str, port: int) -> Path:
    config = directory / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{base_url}', api_key: '${{FIRSTRUN_KEY}}'}}\n"
        "timezone: Europe/Berlin\npoll: {interval: 5m, backfill: 35d}\n"
        f"state: {{path: state.db}}\nmetrics: {{listen: '127.0.0.1:{port}'}}\n" + RULES
    )
    return config


def daemon_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "daemon.cli", "--config", str(config), *args]


def daemon_env() -> dict[str, str]:
    return {**os.environ, "FIRSTRUN_KEY": SECRET, "LANGDOCK_BUDGET_LOG_FORMAT": "json"}


def wait_for_hour_room(seconds: float) -> None:
    """Sleep past the next hour boundary if fewer than ``seconds`` are left before it."""
    now = datetime.now(UTC)
    left = (bucket_end(now, TZ) - now).total_seconds()
    if left < seconds:
        print(f"  (waiting {left + 2:.0f} s for the next hour: the windows must not move)")
        time.sleep(left + 2)


def max_per_window(times: list[float], window: float = 60.0) -> int:
    """The most calls in any half-open window [t, t + 60 s)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def scrape(url: str) -> tuple[dict[tuple[str, str], str], int | None]:
    """The budget spend samples ((rule, scope) -> text) and the backfill's remaining buckets."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}, None
    spend, remaining = {}, None
    for line in text.splitlines():
        if m := SPEND.match(line):
            spend[(m[1], m[2])] = m[3]
        elif m := REMAINING.match(line):
            remaining = int(float(m[1]))
    return spend, remaining


def wrong_series(spend: dict[tuple[str, str], str], truth: Truth) -> list[str]:
    """Every budget member whose sample is missing or differs from the truth."""
    return [
        f"{rule}/{scope}: {spend.get((rule, scope))} != {value}"
        for rule, members in truth.per_rule.items()
        for scope, value in members.items()
        if (rule, scope) not in spend or not matches(spend[(rule, scope)], value)
    ]


def describe_ranges(posts: list[tuple[float, str, Any]]) -> str:
    """The export ranges of some POSTs: hours and longer ranges, per export."""
    counts: dict[str, int] = {}
    for _, path, body in posts:
        export = path.rsplit("/export/", 1)[1].removesuffix("/csv").strip("/")
        start = datetime.fromisoformat(body["from"]["date"].removesuffix("Z"))
        end = datetime.fromisoformat(body["to"]["date"].removesuffix("Z"))
        hours = round((end - start).total_seconds() / 3600)
        kind = "1 h" if hours <= 1 else "day ranges"
        counts[f"{export} {kind}"] = counts.get(f"{export} {kind}", 0) + 1
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))


@dataclass
class RunResult:
    right_at: float | None = None  # s after start: every budget member right on /metrics
    first_series_at: float | None = None
    status_ok: bool = False
    status_at: float | None = None
    first_poll_calls: int = 0
    first_poll_planned: int = 0
    first_poll_seconds: float = 0.0
    first_poll_ranges: str = ""
    max_60s: int = 0
    calls: int = 0
    refine_rate: float = 0.0  # refiner calls per minute while observed
    remaining: int | None = None  # buckets still to refine when stopped
    refined_at: float | None = None  # s after start: hourly history complete (--refine)
    refine_estimate: float | None = None  # min after start, from the refiner's observed rate
    refined_wrong: list[str] = field(default_factory=list)  # budgets then (--refine)
    exit_code: int | None = None
    died_at: float | None = None  # s after start, if the daemon exited before the bench stopped it
    wrong: list[str] = field(default_factory=list)


def start_simulator(args: argparse.Namespace) -> SlowSimulator:
    """A simulator frozen at now, started once the hour has room for a whole run."""
    wait_for_hour_room(args.timeout + 30)
    frozen = datetime.now(UTC)
    sim = SlowSimulator(
        args.post_latency,
        args.download_latency,
        api_key=SECRET,
        keys=KEYS,
        models=MODELS,
        clock=lambda: frozen,
    )
    sim.start()
    return sim


def bench_run(args: argparse.Namespace, number: int) -> RunResult:
    sim = start_simulator(args)
    result = RunResult()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = write_config(Path(tmp), sim.base_url, port)
        log = Path(tmp) / "daemon.log"
        url = f"http://127.0.0.1:{port}/metrics"
        began, wall0 = time.monotonic(), time.time()
        proc = subprocess.Popen(
            daemon_cmd(config, "run"),
            cwd=ROOT,
            env=daemon_env(),
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            remaining = None
            while time.monotonic() - began < args.timeout and proc.poll() is None:
                time.sleep(0.5)
                spend, left = scrape(url)
                remaining = left if left is not None else remaining
                if not spend:
                    continue
                at = time.monotonic() - began
                if result.first_series_at is None:
                    result.first_series_at = at
                result.wrong = wrong_series(spend, truth_at(sim, datetime.now(UTC)))
                if not result.wrong:
                    result.right_at = at
                    break
            if result.right_at is not None:
                status = subprocess.run(
                    daemon_cmd(config, "status"),
                    cwd=ROOT,
                    env=daemon_env(),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                result.status_at = time.monotonic() - began
                shown = table_month_total(status.stdout)
                month = truth_at(sim, datetime.now(UTC)).month_total
                result.status_ok = status.returncode == 0 and shown == cents(month)
                if not result.status_ok:
                    result.wrong.append(f"status month total {shown} != {cents(month)}")
                end = time.monotonic() + (args.refine_timeout if args.refine else args.observe)
                while time.monotonic() < end:
                    time.sleep(2)
                    if proc.poll() is not None:
                        result.died_at = time.monotonic() - began
                        break
                    spend, left = scrape(url)
                    remaining = left if left is not None else remaining
                    if args.refine and remaining == 0:
                        result.refined_at = time.monotonic() - began
                        # the last cycle evaluated at most one poll interval ago
                        now = datetime.now(UTC)
                        result.refined_wrong = min(
                            (wrong_series(spend, truth_at(sim, at)) for at in (now, now - POLL)),
                            key=len,
                        )
                        break
            elif proc.poll() is not None:
                result.died_at = time.monotonic() - began
            result.remaining = remaining
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                result.exit_code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stopped = time.time()
        time.sleep(args.post_latency + args.download_latency + 0.5)  # calls still under way
        sim.stop()
        events = log_events(log)
        posts = sim.post_log()
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"run-{number}.log").write_bytes(log.read_bytes())
            (args.log_dir / f"run-{number}-posts.json").write_text(json.dumps(posts, indent=0))
    result.calls = len(posts)
    result.max_60s = max_per_window([t for t, _, _ in posts])
    finished = [e for e in events if e.get("event") == "poll_finished"]
    if finished:
        first = finished[0]
        result.first_poll_calls = int(first["calls"])
        result.first_poll_planned = int(first["planned"])
        result.first_poll_seconds = float(first["duration_s"])
        poll_end = datetime.fromisoformat(first["timestamp"]).timestamp()
        result.first_poll_ranges = describe_ranges([p for p in posts if p[0] <= poll_end])
        later = sum(1 for t, _, _ in posts if t > poll_end)
        later -= sum(int(e["calls"]) for e in finished[1:])  # the refiner's calls only
        minutes = (stopped - poll_end) / 60
        progress = [e for e in events if e.get("event") == "backfill_progress"]
        if later and minutes > 0.5 and progress:
            result.refine_rate = later / minutes
            # one call per bucket still missing after the first poll, at the observed rate
            left = int(progress[0]["total"]) - int(progress[0]["done"])
            result.refine_estimate = (poll_end - wall0) / 60 + left / result.refine_rate
    print(
        f"run {number}: budgets right on /metrics at {fmt(result.right_at)} s (first budget"
        f" series {fmt(result.first_series_at)} s), status month total"
        f" {'right' if result.status_ok else 'WRONG'}; first poll {result.first_poll_calls}"
        f" calls in {result.first_poll_seconds:.1f} s ({result.first_poll_ranges});"
        f" {result.calls} calls in {time.time() - wall0:.0f} s, max {result.max_60s} in 60 s;"
        f" refiner {result.refine_rate:.0f} calls/min, {result.remaining} buckets left;"
        f" exit {result.exit_code}"
    )
    if result.refined_at is not None:
        print(
            f"run {number}: hourly history complete at {result.refined_at:.0f} s; budgets then"
            f" {'right' if not result.refined_wrong else f'WRONG: {result.refined_wrong[:3]}'}"
        )
    if result.died_at is not None:
        print(f"run {number}: INVALID: the daemon exited by itself at {result.died_at:.0f} s")
    if result.right_at is None or not result.status_ok:
        print(f"run {number}: still wrong: {result.wrong[:5]} ({len(result.wrong)} in all)")
    return result


@dataclass
class OnceResult:
    seconds: float
    exit_code: int
    output_ok: bool
    store_ok: bool
    calls: int
    max_60s: int
    summary: str


def bench_once(args: argparse.Namespace, number: int) -> OnceResult:
    sim = start_simulator(args)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), sim.base_url, free_port())
        began = time.monotonic()
        done = subprocess.run(
            daemon_cmd(config, "once"),
            cwd=ROOT,
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=args.timeout * 3,
        )
        seconds = time.monotonic() - began
        now = datetime.now(UTC)
        truth = truth_at(sim, now).month_total
        stored = stored_month(Path(tmp) / "state.db", now)
    sim.stop()
    posts = sim.post_log()
    shown = table_month_total(done.stdout)
    summary = next((x for x in done.stdout.splitlines() if x.startswith("fetched ")), "")
    result = OnceResult(
        seconds,
        done.returncode,
        shown == cents(truth),
        stored == truth,
        len(posts),
        max_per_window([t for t, _, _ in posts]),
        summary,
    )
    print(
        f"once {number}: {seconds:.1f} s, exit {done.returncode}, month total: printed"
        f" {'right' if result.output_ok else f'WRONG ({shown} != {cents(truth)})'}, store"
        f" {'exact' if result.store_ok else f'WRONG ({stored} != {truth})'};"
        f" {result.calls} calls, max {result.max_60s} in 60 s; {summary}"
    )
    if done.returncode:
        print(done.stderr[-2000:])
    return result


def first_poll_sizes(now: datetime) -> tuple[int, datetime, int, datetime]:
    """The first poll's export calls at half past every hour of this local month (the same
    config, `coverage.poll_plan` on an empty store): fewest and most, and when."""
    from daemon.config import load_config
    from daemon.coverage import first_windows, poll_plan

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp), "http://127.0.0.1:9", free_port()))
    month = calendar_period("month", now, TZ)
    sizes = []
    at = month.start + timedelta(minutes=30)
    while at < month.end:
        plan = poll_plan(
            at,
            TZ,
            backfill=config.poll.backfill,
            settle_after=config.poll.settle_after,
            segments={},
            windows=first_windows(config.rules, at, TZ),
        )
        sizes.append((len(plan), at))
        at += timedelta(hours=1)
    (low, low_at), (high, high_at) = min(sizes), max(sizes)
    return low, low_at, high, high_at


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def span(values: Sequence[float], digits: int = 1) -> str:
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}-{hi}"


def line(
    label: str, values: Sequence[float], unit: str, target: float | None, digits: int = 1
) -> str:
    text = f"{label:<40} {span(values, digits):>11} {unit:<6}"
    if target is not None:
        text += f" target <= {target:g} {unit:<6} ratio {max(values) / target:.2f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--post-latency", type=float, default=1.0, help="s per export POST")
    parser.add_argument("--download-latency", type=float, default=0.25, help="s per download")
    parser.add_argument(
        "--observe", type=float, default=60.0, help="s to keep `run` going once budgets are right"
    )
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="s to wait for the budgets to be right"
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="in the first run, wait for the full hourly history (20-50 min)",
    )
    parser.add_argument(
        "--refine-timeout", type=float, default=5400.0, help="s to wait for it (--refine)"
    )
    parser.add_argument("--skip-once", action="store_true")
    parser.add_argument(
        "--log-dir", type=Path, help="keep each run's daemon log and export requests here"
    )
    args = parser.parse_args()
    os.environ["FIRSTRUN_KEY"] = SECRET  # the config reads it (here only for first_poll_sizes)
    print(
        f"firstrun: {len(KEYS)} keys x {len(MODELS)} models, backfill 35d, Europe/Berlin,"
        f" pace 30/90 calls a minute (shipped defaults); simulator latency"
        f" {args.post_latency:g} s per export POST + {args.download_latency:g} s per download"
    )
    runs: list[RunResult] = []
    for number in range(1, args.runs + 1):
        refine = args.refine and number == 1
        runs.append(bench_run(argparse.Namespace(**{**vars(args), "refine": refine}), number))
    onces = [] if args.skip_once else [bench_once(args, n) for n in range(1, args.runs + 1)]

    right = [r.right_at for r in runs if r.right_at is not None]
    print()
    if len(right) == len(runs):
        print(line("firstrun run: every budget right, /metrics", right, "s", TARGET))
    else:
        print(f"firstrun run: budgets not right within {args.timeout:g} s in some runs")
    print(f"firstrun run: status month total right in {sum(r.status_ok for r in runs)}/{len(runs)}")
    if onces:
        ok = [o for o in onces if o.exit_code == 0 and o.output_ok and o.store_ok]
        print(line("firstrun once: done (empty store)", [o.seconds for o in onces], "s", TARGET))
        print(f"firstrun once: exit 0 and month spend right in {len(ok)}/{len(onces)}")
        print(line("firstrun once: export calls", [o.calls for o in onces], "calls", None, 0))
    calls = [r.first_poll_calls for r in runs]
    print(line("firstrun: calls in the first poll", calls, "calls", None, 0))
    print(line("firstrun: first poll duration", [r.first_poll_seconds for r in runs], "s", None))
    low, low_at, high, high_at = first_poll_sizes(datetime.now(UTC))
    when = [f"{t.astimezone(TZ):%d %b %H:%M}" for t in (low_at, high_at)]
    print(
        f"firstrun: first poll at other hours of this month (poll_plan): {low} calls"
        f" ({when[0]}) to {high} calls ({when[1]} local)"
    )
    measured = [r for r in runs if r.first_poll_calls and r.right_at is not None]
    if measured:
        per_call = max(r.first_poll_seconds / r.first_poll_calls for r in measured)
        overhead = max(r.right_at - r.first_poll_seconds for r in measured if r.right_at)
        worst = overhead + high * per_call
        print(
            line("firstrun run: worst hour of month (est.)", [worst], "s", TARGET)
            + f"  ({high} calls x {per_call:.2f} s + {overhead:.1f} s start-up, evaluation)"
        )
    peaks = [r.max_60s for r in runs] + [o.max_60s for o in onces]
    print(line("firstrun: max calls in any 60 s", peaks, "calls", CAP, 0))
    rates = [r.refine_rate for r in runs if r.refine_rate]
    if rates:
        print(line("firstrun: refiner pace while observed", rates, "/min", None, 0))
    refined = [r.refined_at / 60 for r in runs if r.refined_at is not None]
    if refined:
        print(line("firstrun: hourly history complete", refined, "min", None))
    estimates = [r.refine_estimate for r in runs if r.refine_estimate is not None]
    if estimates:
        print(line("firstrun: hourly history (estimate)", estimates, "min", None))


if __name__ == "__main__":
    main()
