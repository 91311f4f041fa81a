"""`langdock-budget test-alert` and `rules export-prometheus`: check the Slack routes before
an alert needs them, and hand the budget rules to Prometheus."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import EXIT_FAILED, EXIT_OK, AddCommand, load, utc_now
from daemon.notify import route_for, sample_messages


def add_test_alert_parser(sub: Any, command: AddCommand) -> None:
    command(
        sub,
        "test-alert",
        "send sample budget and anomaly messages to every route",
        cmd_test_alert,
        description="Send a sample budget and a sample anomaly message through every Slack"
        " route of the config and print Slack's answers, to check webhooks, tokens and"
        " channels before an alert needs them. Exit 0 all sent, 1 a send failed.",
    )


def add_rules_parser(sub: Any, command: AddCommand) -> None:
    rules = command(
        sub,
        "rules",
        "rule utilities",
        description="Tools around the rules of the config.",
    )
    rule_actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    command(
        rule_actions,
        "export-prometheus",
        "print Prometheus alerting rules equivalent to the budget rules",
        cmd_rules_export,
        description="Print Prometheus alerting rules (YAML) equivalent to the budget rules,"
        " over the daemon's own metrics, for teams that route alerts through Alertmanager"
        " instead of (or besides) Slack.",
    )


def cmd_rules_export(args: argparse.Namespace) -> int:
    from daemon import prometheus_rules  # the metric families: only this command needs them

    print(prometheus_rules.render(load(args).rules), end="")
    return EXIT_OK


def cmd_test_alert(args: argparse.Namespace) -> int:
    config = load(args)
    if config.slack is None:
        print("no Slack route configured: add a slack section (webhook_url or token + channel)")
        return EXIT_FAILED
    from daemon.notify import SlackSender  # slack-sdk: loaded only by the commands that send

    sender = SlackSender(config)
    routes = sorted(
        {route_for(rule, config) or "" for rule in config.rules} - {""}
        | {route_for(None, config) or ""} - {""}
    )
    now = utc_now()
    failed = 0
    for route in routes:
        for message in sample_messages(config.tz, now):
            result = sender.send(route, message.payload(), None)
            if result.ok:
                answer = f"ok (ts {result.ts})" if result.ts else "ok"
            else:
                failed += 1
                answer = f"FAILED: {result.error}"
            print(f"{route}: {message.text[:60]}…: {answer}")
    return EXIT_OK if not failed else EXIT_FAILED
