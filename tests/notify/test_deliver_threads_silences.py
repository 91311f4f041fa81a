"""Delivery: a silence drops the queued messages it covers; a forecast that came true is
threaded under the forecast's message and updates it in place (bot token routes); `status`
agrees with itself, names keys, marks silences and lists the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.cli import main
from daemon.config import Config
from daemon.langdock.csv import KeyUsage
from daemon.notify import DeliveryReport, SlackSender, deliver, plan, route_for
from daemon.rules.engine import evaluate
from daemon.rules.usage import KeyPoint, UsageIndex
from daemon.rules.windows import bucket_end, bucket_start
from daemon.store import OutboxItem, Store
from tests.conftest import FakeClock
from tests.fake_slack import FakeSlack
from tests.notify.test_deliver import BUDGET_24H, T0, bot, make_config, webhook
from tests.rules.helpers import H

UTCZ = ZoneInfo("UTC")
MONTH = datetime(2026, 11, 1, tzinfo=UTC)
FORECAST_RULE = (
    "  - {name: monthly, kind: budget, window: month, limit_usd: 100, forecast: true,"
    " thresholds: [80, 100], severity: {80: warning, 100: critical}}\n"
)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def queue(store: Store, config: Config, points: list[KeyPoint], now: datetime) -> list[OutboxItem]:
    """What a cycle stores: the engine's new states and the planned messages (as
    `cycle.evaluate_rules` does, on usage given here rather than loaded)."""
    usage = UsageIndex(points, key_names=store.api_key_names() or None, history_start=MONTH)
    result = evaluate(config.rules, usage, store.load_alerts(), now, config.tz)
    outbox, notified = plan(
        result,
        {r.name: r for r in config.rules},
        lambda rule: route_for(rule, config),
        store.last_notified(),
        now,
        config.tz,
        repeat_interval=timedelta(hours=4),
        send_resolved=True,
        labels={},
    )
    store.save_alerts(result.states, outbox, notified)
    return outbox


async def send(store: Store, config: Config, clock: FakeClock) -> DeliveryReport:
    return await deliver(store, SlackSender(config), clock, sleep=clock.sleep)


def spend_by(total: str, now: datetime) -> list[KeyPoint]:
    hours = int((now - MONTH) / H)
    return [
        KeyPoint(MONTH + i * H, "k1", "gpt-4o", Decimal(total) / hours, 1, 1) for i in range(hours)
    ]


async def test_a_forecast_come_true_updates_its_thread_in_place(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, bot(slack), FORECAST_RULE)
    store = Store.open(config.state.path)
    queue(store, config, spend_by("70", T0), T0)
    assert (await send(store, config, clock)).sent == 1
    (forecast,) = slack.posts()
    assert "Budget forecast over 100%" in forecast.body["text"]
    parent = store.thread_of("monthly|*|forecast|2026-11")
    assert parent is not None
    later = T0 + timedelta(days=5)
    (item,) = queue(store, config, spend_by("101", later), later)
    assert item.kind == "superseded"
    assert (await send(store, config, clock)).sent == 1
    reply, update = slack.posts()[1:]
    assert reply.path == "/api/chat.postMessage" and reply.body["thread_ts"] == parent[1]
    assert update.path == "/api/chat.update" and update.body["ts"] == parent[1]
    for body in (reply.body, update.body):
        assert body["text"].startswith("[CRITICAL] Budget 100% reached: monthly (forecast came")
    assert not any("RESOLVED" in r.body.get("text", "") for r in slack.posts())
    # the 100 % alert continues the forecast's thread: its follow-ups go there too
    assert store.thread_of("monthly|*|100|2026-11") == parent
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    # (December's own forecast, from November's hours, is a new alert in a new thread)
    queued = queue(store, config, spend_by("101", later), december)
    (ended,) = [i for i in queued if i.alert_ids == ["monthly|*|100|2026-11"]]
    assert ended.kind == "resolved"
    assert (await send(store, config, clock)).sent == len(queued)
    in_thread = [
        p for p in slack.posts()[3:] if parent[1] in (p.body.get("thread_ts"), p.body.get("ts"))
    ]
    reply, update = in_thread
    assert reply.body["thread_ts"] == parent[1] and update.body["ts"] == parent[1]
    assert reply.body["text"].startswith("[PERIOD ENDED] monthly (100%)")
    store.close()


async def test_a_webhook_gets_the_fold_as_one_new_message(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, webhook(slack), FORECAST_RULE)
    store = Store.open(config.state.path)
    queue(store, config, spend_by("70", T0), T0)
    later = T0 + timedelta(days=5)
    queue(store, config, spend_by("101", later), later)
    assert (await send(store, config, clock)).sent == 2
    assert [t.split(":")[0] for t in slack.texts()] == [
        "[CRITICAL] Budget forecast over 100%",
        "[CRITICAL] Budget 100% reached",
    ]
    store.close()


def over(key: str, amount: str, at: datetime) -> list[KeyPoint]:
    return [KeyPoint(bucket_start(at, UTCZ), key, "gpt-4o", Decimal(amount), 1, 1)]


async def test_a_silence_drops_queued_messages_it_covers_and_counts_them(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = Store.open(config.state.path)
    store.replace_key_usage(
        bucket_start(T0, UTCZ),
        bucket_end(T0, UTCZ),
        [KeyUsage("k1", "prod-web", "gpt-4o", 1, Decimal(12))],
        T0,
    )
    queue(store, config, over("k1", "12", T0) + over("k2", "12", T0), T0)
    store.queue(
        [OutboxItem("webhook:default", "digest", [], None, {"text": "d", "blocks": []}, T0)]
    )
    assert store.outbox_pending_count() == 3
    # Slack was down; meanwhile someone silences prod-* (by the key's name)
    store.add_silence("spend-24h", "prod-*", clock(), clock() + timedelta(hours=2), "deploy")
    report = await send(store, config, clock)
    assert (report.sent, report.silenced, report.deferred, report.rejected) == (2, 1, 0, 0)
    assert report.ok and store.outbox_pending_count() == 0
    assert not any("prod-web" in t or "k1 (k1)" in t for t in slack.texts())
    assert "spend-24h|k1|100|rolling-24h" not in store.last_notified()  # never announced
    # the silence ends and the alert still fires: its first message goes out then
    clock.advance(timedelta(hours=2, minutes=1))
    (item,) = queue(store, config, over("k1", "12", T0) + over("k2", "12", T0), clock())
    assert item.kind == "firing" and item.alert_ids == ["spend-24h|k1|100|rolling-24h"]
    assert (await send(store, config, clock)).sent == 1
    assert slack.texts()[-1].startswith("[WARNING] Budget 100% reached: spend-24h")
    store.close()


def test_status_agrees_with_itself_names_keys_marks_silences_and_lists_the_outbox(
    tmp_path: Path,
    slack: FakeSlack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = Store.open(config.state.path)
    for i in range(25):  # the whole 24h window is fetched
        hour = bucket_start(T0, UTCZ) - i * H
        rows = [KeyUsage("k1", "prod-web", "gpt-4o", 1, Decimal(12) if i == 0 else Decimal(0))]
        rows.append(KeyUsage("k2", "batch", "gpt-4o", 1, Decimal("0.1")))
        store.replace_key_usage(hour, hour + H, rows, T0)
    store.add_silence("spend-24h", "prod-*", T0 - H, T0 + H, "deploy")
    store.queue(
        [OutboxItem("webhook:default", "digest", [], None, {"text": "d", "blocks": []}, T0)]
    )
    store.queue(
        [
            OutboxItem(
                "webhook:default",
                "firing",
                ["spend-24h|k1|100|rolling-24h"],
                "spend-24h|k1|100|rolling-24h",
                {"text": "x", "blocks": []},
                T0,
            )
        ]
    )
    store.outbox_retry(1, 2, T0 + timedelta(minutes=3), "webhook answered 503 busy")
    store.close()
    monkeypatch.setattr("daemon.cli.status.utc_now", lambda: T0)
    assert main(["status", "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out
    # nothing was stored by a daemon, yet the budget table and the active alerts agree
    (budget_row,) = [line for line in out.splitlines() if line.startswith("spend-24h    prod")]
    assert "prod-web (k1)" in budget_row and "100% FIRING (silenced)" in budget_row
    (active,) = [line for line in out.splitlines() if line.startswith("FIRING")]
    assert "spend-24h" in active and "prod-web (k1)" in active and active.endswith("silenced")
    lines = out[out.index("Outbox: 2 waiting") :].splitlines()
    assert (
        "digest" in lines[3] and "next try 10:33 (in 3m); last error: webhook answered" in lines[3]
    )
    assert "spend-24h prod-web (k1) 100%" in lines[4]
    assert lines[4].endswith("silenced: will be dropped, not sent")
