"""The real `run` process killed with SIGKILL in the middle of a cycle, then restarted."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from daemon.langdock.simulator import Fault, Simulator
from tests.fake_slack import FakeSlack
from tests.test_daemon_e2e import RULE, SECRET, Notifications, fakes, free_port, start

__all__ = ["fakes"]  # the fixture, imported for pytest


@pytest.mark.long
def test_sigkill_mid_cycle_then_restart_alerts_exactly_once(
    tmp_path: Path, fakes: tuple[Simulator, FakeSlack]
) -> None:
    sim, slack = fakes
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "tiny.yaml").write_text(RULE.format(limit="0.01"))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '${{E2E_KEY}}',"
        " max_requests_per_minute: 250}\n"
        "poll: {interval: 10m, backfill: 2h}\nstate: {path: state.db}\n"
        f"metrics: {{listen: '127.0.0.1:{free_port()}'}}\n"
        f"slack: {{webhook_url: '{slack.url}/services/T/B/kill'}}\n"
        "rule_files: [rules/*.yaml]\n"
    )
    notify = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "daemon.log"
    sim.faults.append(Fault(200, {"success": True}, delay=5.0))  # the first export hangs
    sim.request_seen.clear()
    proc = start(config, notify, log)
    try:
        notify.wait_for("READY=1")
        assert sim.request_seen.wait(30), "the first cycle never asked Langdock"
        proc.send_signal(signal.SIGKILL)  # mid-cycle: a request is in flight
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert slack.received == []

        proc = start(config, notify, log)
        notify.wait_for("READY=1")
        assert "ok: fetched" in notify.wait_for("STATUS=cycle 1")
        assert len(slack.posts()) == 5  # one per key, each exactly once
        assert len({p.body["text"] for p in slack.posts()}) == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert SECRET not in log.read_text()
