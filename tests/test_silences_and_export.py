"""Silences (Slack quiet, state tracked) and the Prometheus rule export."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from daemon.cli import main
from daemon.config import Config
from daemon.cycle import evaluate_rules
from daemon.notify import SlackSender, deliver
from daemon.prometheus_rules import prometheus_rules
from daemon.store import Store
from tests.conftest import FakeClock, fill_history
from tests.fake_slack import FakeSlack
from tests.test_notify import BUDGET_24H, T0, make_config, spend, webhook


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
    store = Store.open(config.state.path)
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


def test_prometheus_rule_export(
    tmp_path: Path, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = BUDGET_24H + (
        "  - {name: prod-monthly, kind: budget, window: month, limit_usd: 500,"
        " thresholds: [80, 100], severity: {80: warning, 100: critical}, forecast: true,"
        " for: 10m}\n"
        "  - {name: spike, kind: anomaly, metric: cost_usd}\n"
    )
    make_config(tmp_path, webhook(slack), rules)
    assert main(["rules", "export-prometheus", "--config", str(tmp_path / "config.yaml")]) == 0
    exported = capsys.readouterr().out
    if shutil.which("promtool"):  # the real check, where Prometheus' tool is installed
        (tmp_path / "rules.yml").write_text(exported)
        checked = subprocess.run(
            ["promtool", "check", "rules", str(tmp_path / "rules.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS: 4 rules found" in checked.stdout
    data = yaml.safe_load(exported)
    (group,) = data["groups"]
    alerts = {a["alert"]: a for a in group["rules"]}
    assert set(alerts) == {
        "LangdockBudgetSpend24h100Percent",
        "LangdockBudgetProdMonthly80Percent",
        "LangdockBudgetProdMonthly100Percent",
        "LangdockBudgetProdMonthlyForecast",
    }
    eighty = alerts["LangdockBudgetProdMonthly80Percent"]
    assert eighty["expr"] == 'langdock_budget_utilization_ratio{rule="prod-monthly"} >= 0.8'
    assert eighty["for"] == "10m" and eighty["labels"]["severity"] == "warning"
    for alert in group["rules"]:  # the shape promtool expects
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}
        assert (
            isinstance(alert["expr"], str)
            and "{{ $labels.scope }}" in alert["annotations"]["summary"]
        )
    assert prometheus_rules([])["groups"][0]["rules"] == []
