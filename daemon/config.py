"""Loading and validating the YAML configuration (reference: docs/CONFIG.md).

`load_config` reads the file, expands ``${VAR}`` from the environment, reads secret files,
merges `rule_files`, and validates everything with pydantic. All problems are collected and
raised together as one `ConfigError` whose lines each say: file, key path, what, and the fix.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.rules.schema import Duration, Rule

DEFAULT_CONFIG_PATH = Path("/etc/langdock-budget/config.yaml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """Invalid configuration; ``lines`` holds one self-contained message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def check_url(url: str) -> str:
    """Refuse anything but https, or http to a loopback host (tests, the simulator)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL with a host; write it like https://api.langdock.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"plain http to a non-loopback host {parts.hostname!r} is refused: use https"
        )
    return url


def check_header_value(value: SecretStr | None, what: str) -> SecretStr | None:
    """A secret sent as an HTTP header must be printable ASCII on one line (the message says
    where the bad character is, never the secret)."""
    if value is None:
        return None
    for position, char in enumerate(value.get_secret_value(), start=1):
        if not 0x21 <= ord(char) <= 0x7E:
            kind = (
                "a line break"
                if char in "\r\n"
                else "a space"
                if char == " "
                else ("a non-ASCII character" if ord(char) > 0x7E else "a control character")
            )
            raise ValueError(
                f"{what} has {kind} at character {position}: it cannot be sent in an HTTP"
                " header; copy it again without extra characters (a file may end in one newline)"
            )
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


BACKFILL_PACE_LIMIT = 100  # export calls a minute; above only against a loopback simulator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LangdockConfig(_Strict):
    base_url: str = "https://api.langdock.com"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    timeout: Duration = timedelta(seconds=30)
    max_requests_per_minute: int = Field(default=30, ge=1, le=250)
    max_retries: int = Field(default=5, ge=0, le=20)
    # the pace while history is being filled (first start, after downtime): a hard cap on
    # every export call in any 60 s, the poll's included (docs/OPERATIONS.md, "First start")
    backfill_max_requests_per_minute: int = Field(default=90, ge=1, le=10_000)
    # one whole download of an export file (the timeout above bounds each read only)
    download_timeout: Duration = timedelta(minutes=5)
    # a file past this is refused (it goes to a temporary file, not memory, while read)
    max_download_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value.rstrip("/"))

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr | None) -> SecretStr | None:
        return check_header_value(value, "the API key")

    @model_validator(mode="after")
    def _polite_backfill(self) -> LangdockConfig:
        host = urlsplit(self.base_url).hostname or ""
        if self.backfill_max_requests_per_minute > BACKFILL_PACE_LIMIT and not _is_loopback(host):
            raise ValueError(
                f"langdock.backfill_max_requests_per_minute is"
                f" {self.backfill_max_requests_per_minute}: at most {BACKFILL_PACE_LIMIT}, the"
                " workspace's 500 calls a minute are shared with its real traffic"
            )
        return self

    @model_validator(mode="after")
    def _one_key(self) -> LangdockConfig:
        if (self.api_key is None) == (self.api_key_file is None):
            raise ValueError(
                "set exactly one of api_key (e.g. ${LANGDOCK_API_KEY}) or api_key_file"
                " (e.g. /run/credentials/langdock-budget/api_key)"
            )
        return self


class PollConfig(_Strict):
    interval: Duration = timedelta(minutes=5)
    backfill: Duration = timedelta(days=35)
    settle_after: Duration = timedelta(minutes=90)
    # a cycle (poll, evaluate, notify) still running after this is abandoned: what it stored
    # stays, the next cycle goes on (a stuck download must not hold the daemon)
    cycle_timeout: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _sane(self) -> PollConfig:
        if self.interval < timedelta(seconds=10):
            raise ValueError("poll.interval is below 10s: Langdock's rate limit is shared; use 1m+")
        if self.backfill < timedelta(hours=1):
            raise ValueError("poll.backfill is below 1h: use e.g. 35d to fill month windows")
        if self.cycle_timeout < timedelta(seconds=1):
            raise ValueError("poll.cycle_timeout is below 1s: use e.g. 10m")
        return self


class StateConfig(_Strict):
    path: Path = Path("/var/lib/langdock-budget/state.db")


class MetricsConfig(_Strict):
    listen: str = "127.0.0.1:9464"
    top_keys: int = Field(default=200, ge=1, le=100_000)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"metrics.listen {value!r} is not host:port, e.g. 127.0.0.1:9464")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SlackConfig(_Strict):
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    channel: str | None = None
    api_url: str = "https://slack.com/api/"
    repeat_interval: Duration = timedelta(hours=4)
    send_resolved: bool = True

    @field_validator("token")
    @classmethod
    def _sendable_token(cls, value: SecretStr | None) -> SecretStr | None:
        return check_header_value(value, "the Slack token")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                check_url(value.get_secret_value())
            except ValueError:
                raise ValueError(
                    "slack.webhook_url must be https (http only to loopback);"
                    " copy it from the Slack app's Incoming Webhooks page"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_route(self) -> SlackConfig:
        webhook = self.webhook_url is not None or self.webhook_url_file is not None
        bot = self.token is not None or self.token_file is not None
        if webhook == bot:
            raise ValueError(
                "configure exactly one Slack route: webhook_url (or webhook_url_file), or"
                " token (or token_file) with channel"
            )
        if bot and not self.channel:
            raise ValueError("slack.token needs slack.channel, e.g. channel: '#llm-costs'")
        return self


class DigestConfig(_Strict):
    """A spend summary sent to Slack at a local time: daily, or weekly on one weekday."""

    period: Literal["day", "week"] = "day"
    at: str = "09:00"
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"

    @field_validator("at")
    @classmethod
    def _time(cls, value: str) -> str:
        hour, sep, minute = value.partition(":")
        if not (
            sep and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60
        ):
            raise ValueError(f"digest time {value!r} is not HH:MM, e.g. 09:00")
        return f"{int(hour):02d}:{int(minute):02d}"


class Config(_Strict):
    langdock: LangdockConfig
    timezone: str = "UTC"
    poll: PollConfig = PollConfig()
    state: StateConfig = StateConfig()
    metrics: MetricsConfig = MetricsConfig()
    slack: SlackConfig | None = None
    rule_files: list[str] = []
    rules: list[Rule] = []
    digests: list[DigestConfig] = []
    _source: Path = PrivateAttr(default=Path("config.yaml"))
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin or UTC"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def source(self) -> Path:
        return self._source

    @property
    def warnings(self) -> list[str]:
        """Problems that don't stop the daemon but should be fixed (one line each)."""
        return list(self._warnings)

    def api_key(self) -> str:
        assert self.langdock.api_key is not None, "load_config resolves api_key_file"
        return self.langdock.api_key.get_secret_value()

    def secrets(self) -> list[str]:
        """Every secret value in this config, for log redaction."""
        values = [self.langdock.api_key]
        if self.slack is not None:
            values += [self.slack.webhook_url, self.slack.token]
        secrets = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        return secrets + [r.webhook_url for r in self.rules if r.webhook_url]


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate ``path``; raise `ConfigError` listing every problem."""
    env = os.environ if env is None else env
    name = str(path)
    raw = _read_yaml(path, name)
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{name}: (top level): expected a mapping of settings; see config.example.yaml"]
        )
    errors: list[str] = []
    data = _interpolate(raw, env, name, "", errors)
    # a missing variable is the cause: the value it left empty is not reported again
    unset = {line.split(": ")[1] for line in errors}
    base = path.parent
    rules: list[Any] = []
    if isinstance(data.get("rules"), list):
        rules = list(data["rules"])
    elif data.get("rules") is not None:
        errors.append(f"{name}: rules: expected a list of rules (each starting with `- name:`)")
    rule_sources: list[tuple[str, int]] = [(name, len(rules))]
    for pattern in data.get("rule_files") or []:
        matches = [
            m
            for m in sorted(glob.glob(str(base / str(pattern))))
            if Path(m).resolve() != path.resolve()
        ]  # a broad glob may hit this file
        if not matches:
            errors.append(
                f"{name}: rule_files: {pattern!r} matches no file (relative to {base});"
                " fix the glob"
            )
        for match in matches:
            loaded = _interpolate(_read_rule_file(Path(match), errors), env, match, "", errors)
            rules.extend(loaded)
            rule_sources.append((match, len(loaded)))
    _resolve_secret_files(data, base, name, errors)
    config_data = {k: v for k, v in data.items() if k != "rules"}
    try:
        config = Config.model_validate(config_data)
    except ValidationError as exc:
        errors.extend(
            line for line in _format_errors(exc, name, "") if line.split(": ")[1] not in unset
        )
    rule_list = _validate_rules(rules, rule_sources, errors)
    if errors:
        raise ConfigError(errors)
    config = config.model_copy(update={"rules": rule_list})
    errors.extend(f"{name}: rules: {problem}" for problem in _route_problems(config))
    if errors:
        raise ConfigError(errors)
    config = _resolve_paths(config, base)
    config._source = path
    config._warnings = _inline_secret_warnings(path, raw)
    return config


def _inline_secret_warnings(path: Path, raw: dict[str, Any]) -> list[str]:
    """An inline secret in a file others can read is a leak waiting to happen."""
    try:
        readable = path.stat().st_mode & 0o004
    except OSError:
        return []
    if not readable:
        return []
    warnings = []
    for section, key in (("langdock", "api_key"), ("slack", "webhook_url"), ("slack", "token")):
        block = raw.get(section)
        value = block.get(key) if isinstance(block, dict) else None
        if isinstance(value, str) and value and not _VAR.fullmatch(value.strip()):
            warnings.append(
                f"{path}: {section}.{key}: a secret is written inline in a world-readable file;"
                f" use ${{VAR}} or {key}_file, or chmod 600 {path}"
            )
    return warnings


def _route_problems(config: Config) -> list[str]:
    """Per-rule Slack overrides need a route that can carry them."""
    problems = []
    bot = config.slack is not None and config.slack.token is not None
    for rule in config.rules:
        if rule.channel is not None and not bot:
            problems.append(
                f"rule {rule.name} sets channel, which needs a bot token: set slack.token and"
                " slack.channel, or use webhook_url for this rule"
            )
        if rule.webhook_url is not None:
            try:
                check_url(rule.webhook_url)
            except ValueError:
                problems.append(f"rule {rule.name}: webhook_url must be an https URL")
    return problems


def _read_yaml(path: Path, name: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{name}: file not found; pass --config PATH or set LANGDOCK_BUDGET_CONFIG"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"{name}: cannot read ({exc.strerror}); check the path and permissions"]
        ) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{name}: {where}: invalid YAML ({problem}); fix the syntax"]) from None


def _read_rule_file(path: Path, errors: list[str]) -> list[Any]:
    try:
        data = _read_yaml(path, str(path))
    except ConfigError as exc:
        errors.extend(exc.lines)
        return []
    if isinstance(data, dict) and set(data) <= {"rules"}:
        data = data.get("rules") or []
    if not isinstance(data, list):
        errors.append(f"{path}: (top level): expected a list of rules or a mapping with `rules:`")
        return []
    return data


def _interpolate(
    value: Any, env: Mapping[str, str], name: str, where: str, errors: list[str]
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                errors.append(
                    f"{name}: {where or '(top level)'}: environment variable {var} is not set;"
                    f" export it or use the *_file form"
                )
                return ""
            return env[var]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, name, _join(where, str(k)), errors) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, name, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_SECRET_FILES = (
    ("langdock", "api_key_file", "api_key"),
    ("slack", "webhook_url_file", "webhook_url"),
    ("slack", "token_file", "token"),
)


_SECRET_KEYS = {"api_key", "webhook_url", "token"}


def _resolve_secret_files(data: dict[str, Any], base: Path, name: str, errors: list[str]) -> None:
    """Replace ``*_file`` settings by the secret they hold (systemd LoadCredential, mounts)."""
    for section, file_key, key in _SECRET_FILES:
        block = data.get(section)
        if not isinstance(block, dict) or block.get(file_key) is None:
            continue
        if block.get(key) is not None:
            errors.append(f"{name}: {section}: both {key} and {file_key} are set; keep one")
            continue
        secret_path = base / str(block[file_key])
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            errors.append(
                f"{name}: {section}.{file_key}: cannot read {secret_path} ({exc.strerror});"
                " check the path and that the service may read it"
            )
            continue
        if not secret:
            errors.append(
                f"{name}: {section}.{file_key}: {secret_path} is empty; put the secret in it"
            )
            continue
        block[key] = secret
        del block[file_key]


def _resolve_paths(config: Config, base: Path) -> Config:
    state = config.state
    if not state.path.is_absolute():
        state = state.model_copy(update={"path": base / state.path})
    return config.model_copy(update={"state": state})


def _validate_rules(
    rules: list[Any], sources: list[tuple[str, int]], errors: list[str]
) -> list[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(Rule)
    validated: list[Any] = []
    index = 0
    seen: dict[str, str] = {}
    for source, count in sources:
        for local_index in range(count):
            where = f"rules[{local_index}]"
            item = rules[index]
            index += 1
            try:
                rule = adapter.validate_python(item)
            except ValidationError as exc:
                errors.extend(_format_errors(exc, source, where))
                continue
            if rule.name in seen:
                errors.append(
                    f"{source}: {where}.name: duplicate rule name {rule.name!r} (also in"
                    f" {seen[rule.name]}); give each rule a unique name"
                )
            seen[rule.name] = f"{source}"
            validated.append(rule)
    return validated


def _format_errors(exc: ValidationError, name: str, prefix: str) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = _loc(prefix, error["loc"])
        if loc.rsplit(".", 1)[-1] in _SECRET_KEYS:
            error = {**error, "input": "<secret>"}  # never echo a secret back
        message = _explain(error)
        if loc and message.startswith(f"{loc}."):  # "poll: poll.interval ...": say it once
            lines.append(f"{name}: {message}")
        else:
            lines.append(f"{name}: {loc or '(top level)'}: {message}")
    return lines


def _loc(prefix: str, parts: Iterable[int | str]) -> str:
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("budget", "anomaly", "function-after[_one_key()]"):
            continue  # discriminator tags and validator names say nothing to a user
        elif not str(part).startswith("function-"):
            text = _join(text, str(part))
    return text


def _explain(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key; remove it or fix its spelling (see config.example.yaml)"
    if kind == "missing":
        return "required key is missing; add it (see config.example.yaml)"
    if kind == "union_tag_invalid":
        return f"unknown kind {error['input'].get('kind')!r}; use kind: budget or kind: anomaly"
    if kind == "union_tag_not_found":
        return "rule has no kind; add kind: budget or kind: anomaly"
    if kind == "literal_error":
        return f"invalid value {error['input']!r}: {msg.lower()}"
    if msg.startswith(("Value error, ", "Assertion failed, ")):
        return msg.split(", ", 1)[1]
    return f"{msg} (got {error.get('input')!r})"
