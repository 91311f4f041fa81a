"""Slack routes: where a rule's messages go, named without secrets (`route_for`), a
fingerprint of where a route delivers (`route_target`), and where a queued message would go
under a (new) config (`current_route`), which decides when a dead letter goes out again."""

from __future__ import annotations

import hashlib

from daemon.config import Config
from daemon.rules.lifecycle import AlertKey
from daemon.rules.schema import AnyRule
from daemon.store import OutboxItem

CONSOLE = "console"


def route_for(rule: AnyRule | None, config: Config, *, console: bool = False) -> str | None:
    """Where a rule's messages go (the default route for ``None``); None without Slack.

    Routes name no secret: a webhook is referred to by the setting that holds it.
    """
    if console:
        return CONSOLE
    if config.slack is None:
        return None
    if rule is not None and rule.webhook_url is not None:
        return f"webhook:rule:{rule.name}"
    if rule is not None and rule.channel is not None:
        return f"bot:{rule.channel}"
    if config.slack.webhook_url is not None:
        return "webhook:default"
    return f"bot:{config.slack.channel}"


def route_target(route: str, config: Config) -> str | None:
    """A fingerprint of where ``route`` delivers under ``config`` (the webhook's URL; the API
    URL, token and channel of a bot route); None when ``config`` has no such route. A hash,
    so no secret lands in the store; it changes when the URL, token or channel does."""
    slack = config.slack
    secret: str | None = None
    if slack is None or route == CONSOLE:
        return None
    if route == "webhook:default" and slack.webhook_url is not None:
        secret = slack.webhook_url.get_secret_value()
    elif route.startswith("webhook:rule:"):
        name = route.removeprefix("webhook:rule:")
        secret = next((r.webhook_url for r in config.rules if r.name == name), None)
    elif route.startswith("bot:") and slack.token is not None:
        secret = f"{slack.api_url}\n{slack.token.get_secret_value()}"
    if not secret:
        return None
    return hashlib.sha256(f"{route}\n{secret}".encode()).hexdigest()[:16]


def current_route(item: OutboxItem, config: Config) -> str | None:
    """The route ``item`` would take if it were queued under ``config``: its rule's route
    (the default route for messages without alerts, like digests); its own route when its
    rules are gone or now go to different places; None without Slack."""
    if item.route == CONSOLE or config.slack is None:
        return None
    names = {AlertKey.parse(a).rule for a in item.alert_ids}
    if not names:
        return route_for(None, config)
    rules = {r.name: r for r in config.rules}
    routes = {route_for(rules[n], config) for n in names if n in rules} - {None}
    return routes.pop() if len(routes) == 1 else item.route
