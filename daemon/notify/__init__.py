"""Notifications: the pipeline from alert transitions to Slack, in named stages.

silence (`silence`) → dedup and repeat timing (`plan.decide`) → [the cycle loads the
contributors the messages name] → render (`slack.blocks`, pure; `plan.render`) → group
(`plan.render`) → queue (the cycle stores the items with the alert states) → deliver
(`deliver`: the outbox, retries, dead letters) through a sender (`slack.sender` for
slack-sdk, `senders.ConsoleSender` for `demo`). `routes` names where a rule's messages go.

What the cycle, the service and the command line use is re-exported here; `SlackSender`
when first asked for (or made by `slack_sender`), since it loads all of slack-sdk (~20 ms),
which a process without a Slack route never needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.notify.deliver import (
    MAX_WAIT,
    SETTLE,
    TRIES_PER_ATTEMPT,
    DeliveryReport,
    Sleep,
    deliver,
    requeue_dead_letters,
)
from daemon.notify.plan import GROUP_AT, Plan, decide, message_for, plan, render
from daemon.notify.routes import CONSOLE, current_route, route_for, route_target
from daemon.notify.samples import sample_messages
from daemon.notify.senders import (
    EVENT_TYPE,
    SEND_TIMEOUT,
    Attempt,
    ConsoleSender,
    Sender,
    SendResult,
    render_readable,
)
from daemon.notify.silence import Silenced, silence_matcher

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.notify.slack.sender import SlackSender

__all__ = [
    "CONSOLE",
    "EVENT_TYPE",
    "GROUP_AT",
    "MAX_WAIT",
    "SEND_TIMEOUT",
    "SETTLE",
    "TRIES_PER_ATTEMPT",
    "Attempt",
    "ConsoleSender",
    "DeliveryReport",
    "Plan",
    "SendResult",
    "Sender",
    "Silenced",
    "SlackSender",
    "Sleep",
    "current_route",
    "decide",
    "deliver",
    "message_for",
    "plan",
    "render",
    "render_readable",
    "requeue_dead_letters",
    "route_for",
    "route_target",
    "sample_messages",
    "silence_matcher",
    "slack_sender",
]


def slack_sender(config: Config) -> SlackSender | None:
    """The sender of the configured Slack route; None without one (slack-sdk not loaded)."""
    if config.slack is None:
        return None
    from daemon.notify.slack.sender import SlackSender

    return SlackSender(config)


def __getattr__(name: str) -> Any:
    if name == "SlackSender":
        from daemon.notify.slack.sender import SlackSender

        return SlackSender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
