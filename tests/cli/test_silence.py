"""Silences (Slack quiet, state tracked) and the `silence` commands."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.cli.app import main
from daemon.cli.silence import unmatched_member
from daemon.config import Config
from daemon.cycle import evaluate_rules
from daemon.notify import SlackSender, deliver
from daemon.store import Store
from tests.conftest import FakeClock, fill_history, store_with_history
from tests.fake_slack import FakeSlack
from tests.notify.test_deliver import BUDGET_24H, T0, make_config, spend, webhook


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


async def cycle(store: Store, config: Config, clock: FakeClock) -> int:
    fill_history(store, config, clock())
    result = evaluate_rules(store, config, clock())
    assert result.states  # the state is tracked whether or not Slack hears of it
    return (await deliver(store, SlackSender(config), clock, sleep=clock.sleep)).sent


async def test_a_silenced_alert_is_tracked_but_quiet_until_the_silence_ends(
    tmp_path: Path, slack: FakeSlack, clock: FakeClock
) -> None:
    config = make_config(tmp_path, webhook(slack), BUDGET_24H)
    store = store_with_history(config, T0)
    spend(store, {"k1": "12", "k2": "12"}, T0, names={"k1": "prod-web", "k2": "batch"})
    store.add_silence("spend-24h", "prod-*", clock(), clock() + timedelta(hours=2), "deploy")
    assert await cycle(store, config, clock) == 1  # only k2 (batch)
    assert "batch" in slack.texts()[0]
    clock.advance(timedelta(hours=1))
    assert await cycle(store, config, clock) == 0
    clock.advance(timedelta(hours=1, minutes=1))  # the silence is over, k1 still fires
    assert await cycle(store, config, clock) == 1
    assert "Budget 100% reached: spend-24h — prod-web" in slack.texts()[1]
    store.close()


def test_silence_commands(
    tmp_path: Path, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
) -> None:
    make_config(tmp_path, webhook(slack), BUDGET_24H)
    cfg = str(tmp_path / "config.yaml")
    assert (
        main(
            [
                "silence",
                "add",
                "--config",
                cfg,
                "--rule",
                "spend-24h",
                "--member",
                "prod-*",
                "--for",
                "24h",
                "--reason",
                "planned load test",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("silence 1: spend-24h / prod-* until ")
    assert main(["silence", "list", "--config", cfg]) == 0
    listing = capsys.readouterr().out
    assert "planned load test" in listing and "prod-*" in listing
    assert main(["status", "--config", cfg]) == 0
    assert "planned load test" in capsys.readouterr().out
    assert main(["silence", "expire", "--config", cfg, "1"]) == 0
    assert main(["silence", "list", "--config", cfg]) == 0
    assert "Silences: none" in capsys.readouterr().out
    assert main(["silence", "expire", "--config", cfg, "1"]) == 1
    assert (
        main(["silence", "add", "--config", cfg, "--rule", "nope", "--for", "1h", "--reason", "x"])
        == 2
    )
    assert "no rule named 'nope'" in capsys.readouterr().err


def test_silence_add_warns_when_the_member_matches_nothing_seen(
    live_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = live_config
    path.write_text(
        path.read_text() + "rules:\n  - {name: tiny, kind: budget, each: api_key, window: 24h,"
        " limit_usd: 0.01}\n"
    )
    assert main(["once", "--config", str(path), "--dry-run"]) == 0
    capsys.readouterr()
    add = ["silence", "add", "--config", str(path), "--rule", "tiny", "--for", "1h"]
    add += ["--reason", "a load test"]
    for glob in ("prod-*", "key_4f1a*"):  # a key name, a key id: no warning
        assert main([*add, "--member", glob]) == 0
        assert "warning" not in capsys.readouterr().err
    assert main([*add, "--member", "prd-*"]) == 0  # a typo: still created, with a warning
    captured = capsys.readouterr()
    assert captured.out.startswith("silence 3: tiny / prd-* until ")
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "'prd-*' matches no API key (by id or name) of the 5 seen so far" in warning
    assert main([*add, "--member", "claude-*"]) == 0  # a model, but the rule is per key
    assert "matches no API key" in capsys.readouterr().err
    store = Store.open(path.parent / "state.db")
    try:
        assert [s.member for s in store.silences(datetime.now(UTC))] == [
            "prod-*",
            "key_4f1a*",
            "prd-*",
            "claude-*",
        ]
    finally:
        store.close()


def test_unmatched_member_matches_like_silences_do() -> None:
    keys, models = {"key_1": "prod-web"}, ["gpt-4o"]
    assert unmatched_member("gpt-*", None, keys, models) is None
    assert unmatched_member("prod-*", "api_key", keys, models) is None
    assert unmatched_member("key_?", "api_key", keys, models) is None
    assert unmatched_member("Prod-*", None, keys, models) is not None  # case-sensitive
    warning = unmatched_member("gpt-*", "api_key", keys, models)
    assert warning is not None and "model" not in warning.split(";")[0]
    warning = unmatched_member("x*", None, {}, [])
    assert warning is not None
    assert "no API key (by id or name) of the 0 seen or model of the 0 seen so far" in warning
