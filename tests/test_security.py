"""Secrets stay secret: logs at every level, command output, Slack payloads, the store, the
config file; and hostile names can't ping anyone."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.langdock.simulator import Fault, Simulator
from tests.fake_slack import Answer, FakeSlack

API_KEY = "sk-sec-1a2b3c4d5e6f"
WEBHOOK_SECRET = "whsec9f8e7d6c"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Simulator, FakeSlack, Path]]:
    sim = Simulator(api_key=API_KEY)
    sim.start()
    slack = FakeSlack().start()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"langdock: {{base_url: '{sim.base_url}', api_key: '${{SEC_KEY}}',"
        " max_requests_per_minute: 250, max_retries: 0}\n"
        "poll: {backfill: 2h}\nstate: {path: state.db}\n"
        f"slack: {{webhook_url: '${{SEC_HOOK}}'}}\n"
        "rules: [{name: tiny, kind: budget, each: api_key, window: 24h, limit_usd: 0.01}]\n"
    )
    os.environ["SEC_KEY"] = API_KEY
    os.environ["SEC_HOOK"] = f"{slack.url}/services/T/B/{WEBHOOK_SECRET}"
    yield sim, slack, config
    os.environ.pop("SEC_KEY")
    os.environ.pop("SEC_HOOK")
    slack.stop()
    sim.stop()


def assert_clean(text: str) -> None:
    assert API_KEY not in text and WEBHOOK_SECRET not in text


def test_no_secret_in_any_output(
    world: tuple[Simulator, FakeSlack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sim, slack, config = world
    slack.script.append(Answer(404, "no_service"))  # one message refused
    assert main(["--log-level", "debug", "once", "--config", str(config)]) == 1
    once = capsys.readouterr()
    assert_clean(once.out + once.err)
    assert "notification_rejected" in once.err  # the failure is logged, without the URL
    assert main(["status", "--config", str(config)]) == 0
    assert main(["check", "--config", str(config)]) == 0
    assert main(["test-alert", "--config", str(config)]) == 0
    later = capsys.readouterr()
    assert_clean(later.out + later.err)
    for received in slack.received:
        assert_clean(json.dumps(received.body))
    # the store holds routes by name, never the webhook URL or the key
    assert_clean((config.parent / "state.db").read_bytes().decode("latin-1"))
    # and Langdock got the key only on the API, never on a download
    downloads = [r for r in sim.seen if r.method == "GET"]
    assert downloads and all("authorization" not in r.headers for r in downloads)


def test_wrong_key_failure_names_the_fix_not_the_key(
    world: tuple[Simulator, FakeSlack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, config = world
    os.environ["SEC_KEY"] = "sk-wrong-0000aaaa"
    assert main(["--log-level", "debug", "once", "--config", str(config)]) == 1
    out = capsys.readouterr()
    assert "USAGE_EXPORT_API" in out.out
    assert "sk-wrong-0000aaaa" not in out.out + out.err


def test_world_readable_config_with_an_inline_secret_warns(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("langdock: {api_key: sk-inline-123456}\n")
    path.chmod(0o644)
    (warning,) = load_config(path, {}).warnings
    assert "written inline in a world-readable file" in warning and "sk-inline" not in warning
    path.chmod(0o600)
    assert load_config(path, {}).warnings == []
    path.write_text("langdock: {api_key: '${KEY}'}\n")
    path.chmod(0o644)
    assert load_config(path, {"KEY": "x"}).warnings == []


def test_secrets_echoed_back_from_outside_are_redacted_everywhere(
    world: tuple[Simulator, FakeSlack, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Langdock's and Slack's error bodies repeat a secret (and a stranger's bearer token):
    none of it reaches `once`, `status`, the log, the store or Slack."""
    sim, slack, config = world
    bearer, slack_token = "Bearer abcdef1234567890", "xoxb-1111-2222-abcdefabcdef"
    echo = f"bad request from key {API_KEY} ({bearer}, {slack_token})"
    sim.faults.append(Fault(500, {"error": echo}))
    slack.script.append(Answer(500, f"server_error for {WEBHOOK_SECRET} {slack_token}"))
    assert main(["--log-level", "debug", "once", "--config", str(config)]) == 1
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "bad request from key" in text  # the error itself is shown...
    for secret in (API_KEY, WEBHOOK_SECRET, "abcdef1234567890", slack_token):
        assert secret not in text  # ...without the secrets
        for stored in config.parent.glob("state.db*"):
            assert secret not in stored.read_bytes().decode("latin-1"), stored
        for received in slack.received:
            assert secret not in json.dumps(received.body)
