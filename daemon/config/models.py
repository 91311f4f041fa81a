"""The configuration's pydantic models: every section, its defaults, bounds and checks
(reference: docs/CONFIG.md, generated from these models by `daemon.config_reference`).

A validator's message is the line a user reads: what is wrong and the fix. Reading the file,
``${VAR}``, secret files and rule files are `daemon.config.load`'s job.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from daemon.rules.schema import Duration, Rule


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
    # PostgreSQL instead of the SQLite file: replicas share it, one leads (docs/OPERATIONS.md)
    url: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    lease_ttl: Duration = timedelta(seconds=15)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("postgresql", "postgres"):
            raise ValueError(
                "state.url must be postgresql://user@host:5432/database (for SQLite, set"
                " state.path instead)"
            )
        if ":" in rest.partition("@")[0] and "@" in rest:
            raise ValueError(
                "state.url holds a password: put it in state.password (e.g. ${PGPASSWORD})"
                " or state.password_file, never in the URL"
            )
        if "password=" in rest.lower():
            raise ValueError(
                "state.url holds a password parameter: use state.password or"
                " state.password_file instead"
            )
        return value

    @model_validator(mode="after")
    def _lease(self) -> StateConfig:
        if not timedelta(seconds=3) <= self.lease_ttl <= timedelta(minutes=2):
            raise ValueError(
                "state.lease_ttl must be between 3s and 2m: a follower takes over within about"
                " 1.3 x lease_ttl of the leader's death (15s by default)"
            )
        if self.password is not None and self.url is None:
            raise ValueError("state.password is set but state.url is not: set state.url")
        return self


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


class WebConfig(_Strict):
    """The status page on `metrics.listen` (docs/OPERATIONS.md "Status page")."""

    # writes (silences from the page) need this token; without one the page is read-only
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    # reading the page needs this token (or the admin token); without one reading is open
    read_token: SecretStr | None = None
    read_token_file: Path | None = None

    # the host names the page answers to; on a loopback listener only loopback names, so a
    # DNS-rebinding page cannot read it ("*": any)
    allowed_hosts: list[str] | None = None

    @field_validator("admin_token", "read_token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        if len(text) < 16:
            raise ValueError("is shorter than 16 characters: make one with `openssl rand -hex 32`")
        if not all("!" <= char <= "~" for char in text):
            raise ValueError(
                "must be printable ASCII without spaces (it travels in an HTTP header):"
                " make one with `openssl rand -hex 32`"
            )
        return value

    def hosts(self, listen_host: str) -> tuple[str, ...]:
        """The Host names served: `allowed_hosts`, else loopback names on a loopback
        listener, else any."""
        if self.allowed_hosts is not None:
            return tuple(h.lower() for h in self.allowed_hosts)
        if listen_host in ("127.0.0.1", "localhost", "::1") or listen_host.startswith("127."):
            return ("localhost", "127.0.0.1", "::1", "[::1]", listen_host)
        return ("*",)


class SlackConfig(_Strict):
    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    channel: str | None = None
    api_url: str = "https://slack.com/api/"
    repeat_interval: Duration = timedelta(hours=4)
    send_resolved: bool = True
    # a send whose answer never came: how long before it is looked for in Slack (bot routes)
    # or sent again (webhooks); a new leader waits as long for the old leader's last send
    recheck_after: Duration = timedelta(seconds=60)

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
    web: WebConfig = WebConfig()

    @field_validator("web", mode="before")
    @classmethod
    def _web_may_be_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # `web:` with nothing under it

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
        values += [self.web.admin_token, self.web.read_token, self.state.password]
        secrets = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        return secrets + [r.webhook_url for r in self.rules if r.webhook_url]
