"""End to end: the real `langdock-budget run` process against the loopback fakes.

Progress is observed through the systemd notify protocol on a test NOTIFY_SOCKET (READY,
STATUS after every cycle), so the test waits for events, never for time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.langdock.simulator import Simulator
from tests.fake_slack import FakeSlack
from tests.processes import LOCAL, Notifications, free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-e2e-0f9e8d7c6b5a"
RULE = "- {{name: tiny, kind: budget, each: api_key, window: 24h, limit_usd: {limit}}}\n"


@pytest.fixture
def fakes() -> Iterator[tuple[Simulator, FakeSlack]]:
    sim = Simulator(api_key=SECRET)
    sim.start()
    slack = FakeSlack().start()
    yield sim, slack
    slack.stop()
    sim.stop()


def start(config: Path, notify: Notifications, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "E2E_KEY": SECRET}
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "--config", str(config), "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


@pytest.mark.long
def test_run_serves_metrics_reloads_and_stops_cleanly(
    tmp_path: Path, fakes: tuple[Simulator, FakeSlack]
) -> None:
    sim, slack = fakes
    port = free_port()
    rules = tmp_path / "rules" / "tiny.yaml"
    rules.parent.mkdir()
    rules.write_text(RULE.format(limit="0.01"))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '${{E2E_KEY}}',"
        " max_requests_per_minute: 250}\n"
        "timezone: Europe/Berlin\npoll: {interval: 10m, backfill: 2h}\n"
        f"state: {{path: state.db}}\nmetrics: {{listen: '127.0.0.1:{port}'}}\n"
        f"slack: {{webhook_url: '{slack.url}/services/T/B/e2e'}}\n"
        "rule_files: [rules/*.yaml]\n"
    )
    notify = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "daemon.log"
    proc = start(config, notify, log)
    try:
        notify.wait_for("READY=1")
        assert "ok: fetched" in notify.wait_for("STATUS=cycle 1")
        metrics = LOCAL.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'langdock_cost_usd{api_key_id="key_4f1a9c",model=' in metrics
        assert 'langdock_budget_limit_usd{rule="tiny",scope="key_4f1a9c"} 0.01' in metrics
        assert 'langdock_alert_firing{condition="100",rule="tiny"' in metrics
        assert 'langdock_budget_daemon_build_info{version="' in metrics
        assert 'langdock_export_last_success_timestamp_seconds{export="api-keys"}' in metrics
        health = LOCAL.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert len(slack.posts()) == 5  # one per key
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

        # a second start resumes: the alerts are still firing, nothing is sent again
        proc = start(config, notify, log)
        notify.wait_for("READY=1")
        notify.wait_for("STATUS=cycle 1")
        assert len(slack.posts()) == 5

        # SIGHUP with a changed rule: applied, and the alerts resolve
        rules.write_text(RULE.format(limit="1000"))
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("STATUS=config reloaded")
        notify.wait_for("STATUS=cycle 2")
        metrics = LOCAL.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'langdock_budget_limit_usd{rule="tiny",scope="key_4f1a9c"} 1000.0' in metrics
        assert "langdock_alert_firing{" not in metrics
        assert [t.startswith("[RESOLVED] tiny (100%)") for t in slack.texts()[5:]] == [True] * 5

        # an invalid config is refused and the old one kept
        rules.write_text("- {name: broken, kind: budget}\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("STATUS=reload rejected")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert SECRET not in text and "secretpart" not in text
    assert '"event": "reload_rejected"' in text and "rules[0].window: required key" in text
    assert '"cycle": 1' in text  # the cycle id is bound to every line of a cycle
