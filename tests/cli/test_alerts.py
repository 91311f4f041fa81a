"""`rules export-prometheus`: the budget rules as Prometheus alerting rules."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from daemon.cli.app import main
from daemon.prometheus_rules import prometheus_rules
from tests.fake_slack import FakeSlack
from tests.notify.test_deliver import BUDGET_24H, make_config, webhook


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


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
