"""`langdock-budget check`: validate the config and its rules, and say what they mean."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import EXIT_OK, AddCommand, load
from daemon.config import Config
from daemon.rules.durations import format_duration
from daemon.rules.schema import BudgetRule, NewMemberRule
from daemon.rules.selection import expand_members
from daemon.state import open_store, store_exists, store_name


def add_parser(sub: Any, command: AddCommand) -> None:
    command(
        sub,
        "check",
        "validate config and rules; no network",
        cmd_check,
        description="Validate the config and its rule files and print what they say, each"
        " rule expanded over the keys and models in the store; no network. Exit 0 valid, 2"
        " invalid (one line per problem: file, key, what is wrong, how to fix it).",
    )


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args)
    print(describe_config(config))
    for warning in config.warnings:
        print(f"warning: {warning}")
    if config.rules:
        print()
        print(describe_members(config))
    return EXIT_OK


def describe_members(config: Config) -> str:
    """Each rule expanded over the keys and models in the store (read only; no network)."""
    if not store_exists(config):
        return "members: no store yet, so rules are not expanded (run `once` first)"
    store = open_store(config)
    try:
        key_names, models = store.api_key_names(), store.models()
    finally:
        store.close()
    lines = [f"members (from {len(key_names)} keys and {len(models)} models in the store):"]
    for rule in config.rules:
        members, warnings = expand_members(rule, key_names, models)
        shown = ", ".join(members[:8]) + (f", +{len(members) - 8} more" if len(members) > 8 else "")
        lines.append(f"  - {rule.name}: {shown or '(none yet)'}")
        lines += [
            f"    warning: {rule.name}: {w} (new keys and models join when they appear)"
            for w in warnings
        ]
    return "\n".join(lines)


def describe_config(config: Config) -> str:
    lines = [
        f"config      {config.source}  (valid)",
        f"langdock    {config.langdock.base_url}  (<= {config.langdock.max_requests_per_minute}"
        " requests/min)",
        f"timezone    {config.timezone}",
        f"poll        every {format_duration(config.poll.interval)}, backfill"
        f" {format_duration(config.poll.backfill)}",
        f"state       {store_name(config)}",
        f"metrics     http://{config.metrics.listen}/metrics",
        f"slack       {_slack_route(config)}",
        f"rules       {len(config.rules)}",
    ]
    for rule in config.rules:
        scope = (
            ", ".join(f"{k}={v}" for k, v in rule.scope.model_dump().items() if v) or "workspace"
        )
        each = f" each {rule.each}" if rule.each else ""
        if isinstance(rule, BudgetRule):
            limit = (
                f"${rule.limit_usd}"
                if rule.limit_usd is not None
                else f"{rule.limit_requests} requests"
                if rule.limit_requests is not None
                else f"{rule.limit_tokens} tokens"
            )
            thresholds = "/".join(f"{t}%" for t in rule.thresholds)
            what = f"budget {limit} per {rule.window} at {thresholds}"
            if rule.forecast:
                what += " + forecast"
        elif isinstance(rule, NewMemberRule):
            what = f"new {rule.each} alert (stays up {format_duration(rule.window)})"
        else:
            what = (
                f"anomaly {rule.metric} over {format_duration(rule.window)} vs"
                f" {format_duration(rule.baseline)} baseline, sensitivity {rule.sensitivity}"
            )
        lines.append(f"  - {rule.name}: {what}; scope {scope}{each}")
    return "\n".join(lines)


def _slack_route(config: Config) -> str:
    if config.slack is None:
        return "not configured (alerts are only logged)"
    if config.slack.webhook_url is not None:
        return "incoming webhook"
    return f"bot token to {config.slack.channel}"
