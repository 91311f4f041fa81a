"""Steady-state benchmark: evaluate the scale benchmark's 200 rules over a month of history.

The first-cycle benchmark (`scale.py`) stores two hours; a daemon that has run for a month
holds 720 hourly buckets per (key, model). This builds such a store directly (1,000 keys x
10 models x 30 days = 7.2 M rows, written bucket by bucket as the poller would) and times what
every later cycle does on top of its small poll: evaluate the rules, build the metrics
snapshot and render it. Prints wall time and the process's peak RSS.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scale import rules_yaml

KEYS, MODELS, DAYS = 1_000, 10, 30


def main() -> None:
    from daemon.config import load_config
    from daemon.cycle import CycleResult, evaluate_rules
    from daemon.ingest import PollReport
    from daemon.langdock.csv import KeyUsage
    from daemon.logs import configure_logging
    from daemon.metrics import render
    from daemon.notify import DeliveryReport
    from daemon.published import load_published
    from daemon.service import Daemon
    from daemon.store import Store

    configure_logging("json", "warning")
    now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(
            "langdock: {api_key: bench}\ntimezone: UTC\nstate: {path: state.db}\n" + rules_yaml()
        )
        config = load_config(config_path)
        store = Store.open(config.state.path, exclusive=True)
        built = time.perf_counter()
        hour = now.replace(minute=0) - timedelta(days=DAYS)
        while hour <= now:
            rows = [
                KeyUsage(
                    f"key_{k:05d}",
                    f"team-{k % 97}-key-{k}",
                    f"model-{m}",
                    (k + m) % 5 + 1,
                    Decimal((k * MODELS + m + 1) % 997) / 10_000,
                    prompt_tokens=k + m,
                    completion_tokens=m,
                )
                for k in range(KEYS)
                for m in range(MODELS)
            ]
            store.replace_key_usage(hour, hour + timedelta(hours=1), rows, hour)
            hour += timedelta(hours=1)
        store.refresh_rollups(now)  # what the first cycle after each midnight does
        built = time.perf_counter() - built
        daemon = Daemon(config_path, config, store)
        started = time.perf_counter()
        engine = evaluate_rules(store, config, now)
        published = load_published(store, config, engine, now)  # the cycle's last load
        daemon.publish(
            CycleResult(PollReport(started=now), engine, DeliveryReport(), published=published)
        )
        lines = len(render(daemon.collector).splitlines())
        elapsed = time.perf_counter() - started
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"steady: {KEYS:,} keys x {MODELS} models x {DAYS} days ({KEYS * MODELS * 24 * DAYS:,}"
        f" rows, stored in {built:.0f} s), 200 rules, {lines:,} metric lines"
    )
    print(f"{'steady: evaluate + metrics':<34} {elapsed:>10.2f} s")
    print(f"{'steady: peak RSS':<34} {peak:>10.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
