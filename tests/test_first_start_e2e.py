"""End to end, issue #13: a first start of the real `langdock-budget run` process with a
35-day backfill against the loopback simulator, every budget checked against the
simulator's truth right after the first (coarse) cycle and again once the background
refinement has put the whole backfill in hour by hour.

The simulator's clock is frozen at the test's start ``t0``: its usage stops growing there,
so the truth of every window is exact and fixed (usage up to ``t0``; the daemon's own clock
runs on, seconds later, and sees nothing after ``t0``). The truth of a window at the
evaluation instant ``at`` only changes when ``at`` crosses a full hour (Europe/Berlin's
buckets are UTC hours); ``at`` is not published, but it lies between the daemon's launch
and the scrape, under an hour apart, so the scrape must equal the truth at one of those two
instants, all series alike. The test waits for states (deadlines, never fixed sleeps) and
asserts no timings.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.langdock.sim_workspace import DEFAULT_MODELS, SimKey
from daemon.langdock.simulator import Simulator
from daemon.rules.windows import bucket_end, bucket_start, window_period
from daemon.store import join_nanos
from tests.processes import LOCAL, free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-first-start-3e8a1f07c2d4"
BERLIN = ZoneInfo("Europe/Berlin")
BACKFILL = timedelta(days=35)
# seconds for each state the test waits for: a guard against a hang, not a timing (the
# refinement is 1,680 calls; tests running in parallel on a busy machine slow it down)
DEADLINE = 120.0
KEYS = (
    SimKey("key_4f1a9c", "prod-web", 1.0),
    SimKey("key_7b22d0", "prod-search", 0.6),
    SimKey("key_0c93e1", "staging", 0.15),
)
MODELS = DEFAULT_MODELS[:2]
# rule name → (window, each api key?)
BUDGETS = {
    "month-per-key": ("month", True),
    "day-per-key": ("day", True),
    "7d-per-key": ("7d", True),
    "week-workspace": ("week", False),
}
ANOMALY = "cost-spike"
RULES = (
    "rules:\n"
    + "".join(
        f"  - {{name: {name}, kind: budget, window: {window},"
        f"{' each: api_key,' if each else ''} limit_usd: 1000000}}\n"
        for name, (window, each) in BUDGETS.items()
    )
    + f"  - {{name: {ANOMALY}, kind: anomaly, metric: cost_usd, window: 1h, baseline: 7d}}\n"
)


@dataclass
class Scrape:
    """One `/metrics` answer, parsed, and when it arrived."""

    at: datetime
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def value(self, name: str, **labels: str) -> float:
        found = [v for lb, v in self.samples.get(name, []) if labels.items() <= lb.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def by(self, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
        return {tuple(lb[n] for n in label_names): v for lb, v in self.samples.get(name, [])}

    @property
    def polls(self) -> int:
        return (
            int(self.value("langdock_polls_total")) if "langdock_polls_total" in self.samples else 0
        )


class RunningDaemon:
    """The `run` process, its endpoints and its stderr."""

    def __init__(self, config: Path, port: int, stderr: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.stderr = stderr
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env.update(E2E_KEY=SECRET, LANGDOCK_BUDGET_LOG_FORMAT="json")
        self.launched = datetime.now(UTC)
        self.last_seen: dict[str, object] = {}  # for the message when a deadline expires
        with stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def tail(self, lines: int = 30) -> str:
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def scrape(self, ready: Callable[[str], bool] = lambda text: True) -> Scrape | None:
        """`/metrics`, parsed; None while the daemon does not listen yet or while its text is
        not ``ready`` (a look at a line or two: the waits scrape ten times a second, and
        parsing each whole text took the test about a second of CPU in all)."""
        try:
            text = LOCAL.get(f"{self.base}/metrics", timeout=5).text
        except httpx.TransportError:
            return None  # not listening yet
        self.last_seen["polls"] = unlabelled(text, "langdock_polls_total")
        self.last_seen["remaining buckets"] = unlabelled(
            text, "langdock_backfill_remaining_buckets"
        )
        if not ready(text):
            return None
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return Scrape(datetime.now(UTC), samples)

    def published(self) -> Scrape | None:
        """A scrape once a cycle published its series (the daemon starts with none)."""
        return self.scrape(lambda text: RULE_READY.search(text) is not None)

    def refined(self) -> Scrape | None:
        """A scrape once no bucket of the backfill is left to fetch hour by hour."""
        return self.scrape(
            lambda text: unlabelled(text, "langdock_backfill_remaining_buckets") == 0
        )

    def cycle_after_refinement(self) -> int | None:
        """The number of the first cycle that started after the refiner logged the backfill
        complete (the daemon logs from one event loop: its log is in the order things ran)."""
        complete = False
        for line in self.stderr.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("event") == "backfill_complete":
                complete = True
            elif complete and event.get("event") == "poll_started":
                return int(event["cycle"])
        return None

    def health(self) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = LOCAL.get(f"{self.base}/healthz", timeout=5).json()
        except httpx.TransportError:
            return None
        self.last_seen["healthz"] = body
        return body

    def wait(self, what: str, probe: Callable[[], T | None]) -> T:
        """Call ``probe`` until it returns something (not None); fail after `DEADLINE`."""
        deadline = time.monotonic() + DEADLINE
        while True:
            found = probe()
            if found is not None:
                return found
            code = self.proc.poll()
            assert code is None, f"the daemon exited ({code}) waiting for {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, (
                f"waited {DEADLINE:.0f} s for {what}; last seen {self.last_seen};"
                f" daemon stderr (tail):\n{self.tail()}"
            )
            time.sleep(0.1)  # between probes (each a scrape, parsed), not a wait for time to pass


RULE_READY = re.compile(r"^langdock_rule_ready\{", re.M)


def unlabelled(text: str, name: str) -> float | None:
    """The value of the series ``name`` without labels in an exposition text, if there."""
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def key_truth(sim: Simulator, key: int, start: datetime, end: datetime) -> Decimal:
    return sum(
        (sim.pair_usage(key, m, start, end)["cost"] for m in range(len(sim.models))), Decimal(0)
    )


def expected_budgets(sim: Simulator, at: datetime) -> dict[tuple[str, str], Decimal]:
    """(rule, scope) → the simulator's spend in the rule's window at ``at``: the buckets
    that start in [window start, at), the running one included (its usage up to ``t0``)."""
    expected: dict[tuple[str, str], Decimal] = {}
    for rule, (window, each) in BUDGETS.items():
        edge = window_period(window, at, BERLIN).start
        start = edge if bucket_start(edge, BERLIN) == edge else bucket_end(edge, BERLIN)
        end = bucket_end(at, BERLIN)
        spends = {k.id: key_truth(sim, i, start, end) for i, k in enumerate(KEYS)}
        if each:
            expected.update({(rule, scope): spend for scope, spend in spends.items()})
        else:
            expected[(rule, "workspace")] = sum(spends.values(), Decimal(0))
    return expected


def budget_mismatches(scrape: Scrape, expected: dict[tuple[str, str], Decimal]) -> list[str]:
    published = scrape.by("langdock_budget_spend_usd", "rule", "scope")
    problems = [
        f"{key}: published {v!r}, no such budget"
        for key, v in published.items()
        if key not in expected
    ]
    for key, truth in sorted(expected.items()):
        value = published.get(key)
        if value is None:
            if truth:
                problems.append(f"{key}: missing, truth {truth}")
        elif not math.isclose(value, float(truth), rel_tol=1e-9, abs_tol=0.0):
            problems.append(f"{key}: published {value!r}, truth {truth}")
    return problems


def check_budgets(sim: Simulator, scrape: Scrape, since: datetime, when: str) -> None:
    """Every budget series equals the truth at one instant between ``since`` and the scrape
    (where the daemon evaluated), for all series alike."""
    assert scrape.at - since < timedelta(hours=1)
    truths = [expected_budgets(sim, at) for at in (since, scrape.at)]
    assert all(sum(truth.values()) > 0 for truth in truths), "the simulator has no usage"
    best = min((budget_mismatches(scrape, truth) for truth in truths), key=len)
    assert best == [], f"{when}: budgets differ from the simulator's truth:\n" + "\n".join(best)


def check_store(path: Path, sim: Simulator, t0: datetime) -> None:
    """Every stored range is one local hour, the backfill is covered without overlaps, the
    staging area is empty, and the stored usage sums to the truth (nothing counts twice)."""
    now = datetime.now(UTC)
    oldest, current = bucket_start(now - BACKFILL, BERLIN), bucket_start(now, BERLIN)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT export, bucket_start, bucket_end FROM segments ORDER BY export, bucket_start"
        ).fetchall()
        staged = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("staged_key_usage", "staged_segments")
        ]
        costs = conn.execute("SELECT cost_nanos, cost_rest, bucket_start FROM key_usage").fetchall()
    finally:
        conn.close()
    coarse = [
        (export, datetime.fromtimestamp(s, UTC), datetime.fromtimestamp(e, UTC))
        for export, s, e in rows
        if e != bucket_end(datetime.fromtimestamp(s, UTC), BERLIN).timestamp()
    ]
    assert coarse == [], f"coarse segments remain: {coarse[:5]}"
    assert staged == [0, 0], f"staged rows left (key_usage, segments): {staged}"
    for export in ("api-keys", "models"):
        starts = [s for x, s, _ in rows if x == export]
        ends = [e for x, _, e in rows if x == export]
        assert all(a <= b for a, b in zip(ends, starts[1:], strict=False)), (
            f"{export}: overlapping segments"
        )
        hours = {s for s in starts if oldest.timestamp() <= s < current.timestamp()}
        assert len(hours) == round((current - oldest) / timedelta(hours=1)), (
            f"{export}: {len(hours)} hours of the backfill stored"
        )
    first = datetime.fromtimestamp(min(s for _, s, _ in rows), UTC)
    stored = sum((join_nanos(n, rest) for n, rest, _ in costs), Decimal(0))
    truth = sum((key_truth(sim, i, first, t0) for i in range(len(KEYS))), Decimal(0))
    assert stored == truth, f"the store holds {stored} USD since {first}, the simulator {truth}"


@pytest.mark.long
@pytest.mark.no_cover  # the daemon is another process; here the simulator serves 1,700 calls
def test_first_start_budgets_match_truth_before_and_after_refinement(tmp_path: Path) -> None:
    t0 = datetime.now(UTC)
    sim = Simulator(api_key=SECRET, keys=KEYS, models=MODELS, clock=lambda: t0)
    sim.start()
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '${{E2E_KEY}}',"
        " max_requests_per_minute: 250, backfill_max_requests_per_minute: 10000}\n"
        "timezone: Europe/Berlin\npoll: {interval: 10s, backfill: 35d}\n"
        f"state: {{path: state.db}}\nmetrics: {{listen: '127.0.0.1:{port}'}}\n" + RULES
    )
    daemon = RunningDaemon(config, port, tmp_path / "stderr.log")
    proc = daemon.proc
    try:
        # before refinement: the first cycle's coarse fill
        first = daemon.wait("the first cycle's metrics", daemon.published)
        health = daemon.health()
        assert first.polls == 1, f"first seen at cycle {first.polls}"
        ready = first.by("langdock_rule_ready", "rule")
        assert ready == {**{(rule,): 1.0 for rule in BUDGETS}, (ANOMALY,): 0.0}, ready
        assert first.value("langdock_backfill_remaining_buckets") > 0
        assert first.value("langdock_backfill_progress_ratio") < 1
        assert not [lb for lb, _ in first.samples.get("langdock_alert_firing", [])]
        check_budgets(sim, first, daemon.launched, "first cycle")
        assert health is not None and health["state"] == "backfilling", health
        assert health["status"] == "ok" and ANOMALY in health["warming_rules"], health

        # the refinement is over once the backfill is in hour by hour (the refiner
        # publishes that between cycles, and its completion starts a cycle); then a cycle
        # evaluates the refined store. A scrape's `langdock_polls_total` is the count of the
        # cycle whose series it shows (one snapshot), so a scrape that counts the first cycle
        # started after the refiner logged its completion shows the refined store's series
        daemon.wait("the end of the refinement (0 remaining buckets)", daemon.refined)
        refined_cycle = daemon.wait(
            "a cycle started after the refinement", daemon.cycle_after_refinement
        )

        def after() -> tuple[Scrape, dict[str, Any]] | None:
            scrape = daemon.refined()
            if scrape is None or scrape.polls < refined_cycle:
                return None
            body = daemon.health()
            return (scrape, body) if body is not None and body["state"] == "ready" else None

        final, health = daemon.wait("a cycle after the refinement, healthz ready", after)
        check_budgets(sim, final, daemon.launched, "after refinement")
        ready = final.by("langdock_rule_ready", "rule")
        assert ready == {(rule,): 1.0 for rule in [*BUDGETS, ANOMALY]}, ready
        assert final.value("langdock_backfill_remaining_buckets") == 0
        assert final.value("langdock_backfill_progress_ratio") == 1
        assert health["status"] == "ok" and health["warming_rules"] == [], health
        check_store(tmp_path / "state.db", sim, t0)

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit after SIGTERM:\n{daemon.tail()}") from None
        assert code == 0, f"exit code {code}:\n{daemon.tail()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sim.stop()
    text = daemon.stderr.read_text()
    assert "Traceback" not in text, daemon.tail(60)
    assert '"level": "error"' not in text, daemon.tail(60)
