"""`langdock-budget demo`: `run` against the bundled simulator, Slack printed on the console.

It writes a real config file into a temporary directory, loads it through the normal loader,
and polls the simulator every few seconds, printing per-key and per-model spend. One key of
the simulator starts spiking half a minute in, so the numbers visibly move.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, AddCommand, utc_now
from daemon.cli.once import render_cycle
from daemon.cli.signals import run_async
from daemon.config import load_config
from daemon.cycle import CycleResult
from daemon.notify import ConsoleSender
from daemon.rules.durations import parse_duration
from daemon.state import open_store

DEMO_KEY = "demo-not-a-secret"
# the demo page's admin token: printed in the banner, good for this throw-away run only
DEMO_ADMIN_TOKEN = "demo-admin-token-not-a-secret"
DEMO_PORT = 9464
_CONFIG = """\
# Written by `langdock-budget demo`; thrown away when the demo stops.
langdock:
  base_url: {base_url}
  api_key: {api_key}
  max_requests_per_minute: 240
  backfill_max_requests_per_minute: 600
timezone: {timezone}
poll:
  interval: {interval}
  backfill: {backfill}
state:
  path: state.db
metrics:
  listen: 127.0.0.1:{port}
web:
  admin_token: {admin_token}
rules:
  - name: per-key-daily
    kind: budget
    each: api_key
    window: day
    limit_usd: 20
    thresholds: [50, 80, 100]
    severity: {{50: info, 80: warning, 100: critical}}
    forecast: true
  - name: workspace-monthly
    kind: budget
    window: month
    limit_usd: 2000
    thresholds: [80, 100]
    forecast: true
  - name: model-spend-spike
    kind: anomaly
    each: model
    metric: cost_usd
    window: 1h
    baseline: 1d
    min_baseline_points: 12
    min_delta_usd: 2
"""


def add_parser(sub: Any, command: AddCommand) -> None:
    demo = command(
        sub,
        "demo",
        "run against the bundled Langdock simulator (throw-away store)",
        cmd_demo,
        description="Run the daemon's cycle in a loop against the bundled Langdock simulator,"
        " with example budget and anomaly rules and a throw-away store (removed when the demo"
        " stops: Ctrl-C, SIGTERM or --cycles). Slack messages are printed instead of sent."
        " Needs no Langdock account, no internet and no config file.",
    )
    demo.add_argument("--interval", default="15s", help="poll interval (default 15s)")
    demo.add_argument("--cycles", type=int, default=0, help="stop after N polls (default: never)")
    demo.add_argument(
        "--json",
        action="store_true",
        help="print Slack messages as Block Kit JSON instead of readable text",
    )
    demo.add_argument("--backfill", default="26h", help="history to fetch first (default 26h)")
    demo.add_argument("--timezone", default="Europe/Berlin", help="zone for calendar windows")
    demo.add_argument(
        "--spike-after",
        default="30s",
        help="when the simulated nightly-batch key starts spiking (default 30s)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    for option, value, least in (
        ("--interval", args.interval, 10),
        ("--backfill", args.backfill, 3600),
    ):
        try:
            ok = parse_duration(value).total_seconds() >= least
        except ValueError:
            ok = False
        if not ok:
            print(f"demo: {option} {value!r}: use a duration of at least {least}s", file=sys.stderr)
            return EXIT_CONFIG
    return EXIT_OK if run_async(run_demo(args)) else EXIT_FAILED


def banner_lines(
    args: argparse.Namespace,
    simulator_url: str,
    store_dir: str,
    *,
    page_url: str | None = None,
    metrics_url: str | None = None,
    health_url: str | None = None,
) -> list[str]:
    """What the demo prints before its first poll: where things are and what will happen."""
    lines = [f"demo: simulator at {simulator_url}, throw-away store in {store_dir}; Ctrl-C stops."]
    if page_url is not None:
        lines.append(
            f"demo: status page at {page_url} (sign in with {DEMO_ADMIN_TOKEN} to silence alerts)"
        )
    if metrics_url is not None:
        lines.append(f"demo: Prometheus metrics at {metrics_url}")
    if health_url is not None:
        lines.append(f"demo: health check at {health_url}")
    lines.append(
        f"demo: polling every {args.interval}; history starts {args.backfill} back (so"
        f" 'month' is partial); the 'nightly-batch' key starts spiking {args.spike_after} in:"
        " a budget crossing within a minute, and the anomaly rule once that hour has ended."
    )
    return lines


async def run_demo(args: argparse.Namespace) -> bool:
    """`run` itself (the same cycle, background backfill, `/metrics` and `/healthz`) against
    the simulator, with Slack messages and each cycle's tables printed."""
    # the daemon's scheduler, web server and metrics, loaded when a demo starts (as `run` does)
    from daemon.langdock.simulator import Simulator
    from daemon.service import Daemon

    simulator = Simulator(
        api_key=DEMO_KEY, spike_start=utc_now() + parse_duration(args.spike_after)
    )
    base_url = simulator.start()
    ok = True
    with tempfile.TemporaryDirectory(prefix="langdock-budget-demo-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(
            _CONFIG.format(
                base_url=base_url,
                api_key=DEMO_KEY,
                timezone=args.timezone,
                interval=args.interval,
                backfill=args.backfill,
                port=_free_port(DEMO_PORT),
                admin_token=DEMO_ADMIN_TOKEN,
            )
        )
        config = load_config(path)
        store = open_store(config, exclusive=True)
        cycles = 0

        def show(result: CycleResult) -> None:
            nonlocal ok, cycles
            cycles += 1
            ok = ok and result.poll.ok
            print(f"--- poll {cycles} ---", flush=True)
            print(render_cycle(store, config, result, utc_now()) + "\n", flush=True)
            if args.cycles and cycles >= args.cycles:
                daemon.stopping.set()

        daemon = Daemon(path, config, store, sender=ConsoleSender(as_json=args.json), on_cycle=show)
        try:
            await daemon.start()
            urls = {
                "page_url": f"{daemon.url}/",
                "metrics_url": f"{daemon.url}/metrics",
                "health_url": f"{daemon.url}/healthz",
            }
            print("\n".join(banner_lines(args, base_url, tmp, **urls)) + "\n", flush=True)
            await daemon.stopping.wait()
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("demo: stopped.")
        finally:
            await daemon.stop()
            simulator.stop()
    return ok


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there, else 0 (any free port)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred
