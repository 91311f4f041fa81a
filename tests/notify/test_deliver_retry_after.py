"""Issue #14, item 7: Slack's ``Retry-After`` is honoured whatever its length, across cycles
and restarts (it is stored with the outbox row), holds the route's later messages too, and
`status` shows the wait. Against the loopback fake Slack."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.cli.outbox_table import render_outbox
from daemon.notify import MAX_WAIT, DeliveryReport, SlackSender, deliver
from daemon.store import OutboxItem, Store
from tests.conftest import FakeClock
from tests.fake_slack import Answer, FakeSlack
from tests.notify.test_deliver import (
    BUDGET_24H,
    T0,
    UTCZ,
    bot,
    make_config,
    spend,
    webhook,
    world,
)
from tests.notify.test_slack_sender import queue

HOUR = 3600


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[FakeSlack]:
    fake = FakeSlack(clock=clock).start()
    yield fake
    fake.stop()


async def send(store: Store, sender: SlackSender, clock: FakeClock) -> DeliveryReport:
    return await deliver(store, sender, clock, sleep=clock.sleep)


async def test_an_hour_long_retry_after_holds_across_cycles_and_restarts(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack), {"k1": "12"})
    sender = SlackSender(config)
    queue(store, config, clock)
    slack.script.append(Answer(429, "rate_limited", {"Retry-After": str(HOUR)}))
    report = await send(store, sender, clock)
    assert (report.sent, report.deferred) == (0, 1)
    assert clock.sleeps == []  # not slept in the cycle (and not cut to 30 s)
    assert report.next_attempt == T0 + timedelta(seconds=HOUR)
    (item,) = store.outbox_pending()
    assert item.next_attempt_at == T0 + timedelta(seconds=HOUR)
    assert item.last_error == "webhook answered 429 rate_limited (Retry-After: 3600 s)"
    assert store.outbox_next_attempt() == T0 + timedelta(seconds=HOUR)
    # a later message to the same route waits behind it (order kept, Slack not hammered)
    clock.advance(timedelta(minutes=5))
    spend(store, {"k1": "12", "k2": "12"}, clock())
    queue(store, config, clock)
    report = await send(store, sender, clock)
    assert (report.sent, report.waiting, report.deferred) == (0, 2, 0)
    assert report.ok and len(slack.received) == 1
    shown = render_outbox(store.outbox_waiting(), UTCZ, clock())
    assert shown.startswith("Outbox: 2 waiting, next try 11:30 (in 55m)")
    assert "next try 11:30 (in 55m); last error: webhook answered 429" in shown
    assert shown.endswith("behind an earlier message of its route: next try 11:30 (in 55m)")
    store.close()
    # a restart does not forget it
    clock.advance(timedelta(minutes=54))
    store = Store.open(config.state.path)
    assert (await send(store, SlackSender(config), clock)).waiting == 2
    assert len(slack.received) == 1
    clock.advance(timedelta(minutes=1))
    report = await send(store, SlackSender(config), clock)
    assert (report.sent, report.waiting) == (2, 0) and report.next_attempt is None
    assert [t.split("— ")[1].split(":")[0] for t in slack.texts()] == ["k1 (k1)", "k2 (k2)"]
    store.close()


async def test_a_wait_left_after_the_last_try_is_kept(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack), {"k1": "12"})
    sender = SlackSender(config)
    queue(store, config, clock)
    slack.script.extend(Answer(429, "rate_limited", {"Retry-After": "7"}) for _ in range(3))
    assert (await send(store, sender, clock)).deferred == 1
    assert clock.sleeps == [7.0, 7.0]
    waited_until = clock() + timedelta(seconds=7)
    assert store.outbox_next_attempt() == waited_until
    assert (await send(store, sender, clock)).waiting == 1  # the next `once` does not rush
    clock.now = waited_until
    assert (await send(store, sender, clock)).sent == 1
    store.close()


async def test_a_bot_route_rate_limit_is_stored_too(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), {"k1": "12"})
    queue(store, config, clock)
    wait = MAX_WAIT * 4
    slack.script.append(
        Answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": f"{wait:g}"})
    )
    report = await send(store, SlackSender(config), clock)
    assert report.deferred == 1 and clock.sleeps == []
    (item,) = store.outbox_pending()
    assert not item.uncertain  # a 429 posted nothing: no need to look before posting
    assert item.next_attempt_at == clock() + timedelta(seconds=wait)
    store.close()


def test_status_shows_the_wait(
    tmp_path: Path,
    slack: FakeSlack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store.open(make_config(tmp_path, webhook(slack), BUDGET_24H).state.path)
    store.queue([OutboxItem("webhook:default", "digest", [], None, {"text": "d"}, T0)])
    store.outbox_retry(1, 1, T0 + timedelta(days=1, hours=2), "webhook answered 429 (x)")
    store.close()
    monkeypatch.setattr("daemon.cli.status.utc_now", lambda: T0)
    assert main(["status", "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Outbox: 1 waiting, next try 2026-11-21 12:30 (in 1d2h)" in out
