"""Issue #14: a message Slack refuses for good is not silently dropped. It stays as a dead
letter (shown in `status`, counted for `langdock_outbox_dead_letters`) and goes out again
once the config changes its route: the rule's channel or webhook moves, or the same route
gets a new webhook URL, token or API URL. Against the loopback fake Slack."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.cli.outbox_table import render_outbox
from daemon.config import Config
from daemon.notify import DeliveryReport, SlackSender, deliver, requeue_dead_letters
from daemon.notify.routes import current_route, route_target
from daemon.store import OutboxItem, Store
from tests.conftest import FakeClock, store_with_history
from tests.fake_slack import Answer, FakeSlack
from tests.notify.test_deliver import (
    BUDGET_24H,
    K1_OVER,
    T0,
    UTCZ,
    bot,
    make_config,
    spend,
    webhook,
)
from tests.notify.test_slack_sender import queue

TEAM_RULE = "  - {name: team, kind: budget, window: 24h, limit_usd: 10, channel: '%s'}\n"


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[FakeSlack]:
    fake = FakeSlack(clock=clock).start()
    yield fake
    fake.stop()


async def send(store: Store, config: Config, clock: FakeClock) -> DeliveryReport:
    return await deliver(store, SlackSender(config), clock, sleep=clock.sleep)


async def test_a_refused_message_waits_as_a_dead_letter_until_its_channel_is_fixed(
    tmp_path: Path,
    slack: FakeSlack,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path, bot(slack), TEAM_RULE % "#missing")
    store = store_with_history(config, T0)
    spend(store, K1_OVER, T0)
    queue(store, config, clock)
    report = await send(store, config, clock)
    assert (report.sent, report.rejected) == (0, 1)
    assert store.outbox_dead_letter_count() == 1 and store.outbox_pending_count() == 0
    (dead,) = store.outbox_dead_letters()
    assert dead.target == route_target("bot:#missing", config)
    # not retried while nothing changed, however often the outbox runs
    clock.advance(timedelta(minutes=5))
    assert (await send(store, config, clock)) == DeliveryReport()
    assert len(slack.received) == 1
    store.close()
    monkeypatch.setattr("daemon.cli.status.utc_now", clock)
    assert main(["status", "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Outbox: empty" in out and "Dead letters: 1 (Slack refused them for good" in out
    (row,) = [line for line in out.splitlines() if line.startswith("2026-11-20 10:30")]
    assert "bot:#missing" in row and "team workspace 100%" in row and "channel_not_found" in row
    # the operator points the rule at a channel that exists and reloads
    fixed = make_config(tmp_path, bot(slack), TEAM_RULE % "#team-costs")
    store = Store.open(config.state.path)
    report = await send(store, fixed, clock)
    assert (report.requeued, report.sent) == (1, 1)
    assert store.outbox_dead_letter_count() == 0
    assert slack.channel_texts("#team-costs")[0].startswith("[WARNING] Budget 100% reached: team")
    store.close()


async def test_a_deleted_webhook_replaced_in_the_config_gets_the_message(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = store_with_history(config, T0)
    spend(store, K1_OVER, T0)
    queue(store, config, clock)
    slack.script.append(Answer(404, "no_service"))
    assert (await send(store, config, clock)).rejected == 1
    # a reload with the same config sends nothing
    assert (await send(store, config, clock)).requeued == 0
    # same route name (webhook:default), a new URL: its target changed
    new_url = f"  webhook_url: {slack.url}/services/T0/B1/newsecret\n"
    fixed = make_config(tmp_path, new_url, BUDGET_24H)
    assert current_route(store.outbox_dead_letters()[0], fixed) == "webhook:default"
    report = await send(store, fixed, clock)
    assert (report.requeued, report.sent) == (1, 1)
    assert slack.posts()[-1].path == "/services/T0/B1/newsecret"
    store.close()


async def test_a_bug_refusal_stays_dead_and_is_not_resent_in_a_loop(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = store_with_history(config, T0)
    spend(store, K1_OVER, T0)
    queue(store, config, clock)
    slack.script.append(Answer(400, "invalid_payload"))
    assert (await send(store, config, clock)).rejected == 1
    (dead,) = store.outbox_dead_letters()
    assert dead.last_error is not None and dead.last_error.startswith("webhook answered 400")
    for _ in range(3):
        assert (await send(store, config, clock)).requeued == 0
    assert len(slack.received) == 1
    store.close()


async def test_a_token_change_requeues_and_a_refusal_again_makes_it_dead_again(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, bot(slack, token="xoxb-revoked"), BUDGET_24H)
    store = store_with_history(config, T0)
    spend(store, K1_OVER, T0)
    queue(store, config, clock)
    assert (await send(store, config, clock)).rejected == 1
    still_wrong = make_config(tmp_path, bot(slack, token="xoxb-also-wrong"), BUDGET_24H)
    report = await send(store, still_wrong, clock)
    assert (report.requeued, report.rejected) == (1, 1)  # tried once, dead again
    report = await send(store, still_wrong, clock)
    assert (report.requeued, report.rejected) == (0, 0)
    fixed = make_config(tmp_path, bot(slack), BUDGET_24H)
    assert (await send(store, fixed, clock)).sent == 1
    store.close()


def test_legacy_dead_letters_go_out_only_on_a_new_route_or_on_request(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """Rows refused before fingerprints were kept: their old target is unknown."""
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = Store.open(config.state.path)
    payload = {"text": "d", "blocks": []}
    store.queue([OutboxItem("webhook:default", "digest", [], None, payload, T0)])
    store.outbox_reject(1, "webhook answered 404 no_service")  # no target: a legacy row
    sender = SlackSender(config)
    assert requeue_dead_letters(store, sender) == 0
    assert requeue_dead_letters(store, sender, everything=True) == 1
    assert store.outbox_pending_count() == 1 and store.outbox_dead_letter_count() == 0
    store.outbox_reject(1, "again")
    moved = SlackSender(make_config(tmp_path, bot(slack), BUDGET_24H))
    assert requeue_dead_letters(store, moved) == 1
    assert [i.route for i in store.outbox_pending()] == ["bot:#llm-costs"]
    store.close()


def test_status_lists_pending_messages_and_dead_letters_apart() -> None:
    payload = {"text": "d", "blocks": []}
    pending = OutboxItem("webhook:default", "digest", [], None, payload, T0, id=2)
    dead = OutboxItem(
        "bot:#gone",
        "firing",
        ["r|k1|100|p"],
        "r|k1|100|p",
        payload,
        T0,
        id=1,
        dead=True,
        last_error="channel_not_found: the channel does not exist",
    )
    shown = render_outbox([(pending, T0, None), (dead, T0, dead.last_error)], UTCZ, T0)
    lines = shown.splitlines()
    assert lines[0] == "Outbox: 1 waiting" and "digest" in lines[3]
    assert lines[5].startswith("Dead letters: 1")
    assert "bot:#gone" in lines[8] and lines[8].endswith("the channel does not exist")
    only_dead = render_outbox([(dead, T0, dead.last_error)], UTCZ, T0)
    assert only_dead.startswith("Outbox: empty\n\nDead letters: 1")
