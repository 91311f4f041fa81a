"""docs/CONFIG.md, generated from the pydantic models: every key with its type, default and
bounds as the validator enforces them, and a sentence on what it does (`WHAT`; a test keeps
every key described and the file current). Regenerate with ``make docs``."""

from __future__ import annotations

import sys
import types
import typing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from daemon.config import (
    Config,
    DigestConfig,
    LangdockConfig,
    MetricsConfig,
    PollConfig,
    SlackConfig,
    StateConfig,
    WebConfig,
)
from daemon.rules.durations import format_duration
from daemon.rules.schema import AnomalyRule, BudgetRule, NewMemberRule, Scope

SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("(top level)", Config, ""),
    ("langdock", LangdockConfig, "langdock."),
    ("poll", PollConfig, "poll."),
    ("state", StateConfig, "state."),
    ("metrics", MetricsConfig, "metrics."),
    ("slack", SlackConfig, "slack."),
    ("web", WebConfig, "web."),
    ("digests[]", DigestConfig, "digests[]."),
    ("rules[] with kind: budget", BudgetRule, "budget."),
    ("rules[] with kind: anomaly", AnomalyRule, "anomaly."),
    ("rules[] with kind: new_member", NewMemberRule, "new_member."),
    ("rules[].scope", Scope, "scope."),
)
# Keys every rule kind shares are described once, under "rule.".
_RULE_KEYS = {
    "name",
    "kind",
    "scope",
    "each",
    "exclude",
    "for",
    "keep_firing_for",
    "channel",
    "webhook_url",
    "mention",
}

WHAT: dict[str, str] = {
    "timezone": "IANA zone in which calendar windows (day, week, month) and digests are cut,"
    " DST included.",
    "langdock": "How to reach Langdock's Usage Export API.",
    "poll": "When to fetch, and how much history to keep.",
    "state": "Where the store lives.",
    "metrics": "The listener of `/metrics`, `/healthz` and the status page (`/`).",
    "web": "Who may read the status page and silence alerts from it.",
    "slack": "Where alerts go; leave it out and alerts are only logged.",
    "rule_files": "Globs of rule files, relative to the config file, merged with `rules`.",
    "rules": "Budget, anomaly and new-member rules (sections below).",
    "digests": "Spend digests to Slack at a local time.",
    "langdock.base_url": "https://api.langdock.com, or https://<deployment>/api/public for a"
    " dedicated deployment; plain http only to loopback.",
    "langdock.api_key": "A key with the USAGE_EXPORT_API scope; use `${VAR}`.",
    "langdock.api_key_file": "…or a file holding it (a systemd credential); one of the two.",
    "langdock.timeout": "Per HTTP request (between reads of a download).",
    "langdock.max_requests_per_minute": "Export calls in any 60 s once history is complete.",
    "langdock.max_retries": "Retries of one export (POST and download together) on 429, 5xx,"
    " timeouts, broken or short downloads.",
    "langdock.backfill_max_requests_per_minute": "Export calls in any 60 s while history is"
    " being filled (first start, after downtime), the poll's included; above 100 only against"
    " a loopback simulator.",
    "langdock.download_timeout": "One whole export file download; a stalled one gets a fresh"
    " export.",
    "langdock.max_download_bytes": "A larger export file is refused (bucket fails, one line"
    " says how to raise it).",
    "poll.interval": "How often to fetch and evaluate.",
    "poll.backfill": "History kept: budgets first (a day per call), then hour by hour in the"
    " background.",
    "poll.settle_after": "A finished hour is fetched once more this long after its end, for"
    " late data.",
    "poll.cycle_timeout": "A cycle still running after this is abandoned (what it stored stays).",
    "state.path": "The SQLite store, relative to the config file; one writer at a time.",
    "state.url": "PostgreSQL instead of SQLite (postgresql://user@host:5432/db, no password):"
    " replicas share it and one leads (docs/OPERATIONS.md, Two replicas).",
    "state.password": "The PostgreSQL password (e.g. ${PGPASSWORD}); or libpq's own"
    " PGPASSWORD / ~/.pgpass.",
    "state.password_file": "A file holding the PostgreSQL password.",
    "state.lease_ttl": "How long the leader's lease lasts unrenewed; a follower takes over"
    " within about 1.3x this after the leader dies.",
    "metrics.listen": "host:port for the status page, `/metrics` and `/healthz`.",
    "metrics.top_keys": "Per-key cost series for the top N keys by month spend; the rest is"
    ' `api_key_id="other"`.',
    "web.admin_token": "Bearer token for writes from the page (silences); without one the page"
    " is read-only. At least 16 characters; use `${VAR}`…",
    "web.admin_token_file": "…or a file holding it.",
    "web.read_token": "When set, reading the page needs this token (or the admin token);"
    " `/metrics` and `/healthz` stay open.",
    "web.read_token_file": "…or a file holding it.",
    "web.allowed_hosts": "Host names the page answers to; default: loopback names on a"
    ' loopback listener, else any ("*"). Add the name a reverse proxy or tunnel uses.',
    "slack.webhook_url": "An incoming webhook (use `${VAR}`)…",
    "slack.webhook_url_file": "…or a file holding it.",
    "slack.token": "…or a bot token (chat:write; channels:history and channels:read let an"
    " uncertain send be looked up instead of posted twice)…",
    "slack.token_file": "…or a file holding it.",
    "slack.channel": "The bot's channel (with `token`).",
    "slack.api_url": "Slack's Web API base (tests point it at a fake).",
    "slack.repeat_interval": "Re-notify a still-firing alert this often; 0 = never.",
    "slack.recheck_after": "After a send whose answer never came: wait this long, then look"
    " for it in Slack (bot token) or send it again (webhook).",
    "slack.send_resolved": "Say when an alert clears.",
    "digests[].period": "The last complete local day or ISO week.",
    "digests[].at": "HH:MM local time (in `timezone`).",
    "digests[].weekday": "Weekly digests only.",
    "rule.name": "Unique; letters, digits and `_.:-`.",
    "rule.kind": "budget, anomaly or new_member.",
    "rule.scope": "Which usage: globs on key (name or id) and model; none = the workspace.",
    "rule.each": "One alert series per matching api_key or model (else one for the scope).",
    "rule.exclude": "Globs taken out of the scope.",
    "rule.for": "How long the condition must hold before the alert fires.",
    "rule.keep_firing_for": "Hold a firing alert this long after it clears (no flapping).",
    "rule.channel": "Per-rule bot channel.",
    "rule.webhook_url": "Per-rule webhook.",
    "rule.mention": 'Prepended to the message, e.g. "<!subteam^S0123ABC>".',
    "budget.window": "day, week, month (calendar, in `timezone`) or a rolling duration (24h, 7d).",
    "budget.limit_usd": "The limit in USD…",
    "budget.limit_requests": "…or in requests…",
    "budget.limit_tokens": "…or in tokens (exactly one).",
    "budget.thresholds": "Percent of the limit; one message per member names the highest crossed.",
    "budget.severity": "One severity, or one per threshold ({80: warning, 100: critical}).",
    "budget.forecast": "Also alert when the projected window total passes 100 % (calendar"
    " windows).",
    "anomaly.metric": "What is judged; error_rate and response_time_ms exist per model only.",
    "anomaly.window": "The observed window (complete buckets).",
    "anomaly.baseline": "History it is judged against (longer than window).",
    "anomaly.seasonality": "auto: hour of the week with two weeks of history, else hour of"
    " the day, else none.",
    "anomaly.sensitivity": "Robust z-score (median/MAD) at which it fires.",
    "anomaly.min_delta_usd": "Ignore changes smaller than this (cost_usd).",
    "anomaly.min_delta": "Ignore changes smaller than this (other metrics).",
    "anomaly.min_baseline_points": "No alert before this many baseline windows.",
    "anomaly.direction": "up, down (traffic stopped) or both.",
    "anomaly.severity": "The alert's severity.",
    "new_member.window": "How long the alert stays up before it clears quietly.",
    "new_member.severity": "The alert's severity.",
    "scope.api_key": "Glob on the key's name or id.",
    "scope.model": "Glob on the model name.",
}


def _key(prefix: str, name: str) -> str:
    if prefix in ("budget.", "anomaly.", "new_member.") and name in _RULE_KEYS:
        return f"rule.{name}"
    return f"{prefix}{name}"


def type_text(annotation: Any) -> str:
    """A YAML-minded name for a field's type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(dict.fromkeys(type_text(a) for a in args))
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map {type_text(args[0])} → {type_text(args[1])}"
    if origin is typing.Annotated:
        return type_text(args[0])
    names = {
        timedelta: "duration",
        Decimal: "number",
        float: "number",
        int: "integer",
        str: "text",
        bool: "true/false",
        Path: "path",
        SecretStr: "secret",
    }
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value == []:
        return "—"
    if isinstance(value, timedelta):
        return format_duration(value) if value else "0s"
    if isinstance(value, BaseModel):
        return "(see below)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return f"{value}"


def bounds_text(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        if isinstance(item, Ge):
            parts.append(f"≥ {item.ge:,}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt:,}")
        elif isinstance(item, Le):
            parts.append(f"≤ {item.le:,}")
    return ", ".join(parts)


def rows() -> list[tuple[str, list[tuple[str, str, str, str, str]]]]:
    """(section, [(key, type, default, bounds, what)]) in documentation order."""
    sections = []
    for title, model, prefix in SECTIONS:
        found = []
        for name, field in model.model_fields.items():
            shown = field.alias or name
            key = _key(prefix, shown)
            if prefix in ("budget.", "anomaly.", "new_member.") and key.startswith("rule."):
                continue  # shared rule keys: listed once, below
            kind, default = type_text(field.annotation), default_text(field)
            found.append((key, kind, default, bounds_text(field), WHAT.get(key, "")))
        sections.append((title, found))
    shared = [
        (
            _key("budget.", field.alias or name),
            type_text(field.annotation),
            default_text(field),
            bounds_text(field),
            WHAT.get(_key("budget.", field.alias or name), ""),
        )
        for name, field in BudgetRule.model_fields.items()
        if (field.alias or name) in _RULE_KEYS
    ]
    kinds = " \\| ".join(("budget", "anomaly", "new_member"))
    shared = [(k, kinds if k == "rule.kind" else t, d, b, w) for k, t, d, b, w in shared]
    sections.insert(7, ("rules[]: keys of every rule", shared))
    return sections


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `make docs` (`daemon/config_reference.py`); a",
        "test keeps it current. Unknown keys are errors; durations are `30s`, `5m`, `4h`,",
        "`14d`, `2w` or combined (`1h30m`); `${VAR}` reads the environment. A commented example",
        "of every section: `config.example.yaml`.",
    ]
    for title, found in rows():
        lines += ["", f"## {title}", "", "| key | type | default | bounds | what |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for key, kind, default, bounds, what in found:
            lines.append(f"| `{key.split('.')[-1]}` | {kind} | {default} | {bounds} | {what} |")
    return "\n".join(lines) + "\n"


def undocumented() -> list[str]:
    return [key for _, found in rows() for key, *_, what in found if not what]


if __name__ == "__main__":  # pragma: no cover - `make docs`
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/CONFIG.md")
    target.write_text(render())
    print(f"wrote {target}")
