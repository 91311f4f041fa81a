"""Configuration: the shipped example, ${VAR}, secret files, rule files, and error lines."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config
from daemon.rules.schema import AnomalyRule, BudgetRule

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "LANGDOCK_API_KEY": "sk-live-abcdef123456",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
}
MINIMAL = "langdock:\n  api_key: ${LANGDOCK_API_KEY}\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, ENV if env is None else env)
    return err.value.lines


def test_the_shipped_example_and_rule_sets_are_valid(tmp_path: Path) -> None:
    example = (ROOT / "config.example.yaml").read_text()
    assert "\n# rule_files:\n#   - alert_rules/*.yaml\n" in example  # off: they overlap
    (tmp_path / "config.yaml").write_text(
        example.replace("# rule_files:\n#   - alert_rules/", "rule_files:\n  - alert_rules/")
    )
    shutil.copytree(ROOT / "alert_rules", tmp_path / "alert_rules")
    config = load_config(tmp_path / "config.yaml", ENV)
    assert config.timezone == "Europe/Berlin"
    assert config.poll.interval == timedelta(minutes=5)
    assert config.api_key() == ENV["LANGDOCK_API_KEY"]
    names = {rule.name for rule in config.rules}
    assert {
        "prod-keys-monthly",
        "hourly-spend-spike",
        "workspace-monthly",
        "model-error-rate",
    } <= names
    assert any(isinstance(r, BudgetRule) and r.forecast for r in config.rules)
    assert any(isinstance(r, AnomalyRule) and r.direction == "down" for r in config.rules)


def test_defaults_from_a_minimal_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), ENV)
    assert config.langdock.base_url == "https://api.langdock.com"
    assert config.poll.backfill == timedelta(days=35)
    assert config.langdock.max_requests_per_minute == 30
    assert config.slack is None and config.rules == []


def test_relative_state_path_and_rule_files_are_relative_to_the_config(tmp_path: Path) -> None:
    write(tmp_path, "- name: r1\n  kind: budget\n  window: day\n  limit_usd: 1\n", "rules/a.yaml")
    path = write(
        tmp_path,
        MINIMAL + "state: {path: data/state.db}\nrule_files: [rules/*.yaml]\n",
        "etc/config.yaml",
    )
    path.rename(tmp_path / "config.yaml")
    config = load_config(tmp_path / "config.yaml", ENV)
    assert config.state.path == tmp_path / "data" / "state.db"
    assert [r.name for r in config.rules] == ["r1"]


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-from-file-987\n")
    config = load_config(write(tmp_path, "langdock:\n  api_key_file: key\n"), {})
    assert config.api_key() == "sk-from-file-987"
    assert "sk-from-file-987" in config.secrets()
    lines = errors_of(write(tmp_path, "langdock:\n  api_key_file: missing\n"))
    assert lines == [
        f"{tmp_path / 'config.yaml'}: langdock.api_key_file: cannot read"
        f" {tmp_path / 'missing'} (No such file or directory); check the path and that"
        " the service may read it"
    ]


def test_every_problem_is_one_precise_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
langdock:
  base_url: http://api.example.com
  api_key: ${NOT_SET}
  colour: blue
timezone: Mars/Olympus
poll: {interval: 5 minutes}
slack: {token: xoxb-secret-token-1}
rules:
  - {name: a, kind: budget, window: fortnight, limit_usd: 10, thresholds: [0, 80]}
  - {name: b, kind: anomaly, metric: error_rate, scope: {api_key: "prod-*"}}
  - {name: c, kind: alert}
  - {name: d, kind: budget, window: month, each: api_key, scope: {api_key: prod-web}, limit_usd: 5}
  - {name: e, kind: budget, window: day, limit_usd: 5}
  - {name: e, kind: budget, window: day, limit_usd: 6}
""",
    )
    lines = errors_of(path)
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in lines)
    body = [line.removeprefix(prefix) for line in lines]
    expected = [
        "langdock.api_key: environment variable NOT_SET is not set",
        "langdock.base_url: plain http to a non-loopback host 'api.example.com' is refused",
        "langdock.colour: unknown key",
        "timezone: unknown time zone 'Mars/Olympus'",
        "poll.interval: invalid duration '5 minutes'",
        "slack.token needs slack.channel",
        "rules[0].window: unknown window 'fortnight'",
        "rules[0].thresholds: threshold 0 is outside 1-1000",
        "rules[1]: metric error_rate exists only per model",
        "rules[2]: unknown kind 'alert'",
        "rules[3]: each: api_key contradicts scope.api_key",
        "rules[5].name: duplicate rule name 'e'",
    ]
    assert len(body) == len(expected)
    for got, want in zip(body, expected, strict=True):
        assert got.startswith(want), (got, want)
    assert not any("xoxb-secret-token-1" in line for line in lines)


def test_secrets_are_never_echoed_in_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + "slack:\n  webhook_url: http://hooks.example.com/T/B/supersecret\n"
    )
    (line,) = errors_of(path)
    assert "supersecret" not in line and "slack.webhook_url" in line


def test_loopback_http_is_allowed(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9000/api/public"):
        config = load_config(write(tmp_path, MINIMAL + f"  base_url: {url}\n"), ENV)
        assert config.langdock.base_url == url


def test_rule_file_errors_name_the_rule_file(tmp_path: Path) -> None:
    rules = write(tmp_path, "rules:\n  - {name: x, kind: budget, window: day}\n", "r.yaml")
    lines = errors_of(write(tmp_path, MINIMAL + "rule_files: ['*.yaml', 'none/*.yaml']\n"))
    assert lines[0].startswith(
        f"{tmp_path / 'config.yaml'}: rule_files: 'none/*.yaml' matches no file"
    )
    need_one = "a budget rule needs exactly one of limit_usd, limit_requests, limit_tokens"
    assert lines[1] == f"{rules}: rules[0]: {need_one}"


def test_missing_and_broken_files(tmp_path: Path) -> None:
    assert "file not found" in errors_of(tmp_path / "nope.yaml")[0]
    (line,) = errors_of(write(tmp_path, "langdock: [unclosed\n"))
    assert "invalid YAML" in line and "line " in line


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("sk-\u00e9t\u00e9", "a non-ASCII character at character 4"),
        ("sk-abc\ndef", "a line break at character 7"),
        ("sk-abc def", "a space at character 7"),
        ("sk-abc\x00def", "a control character at character 7"),
    ],
)
def test_a_secret_that_cannot_be_an_http_header_is_refused(
    tmp_path: Path, key: str, what: str
) -> None:
    path = write(tmp_path, MINIMAL + "slack:\n  token: ${TOKEN}\n  channel: '#c'\n")
    lines = errors_of(path, {"LANGDOCK_API_KEY": key, "TOKEN": "xoxb-" + key})
    assert lines[0].endswith(
        f"langdock.api_key: the API key has {what}: it cannot be sent in an HTTP header;"
        " copy it again without extra characters (a file may end in one newline)"
    )
    assert "slack.token: the Slack token has" in lines[1]
    assert all(key not in line for line in lines)
    # a key file ending in one newline is fine (it is stripped)
    (tmp_path / "key").write_text("sk-good-123456\n")
    ok = write(tmp_path, "langdock: {api_key_file: key}\n")
    assert load_config(ok, {}).api_key() == "sk-good-123456"


def test_web_tokens_are_checked_and_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    base = "langdock: {api_key: sk-x}\n"
    for web, why in (
        ("web: {admin_token: short}", "shorter than 16"),
        ("web: {admin_token: 'has spaces in it 0123'}", "without spaces"),
        ("web: {read_token: 123456789012345678901234}", "web.read_token"),
    ):
        path.write_text(base + web + "\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        text = "\n".join(caught.value.lines)
        assert why in text and "123456789012345678901234" not in text and "has spaces" not in text
    path.write_text(base + "web:\nmetrics: {listen: '0.0.0.0:9464'}\n")  # `web:` left empty
    config = load_config(path)
    assert config.web.admin_token is None and config.web.hosts(config.metrics.host) == ("*",)
    assert "localhost" in config.web.hosts("127.0.0.1")
