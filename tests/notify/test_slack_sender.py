"""Issue #14, item 6: a send whose fate is unknown (Slack answers after the client gave up,
the connection drops, a 5xx after posting, a crash mid-send) is not blindly repeated. Bot
token messages carry their outbox row in message metadata and the next attempt looks for it
in the channel (or thread) first; webhooks can't be read back (the window DESIGN.md names).
All against the loopback fake Slack."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.cli.outbox_table import render_outbox
from daemon.config import Config
from daemon.cycle import evaluate_rules
from daemon.notify import EVENT_TYPE, SEND_TIMEOUT, SETTLE, DeliveryReport, SlackSender, deliver
from daemon.store import Store
from tests.conftest import FakeClock, fill_history
from tests.fake_slack import Answer, FakeSlack
from tests.notify.test_deliver import K1_OVER, T0, UTCZ, bot, spend, webhook, world

ALERT = "spend-24h|k1|100|rolling-24h"


@pytest.fixture
def slack(clock: FakeClock) -> Iterator[FakeSlack]:
    fake = FakeSlack(clock=clock).start()  # Slack's clock agrees with ours
    yield fake
    fake.stop()


def queue(store: Store, config: Config, clock: FakeClock) -> None:
    fill_history(store, config, clock())
    evaluate_rules(store, config, clock())


async def send(store: Store, config: Config, clock: FakeClock, timeout: int = 1) -> DeliveryReport:
    return await deliver(store, SlackSender(config, timeout=timeout), clock, sleep=clock.sleep)


def test_the_send_timeout_fits_slack() -> None:
    assert SEND_TIMEOUT >= 20  # Slack may take well over 10 s and still post


async def test_a_bot_message_slack_posts_after_the_timeout_is_not_posted_again(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    slack.script.append(Answer.late())
    report = await send(store, config, clock)
    assert (report.sent, report.deferred) == (0, 1)
    assert clock.sleeps == []  # no blind retry in the same cycle
    slack.release()  # Slack posts it now, after the client gave up
    (item,) = store.outbox_pending()
    assert item.uncertain and item.next_attempt_at == clock() + SETTLE
    waiting = render_outbox(store.outbox_waiting(), UTCZ, clock())
    assert "may have arrived: looked for in Slack before posting again" in waiting
    # it may still be on its way: not looked for before it settled
    report = await send(store, config, clock)
    assert report.waiting == 1 and len(slack.received) == 1
    clock.advance(SETTLE)
    report = await send(store, config, clock)
    assert (report.sent, report.found, report.deferred) == (1, 1, 0)
    assert len(slack.calls("chat.postMessage")) == 1
    assert len(slack.channel_texts("#llm-costs")) == 1
    (look,) = slack.calls("conversations.history")
    assert look.body["channel"] == "C0123" and look.body["include_all_metadata"] == "1"
    assert len(slack.calls("conversations.list")) == 1  # the channel's id, by its name
    (posted,) = slack.calls("chat.postMessage")
    assert posted.body["metadata"]["event_type"] == EVENT_TYPE
    assert posted.body["metadata"]["event_payload"]["outbox_id"] == item.id
    # the message found starts the alert's thread, like a message answered in time
    assert store.thread_of(ALERT) == ("C0123", f"{int(T0.timestamp())}.000100")
    assert store.outbox_pending_count() == 0
    store.close()


async def test_a_bot_message_that_never_arrived_is_posted_once_after_the_look(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    slack.script.append(Answer(drop=True))  # the connection breaks; Slack posted nothing
    assert (await send(store, config, clock)).deferred == 1
    clock.advance(SETTLE)
    report = await send(store, config, clock)
    assert (report.sent, report.found) == (1, 0)
    assert len(slack.channel_texts("#llm-costs")) == 1
    assert len(slack.calls("conversations.history")) == 1
    assert store.outbox_pending() == []
    store.close()


async def test_a_5xx_after_posting_is_found_in_the_same_cycle(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    slack.script.append(Answer(500, {"ok": False, "error": "fatal_error"}, handle=True))
    report = await send(store, config, clock)
    assert (report.sent, report.found) == (1, 1)
    assert clock.sleeps == [1.0]
    assert len(slack.channel_texts("#llm-costs")) == 1
    store.close()


async def test_a_known_channel_id_is_used_without_listing_channels(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), {"k0": "12"})
    queue(store, config, clock)
    assert (await send(store, config, clock)).sent == 1  # Slack names the channel: C0123
    assert store.route_channel("bot:#llm-costs") == "C0123"
    clock.advance(timedelta(minutes=5))
    spend(store, {"k0": "12", "k1": "12"}, clock())
    queue(store, config, clock)
    slack.script.append(Answer(drop=True, handle=True))
    assert (await send(store, config, clock)).deferred == 1
    clock.advance(SETTLE)
    assert (await send(store, config, clock)).found == 1
    assert slack.calls("conversations.list") == []
    assert len(slack.channel_texts("#llm-costs")) == 2
    store.close()


async def test_a_threaded_follow_up_is_looked_for_in_its_thread(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    assert (await send(store, config, clock)).sent == 1
    parent = store.thread_of(ALERT)
    assert parent is not None
    clock.advance(timedelta(hours=25))  # the spend leaves the window: resolved, threaded
    queue(store, config, clock)
    slack.script.append(Answer(drop=True, handle=True))  # the reply is posted, no answer
    assert (await send(store, config, clock)).deferred == 1
    clock.advance(SETTLE)
    report = await send(store, config, clock)
    assert (report.sent, report.found) == (1, 1)
    (look,) = slack.calls("conversations.replies")
    assert look.body["ts"] == parent[1] and look.body["include_all_metadata"] == "1"
    texts = slack.channel_texts("#llm-costs")
    assert len(texts) == 2 and texts[1].startswith("[RESOLVED]")
    (update,) = slack.calls("chat.update")  # the first message shows the current state
    assert update.body["ts"] == parent[1] and "RESOLVED" in update.body["text"]
    store.close()


async def test_a_failed_thread_update_does_not_post_the_reply_again(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    assert (await send(store, config, clock)).sent == 1
    clock.advance(timedelta(hours=25))
    queue(store, config, clock)
    slack.script.extend([Answer(handle=True), Answer(500, {"ok": False, "error": "x"})])
    report = await send(store, config, clock)
    assert (report.sent, report.deferred) == (1, 0)
    assert len(slack.channel_texts("#llm-costs")) == 2
    store.close()


async def test_a_crash_mid_send_is_looked_for_after_the_restart(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    slack.script.append(Answer.late())
    task = asyncio.create_task(send(store, config, clock, timeout=5))
    for _ in range(500):  # until the request is at Slack
        if slack.received:
            break
        await asyncio.sleep(0.01)
    task.cancel()  # the process dies with the request in flight
    with pytest.raises(asyncio.CancelledError):
        await task
    store.close()
    slack.release()  # Slack posts it meanwhile
    restarted = Store.open(config.state.path)
    (item,) = restarted.outbox_pending()
    assert item.uncertain and item.attempts == 0
    assert (await send(restarted, config, clock)).waiting == 1  # not before it settled
    clock.advance(SETTLE)
    report = await send(restarted, config, clock)
    assert (report.sent, report.found) == (1, 1)
    assert len(slack.channel_texts("#llm-costs")) == 1
    restarted.close()


async def test_without_history_scope_an_uncertain_send_is_posted_again(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    queue(store, config, clock)
    slack.scopes.discard("channels:history")
    slack.script.append(Answer(drop=True, handle=True))
    assert (await send(store, config, clock)).deferred == 1
    clock.advance(SETTLE)
    assert (await send(store, config, clock)).sent == 1
    assert len(slack.channel_texts("#llm-costs")) == 2  # the one duplicate, with a warning
    err = capsys.readouterr().err
    assert "slack_send_unverifiable" in err and "channels:history" in err
    store.close()


async def test_a_webhook_that_answered_too_late_is_posted_again_once(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    """The window that remains (DESIGN.md): a webhook can't be read back."""
    config, store = world(tmp_path, webhook(slack), K1_OVER)
    queue(store, config, clock)
    slack.script.append(Answer.late())
    assert (await send(store, config, clock)).deferred == 1
    slack.release()
    shown = render_outbox(store.outbox_waiting(), UTCZ, clock())
    assert "may have arrived (a webhook can't be checked: posted again)" in shown
    clock.advance(SETTLE)
    assert (await send(store, config, clock)).sent == 1
    assert len(slack.posts()) == 2
    store.close()


async def test_a_refused_connection_is_certain_and_retried_in_the_cycle(
    tmp_path: Path, clock: FakeClock
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config, store = world(tmp_path, f"  webhook_url: http://127.0.0.1:{port}/services/x\n")
    spend(store, K1_OVER, T0)
    queue(store, config, clock)
    report = await send(store, config, clock)
    assert report.deferred == 1 and clock.sleeps == [1.0, 2.0]
    (item,) = store.outbox_pending()
    assert not item.uncertain and item.next_attempt_at is not None
    assert item.next_attempt_at <= clock()  # due again next cycle
    assert item.last_error is not None and "connection failed" in item.last_error
    store.close()
