"""Fault injection: the daemon's cycle (what `once` and `run` execute) against the loopback
Langdock simulator and fake Slack, one fault per scenario.

For every scenario: the cycle survives, no partial data is stored (every stored bucket equals
what Langdock reports for it), the bucket that failed is fetched again next cycle, and every
alert that should fire reaches Slack exactly once, none that shouldn't. The matrix with
expectations is docs/RELIABILITY.md.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from daemon.config import Config, load_config
from daemon.coverage import uncovered
from daemon.cycle import CycleResult, run_cycle
from daemon.langdock import LangdockClient
from daemon.langdock.simulator import Fault, Simulator
from daemon.notify import SlackSender
from daemon.store import Store
from tests.conftest import API_KEY, NOW, FakeClock
from tests.fake_slack import FakeSlack

LIMIT = Decimal(40)  # per key over 24h: prod-web and prod-search exceed it, the rest do not
TOO_LARGE = {
    "error": "Export too large: 2000000 rows exceeds limit of 1000000. Please narrow"
    " the date range."
}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def config_for(tmp_path: Path, sim: Simulator, slack: FakeSlack) -> Config:
    (tmp_path / "config.yaml").write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '{API_KEY}', max_retries: 2,"
        " timeout: 1s}\n"
        "timezone: Europe/Berlin\npoll: {backfill: 24h}\nstate: {path: state.db}\n"
        f"slack: {{webhook_url: '{slack.url}/services/T/B/x'}}\n"
        f"rules:\n  - {{name: keys-24h, kind: budget, each: api_key, window: 24h,"
        f" limit_usd: {LIMIT}}}\n"
    )
    return load_config(tmp_path / "config.yaml", {})


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        sim: Simulator,
        slack: FakeSlack,
        clock: FakeClock,
        timeout: float = 1.0,
        max_download_bytes: int = 1 << 20,  # the simulator's files are a few kB
        download_deadline: float = 60.0,
    ) -> None:
        self.sim, self.slack, self.clock = sim, slack, clock
        self.config = config_for(tmp_path, sim, slack)
        self.store = Store.open(self.config.state.path, exclusive=True)
        self.client = LangdockClient(
            sim.base_url,
            API_KEY,
            timeout=timeout,
            max_retries=2,
            max_requests_per_minute=6000,
            sleep=clock.sleep,
            clock=clock.mono,
            max_download_bytes=max_download_bytes,
            download_deadline=download_deadline,
        )
        self.sender = SlackSender(self.config)

    async def cycle(self) -> CycleResult:
        result = await run_cycle(
            self.config,
            self.store,
            self.client,
            self.clock,
            sender=self.sender,
            sleep=self.clock.sleep,
        )
        self.clock.advance(timedelta(minutes=5))
        return result

    def assert_no_partial_data(
        self, left_out: dict[datetime, set[tuple[str, str]]] | None = None
    ) -> None:
        """Every range marked fetched (an hour or a coarse range) holds exactly Langdock's
        numbers for it (but for the (key, model) rows ``left_out`` of a range, rejected for a
        poisoned value), and nothing is stored where nothing was fetched."""
        segments = self.store.segments("api-keys", NOW - timedelta(days=2))
        for lo, hi in uncovered(segments, NOW - timedelta(days=2), self.clock()):
            assert self.store.key_model_totals(lo, hi) == [], f"unfetched {lo}..{hi} has data"
        for segment in segments:
            if segment.fetched_at < segment.end:
                continue  # fetched while running: its truth depends on the exact instant
            stored = {
                (t.api_key_id, t.model): t.cost_usd
                for t in self.store.key_model_totals(segment.start, segment.end)
            }
            truth = self.truth(segment.start, segment.end)
            for pair in (left_out or {}).get(segment.start, set()):
                del truth[pair]
            assert stored == truth, segment.start

    def truth(self, start: Any, end: Any) -> dict[tuple[str, str], Decimal]:
        result = {}
        for ki, key in enumerate(self.sim.keys):
            for mi, model in enumerate(self.sim.models):
                usage = self.sim.pair_usage(ki, mi, start, end)
                if usage["requests"] or usage["cost"]:
                    result[(key.id, model.name)] = usage["cost"]
        return result

    def expected_firing(self) -> set[str]:
        totals: dict[str, Decimal] = {}
        for t in self.store.key_model_totals(self.clock() - timedelta(hours=24), self.clock()):
            totals[t.api_key_name] = totals.get(t.api_key_name, Decimal(0)) + t.cost_usd
        return {name for name, total in totals.items() if total >= LIMIT}

    def alerted(self) -> list[str]:
        return [t.split("— ")[1].split(" (")[0] for t in self.slack.texts()]


def fault(kind: str) -> Callable[[Simulator], None]:
    def apply(sim: Simulator) -> None:
        if kind == "429 storm with Retry-After":
            sim.faults.extend(
                Fault(429, {"error": "Too many requests"}, {"Retry-After": "9"}) for _ in range(3)
            )
        elif kind == "429 storm without Retry-After":
            sim.faults.extend(Fault(429, {"error": "Too many requests"}) for _ in range(3))
        elif kind == "500s":
            sim.faults.extend(Fault(500, {"error": "Internal error"}) for _ in range(3))
        elif kind == "hanging request":
            sim.faults.extend(Fault(200, {}, delay=1.5) for _ in range(3))
        elif kind == "success false":
            sim.faults.append(Fault(200, {"success": False, "error": "export failed"}))
        elif kind == "export too large":
            sim.faults.append(Fault(400, TOO_LARGE))
        elif kind == "expired signed URL":
            sim.download_faults.append("expire")
        elif kind == "signed URL redirects elsewhere":
            sim.download_faults.append("redirect")
        elif kind in ("truncate", "garbage", "missing_column", "bom_extra"):
            sim.download_faults.append(kind)
        elif kind == "download 500":
            sim.download_faults.append("500")
        elif kind == "download breaks off":
            sim.download_faults.append("drop")
        elif kind == "truncated every time":  # max_retries 2: three fresh exports, all short
            sim.download_faults.extend(["truncate"] * 3)
        elif kind == "storage down":
            sim.download_faults.extend(["500"] * 3)
        elif kind == "last row cut short":
            sim.download_faults.append("short_row")
        elif kind == "stray quote":
            sim.download_faults.append("stray_quote")
        elif kind == "damaged every time":
            sim.download_faults.extend(["short_row", "stray_quote", "short_row"])
        elif kind == "file past the size limit":
            sim.download_faults.append("oversized")
        elif kind == "file past the size limit, no Content-Length":
            sim.download_faults.append("oversized_unannounced")
        else:
            raise AssertionError(kind)

    return apply


SCENARIOS = [
    # fault, the first cycle ends ok?, reason recorded for the failed fetch
    ("429 storm with Retry-After", False, "rate_limited"),
    ("429 storm without Retry-After", False, "rate_limited"),
    ("500s", False, "server"),
    ("hanging request", False, "timeout"),
    ("success false", False, "unsuccessful"),
    ("export too large", True, None),
    ("expired signed URL", True, None),
    ("signed URL redirects elsewhere", False, "download"),
    ("truncate", True, None),  # a fresh export within the same cycle
    ("truncated every time", False, "truncated"),  # the bucket fails, the poll goes on
    ("download 500", True, None),
    ("download breaks off", True, None),
    ("storage down", False, "download"),  # retries exhausted: the poll stops
    ("garbage", False, "parse"),
    ("missing_column", False, "parse"),
    ("bom_extra", True, None),
    ("last row cut short", True, None),  # not zeros: a fresh export within the same cycle
    ("stray quote", True, None),
    ("damaged every time", False, "malformed"),  # the bucket fails, the poll goes on
    ("file past the size limit", False, "download_too_large"),  # not retried
    ("file past the size limit, no Content-Length", False, "download_too_large"),
]


@pytest.mark.parametrize(("kind", "first_ok", "reason"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
async def test_langdock_fault(
    kind: str,
    first_ok: bool,
    reason: str | None,
    tmp_path: Path,
    simulator: Simulator,
    slack: FakeSlack,
    clock: FakeClock,
) -> None:
    harness = Harness(
        tmp_path, simulator, slack, clock, timeout=0.3 if kind == "hanging request" else 1.0
    )
    fault(kind)(simulator)
    first = await harness.cycle()
    assert first.poll.ok is first_ok, first.poll.failures
    if reason is not None:
        assert {f.reason for f in first.poll.failures} == {reason}
        assert not harness.store.last_fetches(50)[0].ok or first.poll.fetched
    harness.assert_no_partial_data()
    posts = len(simulator.export_requests())
    if kind in ("last row cut short", "stray quote"):
        assert posts == first.poll.calls == first.poll.planned + 1  # one fresh export
    if kind == "damaged every time":
        (failure,) = first.poll.failures
        assert "(a row cut short or a stray quote)" in failure.message
        assert "after 3 attempts" in failure.message and first.poll.fetched == posts - 3
    if kind.startswith("file past the size limit"):
        (failure,) = first.poll.failures
        assert "\n" not in failure.message and posts == first.poll.planned  # not retried
        assert "larger than langdock.max_download_bytes (1,048,576 bytes;" in failure.message
        assert "raise langdock.max_download_bytes in the config" in failure.message
    if kind == "429 storm with Retry-After":
        assert clock.sleeps[:2] == [9.0, 9.0]
    elif kind == "429 storm without Retry-After":  # exponential backoff with jitter
        assert 0.5 <= clock.sleeps[0] <= 1.5 and 1.0 <= clock.sleeps[1] <= 3.0
    second = await harness.cycle()
    assert second.ok, second.poll.failures
    harness.assert_no_partial_data()
    third = await harness.cycle()  # nothing new: no duplicates
    assert third.ok
    alerted = harness.alerted()
    assert sorted(alerted) == sorted(harness.expected_firing()) == ["prod-search", "prod-web"]
    harness.store.close()


async def test_a_download_that_drips_is_abandoned_and_fetched_again(
    tmp_path: Path, simulator: Simulator, slack: FakeSlack, clock: FakeClock
) -> None:
    """All bytes announced, then one every half second: the download's own deadline (not the
    per-read timeout, which each byte resets) abandons it, and a fresh export succeeds."""
    harness = Harness(tmp_path, simulator, slack, clock, download_deadline=0.5)
    simulator.drip_interval = 0.2
    simulator.download_faults.append("drip")
    result = await harness.cycle()
    assert result.poll.ok, result.poll.failures
    assert result.poll.calls == result.poll.planned + 1  # one fresh export for the stalled one
    assert len([r for r in simulator.seen if r.method == "GET"]) == result.poll.calls
    harness.assert_no_partial_data()


async def test_no_usage_at_all_is_quiet(
    tmp_path: Path, simulator: Simulator, slack: FakeSlack, clock: FakeClock
) -> None:
    simulator.requests_per_hour = 0  # every export answers 404 "No data found"
    harness = Harness(tmp_path, simulator, slack, clock)
    result = await harness.cycle()
    assert result.ok and result.poll.rows == 0 and result.poll.fetched == result.poll.planned
    assert slack.received == []
    harness.store.close()


async def test_disk_full_keeps_the_daemon_up(
    tmp_path: Path,
    simulator: Simulator,
    slack: FakeSlack,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(tmp_path, simulator, slack, clock)

    def full(*args: object, **kwargs: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(harness.store, "replace_key_usage", full)
        patch.setattr(harness.store, "save_alerts", full)
        result = await harness.cycle()
    assert result.poll.aborted == "store"
    assert result.store_error == "SQLite said: database or disk is full (SQLITE_FULL)"
    (failure,) = result.poll.failures  # the poll stopped at the first bucket
    assert failure.message == "SQLite said: database or disk is full (SQLITE_FULL)"
    assert slack.received == []
    recovered = await harness.cycle()  # space is back
    assert recovered.ok and sorted(harness.alerted()) == ["prod-search", "prod-web"]
    harness.store.close()


POISONS = [
    # column of the first file's last row, its value, why the row is left out
    ("total_cost_usd", "1e20", "out_of_range"),  # the issue: overflowed the store's integers
    ("total_cost_usd", "-12.5", "negative"),
    ("requests", "NaN", "not_a_number"),
    ("sum_prompt_tokens", "3.5", "not_an_integer"),
]


@pytest.mark.parametrize(("column", "value", "reason"), POISONS, ids=[p[2] for p in POISONS])
async def test_a_poisoned_value_is_left_out_and_every_other_row_stored(
    column: str,
    value: str,
    reason: str,
    tmp_path: Path,
    simulator: Simulator,
    slack: FakeSlack,
    clock: FakeClock,
) -> None:
    """One absurd number in a file: that row is left out, counted, named in one log line and
    in a line for `once`; the rest of the file and every other bucket are stored, the poll
    is not stopped, and nothing says "disk". Langdock's next good value stores the row."""
    harness = Harness(tmp_path, simulator, slack, clock)
    hour = (NOW.replace(minute=0), NOW.replace(minute=0) + timedelta(hours=1))
    last = simulator.api_keys_csv(hour[0], NOW, grouped=True)[0].splitlines()[-1].split(",")
    poisoned = (last[3], last[5])  # (key, model) of the running hour's last row
    simulator.download_faults.append(f"poison:{column}={value}")  # the first file: that hour
    with capture_logs() as logs:
        first = await harness.cycle()
    assert first.ok and first.poll.failures == [] and first.poll.fetched == first.poll.planned
    assert not [e for e in logs if e["log_level"] == "error"]
    assert harness.client.rejected == {("api-keys", reason): 1}
    span = f"{hour[0].isoformat()}/{hour[1].isoformat()}"
    (event,) = [e for e in logs if e["event"] == "export_row_rejected"]
    assert (event["export"], event["range"], event["column"], event["value"]) == (
        "api-keys",
        span,
        column,
        value,
    )
    (line,) = first.poll.rejected  # what `once` prints
    assert line.startswith(f"api-keys export {span}: line {event['line']}, column {column}:")
    truth = harness.truth(hour[0], NOW)  # the running hour as Langdock sent it at NOW
    assert poisoned in truth
    del truth[poisoned]
    stored = {(t.api_key_id, t.model): t.cost_usd for t in harness.store.key_model_totals(*hour)}
    assert stored == truth
    harness.assert_no_partial_data()
    assert sorted(harness.alerted()) == ["prod-search", "prod-web"]
    fetched = clock()
    second = await harness.cycle()  # the running hour again, good this time: all of it
    assert second.ok and second.poll.rejected == []
    stored = {(t.api_key_id, t.model): t.cost_usd for t in harness.store.key_model_totals(*hour)}
    assert stored == harness.truth(hour[0], fetched)
    assert sorted(harness.alerted()) == ["prod-search", "prod-web"]
    harness.store.close()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OverflowError("Python int too large to convert to SQLite INTEGER"),
            "storing the bucket failed: OverflowError: Python int too large to convert to"
            " SQLite INTEGER",
        ),
        (
            sqlite3.IntegrityError("CHECK constraint failed: requests >= 0"),
            "SQLite said: CHECK constraint failed: requests >= 0",
        ),
    ],
    ids=["overflow", "constraint"],
)
async def test_a_bucket_the_store_refuses_fails_alone(
    error: Exception,
    message: str,
    tmp_path: Path,
    simulator: Simulator,
    slack: FakeSlack,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure to store one bucket never aborts the poll of the others, and its message
    names the real cause (not "check disk space")."""
    harness = Harness(tmp_path, simulator, slack, clock)
    store_rows = harness.store.replace_key_usage
    refused: list[datetime] = []

    def refuse_the_first(start: datetime, *args: Any, **kwargs: Any) -> int:
        if not refused:
            refused.append(start)
            raise error
        return store_rows(start, *args, **kwargs)

    with monkeypatch.context() as patch, capture_logs() as logs:
        patch.setattr(harness.store, "replace_key_usage", refuse_the_first)
        first = await harness.cycle()
    assert first.poll.aborted is None and first.poll.fetched == first.poll.planned - 1
    (failure,) = first.poll.failures
    assert (failure.reason, failure.message, failure.bucket.start) == ("store", message, *refused)
    (event,) = [e for e in logs if e["event"] == "store_write_failed"]
    assert event["error"] == message and "disk" not in event["fix"]
    logged = [f for f in harness.store.last_fetches(50) if not f.ok]
    assert [(f.range_start, f.reason, f.message) for f in logged] == [(*refused, "store", message)]
    harness.assert_no_partial_data()
    second = await harness.cycle()
    assert second.ok, second.poll.failures
    harness.assert_no_partial_data()
    assert sorted(harness.alerted()) == ["prod-search", "prod-web"]
    harness.store.close()


async def test_a_really_full_disk_stops_the_poll_and_says_so(
    tmp_path: Path, simulator: Simulator, slack: FakeSlack, clock: FakeClock
) -> None:
    """SQLite's own SQLITE_FULL (the database may not grow: ``max_page_count``): the bucket
    that no longer fits fails with what SQLite said (not the "cannot rollback" that follows
    it), and the poll stops there (every bucket after it would fail too)."""
    harness = Harness(tmp_path, simulator, slack, clock)
    conn = harness.store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with capture_logs() as logs:
        result = await harness.cycle()
    assert result.poll.aborted == "store" and result.poll.fetched < result.poll.planned - 1
    (failure,) = result.poll.failures
    assert failure.message == "SQLite said: database or disk is full (SQLITE_FULL)"
    (event, *_) = [e for e in logs if e["event"] == "store_write_failed"]
    assert event["fix"] == "free disk space"
    conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    recovered = await harness.cycle()
    assert recovered.ok and sorted(harness.alerted()) == ["prod-search", "prod-web"]
    harness.store.close()


def test_a_store_held_by_another_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main

    (tmp_path / "config.yaml").write_text(
        "langdock: {api_key: x, base_url: 'http://127.0.0.1:9'}\nstate: {path: state.db}\n"
    )
    holder = Store.open(tmp_path / "state.db", exclusive=True)
    try:
        assert main(["once", "--config", str(tmp_path / "config.yaml")]) == 1
        err = capsys.readouterr().err
        assert "is in use by another langdock-budget process" in err and "stop it first" in err
        # readers are not blocked
        assert main(["status", "--config", str(tmp_path / "config.yaml")]) == 0
    finally:
        holder.close()


def test_once_on_a_dedicated_deployment_rides_out_a_fault_storm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: a base URL ending in /api/public; two 429s, one 500 on the export
    POSTs, then a truncated and a 500 download, in a row. `langdock-budget once` (the real
    command, in-process, real clock) exits 0 and stores exactly what the simulator reports."""
    from daemon.cli import main

    waits: list[float] = []

    async def no_wait(seconds: float) -> None:  # the client's waits, recorded, not slept
        waits.append(seconds)

    monkeypatch.setattr("daemon.langdock.client.default_sleep", no_wait)
    # The simulated workspace stops using Langdock now, so every range `once` asks for, the
    # running hour included, has one exact truth however the fetches split it.
    frozen = datetime.now(UTC).replace(microsecond=0)
    sim = Simulator(api_key=API_KEY, clock=lambda: frozen)
    sim.start()
    try:
        (tmp_path / "config.yaml").write_text(
            f"langdock: {{base_url: '{sim.base_url}/api/public', api_key: '{API_KEY}',"
            " max_requests_per_minute: 250}\n"  # max_retries: the default 5
            "timezone: Europe/Berlin\npoll: {backfill: 3h}\nstate: {path: state.db}\n"
        )
        sim.faults.extend(
            [
                Fault(429, {"error": "Too many requests"}, {"Retry-After": "7"}),
                Fault(429, {"error": "Too many requests"}),
                Fault(500, {"error": "Internal error"}),
            ]
        )
        sim.download_faults.extend(["truncate", "500"])
        assert main(["--config", str(tmp_path / "config.yaml"), "once"]) == 0
        ended = datetime.now(UTC)  # `once` read its clock before this
        out = capsys.readouterr()
        assert API_KEY not in out.out + out.err and "signature=" not in out.out + out.err
        posts = sim.export_requests()
        downloads = [r for r in sim.seen if r.method == "GET"]
    finally:
        sim.stop()
    assert all(r.path.startswith("/api/public/export/") for r in posts)
    assert not sim.faults and not sim.download_faults, "every fault was served"
    assert waits[0] == 7.0 and len(waits) == 5, waits  # Retry-After, then backoff

    def utc(point: dict[str, str]) -> datetime:  # a request's wall-clock date in its zone
        local = datetime.fromisoformat(point["date"])
        return local.replace(tzinfo=ZoneInfo(point["timezone"])).astimezone(UTC)

    # one export took all five retries (three failed POSTs, two failed downloads); every
    # other POST was answered with a file, or with "No data found" for a range after the frozen
    # instant (counted by the answers: the faults may hit such a range when an hour turns)
    answered = Counter(r.status for r in posts)
    assert answered[429] == 2 and answered[500] == 1
    assert answered[200] == len(downloads)
    assert len(posts) == len(downloads) + 3 + answered[404]
    assert all(utc(r.body["from"]) >= frozen for r in posts if r.status == 404)
    first = min(utc(r.body["from"]) for r in posts)
    assert first <= ended - timedelta(hours=3)
    assert max(utc(r.body["to"]) for r in posts) >= frozen

    store = Store.open(tmp_path / "state.db")
    try:
        later = frozen + timedelta(days=1)
        stored: dict[tuple[str, str], tuple[int, Decimal]] = {
            (t.api_key_id, t.model): (t.requests, t.cost_usd)
            for t in store.key_model_totals(first, later)
        }
        model_requests: dict[str, int] = {}
        for point in store.model_points(first, later):
            model_requests[point.model] = model_requests.get(point.model, 0) + point.requests
    finally:
        store.close()
    truth = {
        (key.id, model.name): (usage["requests"], usage["cost"])
        for ki, key in enumerate(sim.keys)
        for mi, model in enumerate(sim.models)
        if (usage := sim.pair_usage(ki, mi, first, later))["requests"] or usage["cost"]
    }
    assert {k: v for k, v in stored.items() if v != (0, 0)} == truth
    assert {m: n for m, n in model_requests.items() if n} == {
        model.name: n
        for mi, model in enumerate(sim.models)
        if (n := sum(sim.pair_usage(ki, mi, first, later)["requests"] for ki in range(5)))
    }
