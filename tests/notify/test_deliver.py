"""Slack delivery against the loopback fake Slack: content, escaping, grouping, threads,
retries, outages, crashes and restarts."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.cli import main
from daemon.config import Config, load_config
from daemon.cycle import evaluate_rules
from daemon.langdock.csv import KeyUsage
from daemon.notify import ConsoleSender, SlackSender, deliver
from daemon.notify.slack.blocks import (
    budget_message,
    escape,
    name,
    resolved_message,
    summary_line,
)
from daemon.rules.budget import evaluate_budget
from daemon.rules.engine import evaluate
from daemon.rules.windows import bucket_end, bucket_start
from daemon.store import Store
from tests.conftest import FakeClock, fill_history, store_with_history
from tests.fake_slack import Answer, FakeSlack
from tests.rules.helpers import budget, hourly, index

T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
UTCZ = ZoneInfo("UTC")
HOSTILE = "<!channel> *bold* <@U123> & \u202eevil\u202c\nline"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def make_config(tmp_path: Path, slack_yaml: str, rules_yaml: str) -> Config:
    (tmp_path / "config.yaml").write_text(
        "langdock: {api_key: sk-x}\ntimezone: UTC\nstate: {path: state.db}\n"
        f"slack:\n{slack_yaml}\nrules:\n{rules_yaml}\n"
    )
    return load_config(tmp_path / "config.yaml", {})


def webhook(slack: FakeSlack, extra: str = "") -> str:
    return f"  webhook_url: {slack.url}/services/T0/B0/secretpart\n{extra}"


def bot(slack: FakeSlack, token: str = "xoxb-test-token", extra: str = "") -> str:
    return f"  token: {token}\n  channel: '#llm-costs'\n  api_url: {slack.url}/api/\n{extra}"


BUDGET_24H = "  - {name: spend-24h, kind: budget, each: api_key, window: 24h, limit_usd: 10}\n"


def spend(
    store: Store, amounts: dict[str, str], at: datetime, names: dict[str, str] | None = None
) -> None:
    """Store one bucket (the one holding ``at``) with these keys' spend; it replaces the bucket."""
    names = names or {}
    rows = [KeyUsage(k, names.get(k, k), "gpt-4o", 1, Decimal(v)) for k, v in amounts.items()]
    store.replace_key_usage(bucket_start(at, UTCZ), bucket_end(at, UTCZ), rows, at)


K1_OVER = {"k1": "12"}  # over the $10 of BUDGET_24H


def world(
    tmp_path: Path, slack_yaml: str, amounts: dict[str, str] | None = None
) -> tuple[Config, Store]:
    """The config with BUDGET_24H, its open store (its history filled at T0), and optionally
    some spend at T0."""
    config = make_config(tmp_path, slack_yaml, BUDGET_24H)
    store = store_with_history(config, T0)
    if amounts:
        spend(store, amounts, T0)
    return config, store


async def cycle(store: Store, config: Config, clock: FakeClock) -> tuple[int, int, int]:
    fill_history(store, config, clock())
    evaluate_rules(store, config, clock())
    report = await deliver(store, SlackSender(config), clock, sleep=clock.sleep)
    return report.sent, report.deferred, report.rejected


def test_budget_message_names_everything_people_need() -> None:
    rule = budget(window="month", limit_usd=1000, thresholds=[80], forecast=True)
    usage = index(hourly(datetime(2026, 11, 1, tzinfo=UTC), T0, lambda _: "2.0001"))
    (ev,) = evaluate_budget(rule, usage, T0, ZoneInfo("Europe/Berlin"))
    result = evaluate([rule], usage, {}, T0, ZoneInfo("Europe/Berlin"))
    message = budget_message(ev, result.firing[0], ZoneInfo("Europe/Berlin"))
    assert "$934.05 of $1,000.00 (93.4%)" in message.text
    assert "month 2026-11 (Nov 01 – Nov 30 2026, Europe/Berlin)" in message.text
    fields = json.dumps(message.blocks)
    for part in ("Budget 80% reached", "`workspace`", "Forecast", "by period end", "warning"):
        assert part in fields, part
    assert message.blocks[0]["type"] == "header"


def test_hostile_names_render_literally() -> None:
    assert escape("<!here> & <@U1>") == "&lt;!here&gt; &amp; &lt;@U1&gt;"
    shown = name(HOSTILE)
    assert shown.startswith("`") and "<" not in shown and "\u202e" not in shown
    assert "\n" not in shown and "*bold*" in shown  # inside code: not bold
    assert len(name("x" * 500)) < 90


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("*bold* (k1)", "`*bold* (k1)`"),
        ("_x_ (k1)", "`_x_ (k1)`"),
        ("~gone~ <!here> (k1)", "`~gone~ &lt;!here&gt; (k1)`"),
        ("prod_web (key_4f1a)", "prod_web (key_4f1a)"),  # nothing Slack would format
        ("2*3*4 (k1)", "2*3*4 (k1)"),
    ],
)
def test_names_in_the_fallback_text_show_literally_too(label: str, shown: str) -> None:
    rule = budget(window="month", limit_usd=10)
    usage = index(hourly(datetime(2026, 11, 1, tzinfo=UTC), T0, lambda _: "1"))
    (ev,) = evaluate_budget(rule, usage, T0, UTCZ)
    ev = replace(ev, member=replace(ev.member, label=label))
    (state,) = evaluate([rule], usage, {}, T0, UTCZ).firing
    assert f" — {shown}: " in budget_message(ev, state, UTCZ).text
    assert f" — {shown}: " in resolved_message(state, label, "condition cleared", UTCZ, ev).text
    assert summary_line(budget_message(ev, state, UTCZ)).count(shown) == 1


async def test_firing_and_resolved_through_a_webhook(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack))
    spend(store, {"k1": "12"}, T0, names={"k1": HOSTILE})
    assert await cycle(store, config, clock) == (1, 0, 0)
    (firing,) = slack.posts()
    assert firing.path == "/services/T0/B0/secretpart"
    assert "[WARNING] Budget 100% reached: spend-24h" in firing.body["text"]
    raw = json.dumps(firing.body)
    assert "<!channel>" not in raw and "&lt;!channel&gt;" in raw and "<@U123>" not in raw
    clock.advance(timedelta(hours=25))  # the spend leaves the rolling window
    assert await cycle(store, config, clock) == (1, 0, 0)
    assert slack.texts()[1].startswith("[RESOLVED] spend-24h (100%)")
    assert await cycle(store, config, clock) == (0, 0, 0)
    store.close()


async def test_many_alerts_of_one_cycle_are_one_message(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack))
    spend(store, {f"key{i:02d}": "11" for i in range(40)}, T0)
    assert await cycle(store, config, clock) == (1, 0, 0)
    (message,) = slack.posts()
    assert message.body["text"].startswith("40 alert changes")
    listed = json.dumps(message.body["blocks"])
    assert all(f"key{i:02d}" in listed for i in range(40))
    store.close()


async def test_bot_follow_ups_go_into_the_thread(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack), K1_OVER)
    assert await cycle(store, config, clock) == (1, 0, 0)
    first = slack.posts()[0]
    assert first.path == "/api/chat.postMessage" and first.body["channel"] == "#llm-costs"
    assert first.headers["authorization"] == "Bearer xoxb-test-token"
    clock.advance(timedelta(hours=25))
    assert await cycle(store, config, clock) == (1, 0, 0)
    reply, update = slack.posts()[1:]
    assert reply.body["thread_ts"] == "1700000001.000100" and reply.body["channel"] == "C0123"
    assert update.path == "/api/chat.update" and update.body["ts"] == "1700000001.000100"
    assert "RESOLVED" in update.body["text"]
    store.close()


async def test_rate_limit_with_retry_after_then_success(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack), K1_OVER)
    slack.script.append(Answer(429, "rate_limited", {"Retry-After": "7"}))
    assert await cycle(store, config, clock) == (1, 0, 0)
    assert clock.sleeps == [7.0]
    assert len(slack.posts()) == 1 and len(slack.received) == 2
    store.close()


async def test_slack_down_for_cycles_then_back_delivers_each_once_in_order(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, bot(slack))
    slack.script.extend(Answer(500, {"ok": False, "error": "fatal_error"}) for _ in range(9))
    for i in range(3):  # three cycles, one new alert each, Slack failing throughout
        spend(store, {f"k{j}": "12" for j in range(i + 1)}, clock())
        assert await cycle(store, config, clock) == (0, i + 1, 0)
        clock.advance(timedelta(minutes=5))
    assert store.outbox_pending_count() == 3
    assert await cycle(store, config, clock) == (3, 0, 0)
    assert [t.split("— ")[1].split(":")[0] for t in slack.texts()] == [
        "k0 (k0)",
        "k1 (k1)",
        "k2 (k2)",
    ]
    assert await cycle(store, config, clock) == (0, 0, 0)
    store.close()


async def test_crash_between_saving_state_and_sending_delivers_once(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack), K1_OVER)
    fill_history(store, config, clock())
    evaluate_rules(store, config, clock())  # state and outbox saved...
    store.close()  # ...and the process dies before sending
    restarted = Store.open(config.state.path)
    assert await cycle(restarted, config, clock) == (1, 0, 0)
    assert await cycle(restarted, config, clock) == (0, 0, 0)
    assert len(slack.posts()) == 1
    restarted.close()


async def test_restart_does_not_resend_before_repeat_interval(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(
        tmp_path,
        webhook(slack, "  repeat_interval: 4h\n"),
        "  - {name: monthly, kind: budget, window: month, limit_usd: 10}\n",
    )
    store = store_with_history(config, T0)
    spend(store, {"k1": "12"}, T0)
    assert await cycle(store, config, clock) == (1, 0, 0)
    store.close()
    store = Store.open(config.state.path)
    clock.advance(timedelta(hours=1))
    assert await cycle(store, config, clock) == (0, 0, 0)
    clock.advance(timedelta(hours=3))
    assert await cycle(store, config, clock) == (1, 0, 0)
    assert slack.texts()[1].startswith("[WARNING] Still firing: Budget 100% reached: monthly")
    store.close()


async def test_invalid_auth_is_rejected_not_retried(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    config, store = world(tmp_path, bot(slack, token="xoxb-wrong"), K1_OVER)
    assert await cycle(store, config, clock) == (0, 0, 1)
    assert len(slack.received) == 1
    assert await cycle(store, config, clock) == (0, 0, 0)
    assert len(slack.received) == 1 and store.outbox_pending_count() == 0
    assert "xoxb-wrong" not in capsys.readouterr().err
    store.close()


async def test_deleted_webhook_is_rejected(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config, store = world(tmp_path, webhook(slack), K1_OVER)
    slack.script.append(Answer(404, "no_service"))
    assert await cycle(store, config, clock) == (0, 0, 1)
    store.close()


async def test_send_resolved_false_and_rule_routes(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    rules = (
        BUDGET_24H + "  - {name: team, kind: budget, window: 24h, limit_usd: 1,"
        f" webhook_url: '{slack.url}/services/TEAM', mention: '<!subteam^S1>'}}\n"
    )
    config = make_config(tmp_path, webhook(slack, "  send_resolved: false\n"), rules)
    store = store_with_history(config, T0)
    spend(store, {"k1": "12"}, T0)
    assert await cycle(store, config, clock) == (2, 0, 0)
    paths = sorted(p.path for p in slack.posts())
    assert paths == ["/services/T0/B0/secretpart", "/services/TEAM"]
    team = next(p for p in slack.posts() if p.path == "/services/TEAM")
    assert team.body["text"].startswith("<!subteam^S1> ")
    clock.advance(timedelta(hours=25))
    assert await cycle(store, config, clock) == (0, 0, 0)  # resolved, but not announced
    store.close()


def test_console_sender_prints_readable_or_json() -> None:
    payload = {
        "text": "t",
        "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "Hi"}}],
    }
    out = io.StringIO()
    ConsoleSender(out).send("console", payload, None)
    assert "│ Hi" in out.getvalue()
    out = io.StringIO()
    ConsoleSender(out, as_json=True).send("console", payload, None)
    assert json.loads(out.getvalue()) == payload


def test_test_alert_command(
    tmp_path: Path, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
) -> None:
    make_config(tmp_path, bot(slack), BUDGET_24H)
    assert main(["test-alert", "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.startswith("bot:#llm-costs: [") for line in out)
    assert all("ok (ts 17000000" in line for line in out)
    make_config(tmp_path, bot(slack, token="xoxb-bad"), BUDGET_24H)
    assert main(["test-alert", "--config", str(tmp_path / "config.yaml")]) == 1
    assert "FAILED: invalid_auth: the bot token is invalid" in capsys.readouterr().out
