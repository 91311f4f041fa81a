"""Turning alert transitions into Slack messages, and delivering them through the outbox.

`plan` (pure) decides what to say: one message per transition (firing, resolved when
`send_resolved`), a repeat for alerts still firing after `repeat_interval`, and one grouped
message when a route gets more than `GROUP_AT` in one cycle. The cycle stores the new alert
states and these messages in one transaction (`Store.save_alerts`). `deliver` then sends the
outbox oldest first, removing an item only after Slack acknowledged it; it retries 429, 5xx
and connection errors a few times with backoff (``Retry-After`` honoured) and otherwise leaves
the item for the next cycle. Messages Slack refuses for good (bad token, unknown channel,
deleted webhook) are marked rejected with a one-line fix, never retried forever.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import IO, Any, Protocol
from urllib.error import URLError
from zoneinfo import ZoneInfo

import structlog
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError

from daemon.config import Config
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, Forecast
from daemon.rules.engine import EngineResult, Evaluation
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.new_member import NewMemberEvaluation
from daemon.rules.schema import AnyRule, NewMemberRule
from daemon.rules.usage import Member, MemberUsage, Series
from daemon.rules.windows import Period, bucket_start, calendar_period
from daemon.slack_messages import (
    SlackMessage,
    anomaly_message,
    budget_message,
    group_message,
    new_member_message,
    resolved_message,
    summary_line,
)
from daemon.store import OutboxItem, Store

CONSOLE = "console"
GROUP_AT = 5  # more messages than this to one route in one cycle become one grouped message
TRIES_PER_ATTEMPT = 3
MAX_WAIT = 30.0
Rule = AnyRule
Sleep = Callable[[float], Awaitable[None]]
log = structlog.get_logger("langdock_budget.notify")

_SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


# ------------------------------------------------------------------------------ planning


def route_for(rule: Rule | None, config: Config, *, console: bool = False) -> str | None:
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


@dataclass(frozen=True)
class _Draft:
    route: str
    kind: str
    alert_id: str
    severity: str
    message: SlackMessage


def message_for(
    state: AlertState, evaluation: Evaluation, tz: ZoneInfo, *, repeat: bool, mention: str | None
) -> SlackMessage:
    if isinstance(evaluation, BudgetEvaluation):
        return budget_message(evaluation, state, tz, repeat=repeat, mention=mention)
    if isinstance(evaluation, NewMemberEvaluation):
        return new_member_message(evaluation, state, tz, mention=mention)
    return anomaly_message(evaluation, state, tz, repeat=repeat, mention=mention)


def plan(
    result: EngineResult,
    rules: Mapping[str, Rule],
    route_of: Callable[[Rule], str | None],
    last_notified: Mapping[str, datetime],
    now: datetime,
    tz: ZoneInfo,
    *,
    repeat_interval: timedelta,
    send_resolved: bool,
    labels: Mapping[str, str],
    silenced: Callable[[AlertState], bool] = lambda _state: False,
) -> tuple[list[OutboxItem], dict[str, datetime]]:
    """The outbox items of one cycle and the alerts they notify about (for repeat timing).

    A silenced alert is still tracked (state, metrics) but nothing is sent; if it is still
    firing when the silence ends, its firing message goes out then.
    """
    by_alert: dict[str, Evaluation] = {
        c.key.id: ev for ev in result.evaluations for c in ev.conditions
    }
    drafts: list[_Draft] = []
    notified: dict[str, datetime] = {}
    changed: set[str] = set()
    for notice in result.notices:
        state = notice.transition.state
        rule = rules.get(state.key.rule)
        route = route_of(rule) if rule is not None else None
        changed.add(state.key.id)
        if route is None or rule is None:
            continue
        if notice.transition.kind == "firing":
            evaluation = notice.evaluation or by_alert.get(state.key.id)
            if evaluation is None or silenced(state):
                continue
            message = message_for(state, evaluation, tz, repeat=False, mention=rule.mention)
            drafts.append(_Draft(route, "firing", state.key.id, state.severity, message))
            notified[state.key.id] = now
        elif (
            send_resolved and state.key.id in last_notified and not isinstance(rule, NewMemberRule)
        ):  # a new key does not "resolve"
            evaluation = notice.evaluation
            label = (
                evaluation.member.label
                if evaluation
                else labels.get(state.key.member, state.key.member)
            )
            message = resolved_message(state, label, notice.transition.reason, tz, evaluation)
            drafts.append(_Draft(route, "resolved", state.key.id, "resolved", message))
    for alert_id, state in sorted(result.states.items()):
        rule = rules.get(state.key.rule)
        evaluation = by_alert.get(alert_id)
        if (
            state.status != "firing"
            or alert_id in changed
            or rule is None
            or evaluation is None
            or silenced(state)
        ):
            continue
        last = last_notified.get(alert_id)
        if last is not None and isinstance(rule, NewMemberRule):
            continue  # announced once; no repeats
        repeat = last is not None
        if last is not None and (repeat_interval <= timedelta(0) or now - last < repeat_interval):
            continue
        route = route_of(rule)
        if route is None:
            continue
        # never announced (silenced until now, or no route then): its first message, else a repeat
        mention = None if repeat else rule.mention
        message = message_for(state, evaluation, tz, repeat=repeat, mention=mention)
        kind = "repeat" if repeat else "firing"
        drafts.append(_Draft(route, kind, alert_id, state.severity, message))
        notified[alert_id] = now
    return _group(drafts, now, tz), notified


def _group(drafts: list[_Draft], now: datetime, tz: ZoneInfo) -> list[OutboxItem]:
    by_route: dict[str, list[_Draft]] = {}
    for draft in drafts:
        by_route.setdefault(draft.route, []).append(draft)
    items = []
    for route, group in by_route.items():
        if len(group) > GROUP_AT:
            worst = max((d.severity for d in group), key=lambda s: _SEVERITY_ORDER.get(s, -1))
            message = group_message([summary_line(d.message) for d in group], worst, tz, now)
            items.append(
                OutboxItem(
                    route, "group", [d.alert_id for d in group], None, message.payload(), now
                )
            )
        else:
            items += [
                OutboxItem(route, d.kind, [d.alert_id], d.alert_id, d.message.payload(), now)
                for d in group
            ]
    return items


def sample_messages(tz: ZoneInfo, now: datetime) -> list[SlackMessage]:
    """One budget and one anomaly message with made-up numbers, for `test-alert`."""
    member = Member("key_sample", "example-key (key_sample)", "api_key")
    month = calendar_period("month", now, tz)
    hour = bucket_start(now, tz)
    last_hour = int((hour - timedelta(hours=1)).timestamp())
    usage = MemberUsage(
        member,
        Series({}),
        parts={
            "gpt-4o": Series({last_hour: Decimal("45.00")}),
            "claude-sonnet-4": Series({last_hour: Decimal("3.20")}),
        },
    )
    budget = BudgetEvaluation(
        "test-alert-sample-budget",
        member,
        "month",
        month,
        now,
        "usd",
        Decimal("412.50"),
        Decimal(500),
        Forecast(Decimal("590.10"), "hour_of_week", now + timedelta(days=5)),
        (),
        usage,
    )
    budget_state = AlertState(
        AlertKey(budget.rule, member.id, "80", month.id), "firing", now, now, now, None, "warning"
    )
    anomaly = AnomalyEvaluation(
        "test-alert-sample-anomaly",
        member,
        "cost_usd",
        Period("w", hour - timedelta(hours=1), hour),
        Period("baseline", hour - timedelta(days=14, hours=1), hour - timedelta(hours=1)),
        "hour_of_week",
        336,
        Decimal("48.20"),
        Decimal("6.10"),
        9.4,
        (),
        "",
        usage,
    )
    anomaly_state = AlertState(
        AlertKey(anomaly.rule, member.id, "up", ""), "firing", now, now, now, None, "critical"
    )
    return [budget_message(budget, budget_state, tz), anomaly_message(anomaly, anomaly_state, tz)]


# ------------------------------------------------------------------------------ delivery


@dataclass(frozen=True)
class SendResult:
    ok: bool
    ts: str | None = None
    channel: str | None = None
    retry_after: float | None = None
    error: str = ""
    permanent: bool = False


class Sender(Protocol):
    def send(
        self, route: str, payload: dict[str, Any], thread: tuple[str, str] | None
    ) -> SendResult: ...


_PERMANENT_API_ERRORS = {
    "invalid_auth": "the bot token is invalid; set slack.token to a valid xoxb- token",
    "not_authed": "no token was sent; set slack.token",
    "token_revoked": "the bot token was revoked; create a new one and update slack.token",
    "account_inactive": "the bot's account is inactive; reinstall the Slack app",
    "channel_not_found": "the channel does not exist or the bot can't see it; check the channel"
    " name and invite the bot",
    "not_in_channel": "the bot is not in the channel; /invite it there",
    "is_archived": "the channel is archived; pick another channel",
    "missing_scope": "the bot lacks the chat:write scope; add it and reinstall the app",
    "invalid_blocks": "Slack refused the message blocks; please report this as a bug",
    "msg_too_long": "the message is too long; please report this as a bug",
}
_PERMANENT_WEBHOOK = {
    400: "Slack refused the payload; please report this as a bug",
    403: "the webhook is not allowed to post (invalid_token or action_prohibited); create a new"
    " webhook and update slack.webhook_url",
    404: "the webhook does not exist any more (no_service); create a new one and update"
    " slack.webhook_url",
    410: "the webhook's channel is gone (channel_is_archived); create a new webhook",
}


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                return None
    return None


class SlackSender:
    """Sends through slack-sdk's sync clients (called in a worker thread by `deliver`).

    The SDK's own retry handlers are off: they sleep with `time.sleep` inside the call; our
    retries live in `deliver`, where the wait is injectable and bounded.
    """

    def __init__(self, config: Config, timeout: int = 10) -> None:
        assert config.slack is not None
        self._slack = config.slack
        self._rules = {r.name: r for r in config.rules}
        self._timeout = timeout
        self._web: WebClient | None = None

    def _webhook_url(self, route: str) -> str:
        if route == "webhook:default":
            assert self._slack.webhook_url is not None
            return self._slack.webhook_url.get_secret_value()
        rule = self._rules[route.removeprefix("webhook:rule:")]
        assert rule.webhook_url is not None
        return rule.webhook_url

    def _client(self) -> WebClient:
        if self._web is None:
            assert self._slack.token is not None
            self._web = WebClient(
                token=self._slack.token.get_secret_value(),
                base_url=self._slack.api_url,
                timeout=self._timeout,
                retry_handlers=[],
            )
        return self._web

    def send(
        self, route: str, payload: dict[str, Any], thread: tuple[str, str] | None
    ) -> SendResult:
        try:
            if route.startswith("webhook:"):
                return self._send_webhook(route, payload)
            return self._send_bot(route.removeprefix("bot:"), payload, thread)
        except (URLError, OSError, TimeoutError) as exc:
            return SendResult(False, error=f"connection failed ({type(exc).__name__})")

    def _send_webhook(self, route: str, payload: dict[str, Any]) -> SendResult:
        client = WebhookClient(self._webhook_url(route), timeout=self._timeout, retry_handlers=[])
        response = client.send_dict(payload)
        if response.status_code == 200:
            return SendResult(True)
        body = (response.body or "").strip()[:100]
        if response.status_code == 429 or response.status_code >= 500:
            return SendResult(
                False,
                retry_after=_retry_after(response.headers),
                error=f"webhook answered {response.status_code} {body}",
            )
        fix = _PERMANENT_WEBHOOK.get(response.status_code, "check slack.webhook_url")
        return SendResult(
            False, error=f"webhook answered {response.status_code} {body}: {fix}", permanent=True
        )

    def _send_bot(
        self, channel: str, payload: dict[str, Any], thread: tuple[str, str] | None
    ) -> SendResult:
        client = self._client()
        try:
            if thread is None:
                answer = client.chat_postMessage(
                    channel=channel, text=payload["text"], blocks=payload["blocks"]
                )
            else:
                thread_channel, ts = thread
                answer = client.chat_postMessage(
                    channel=thread_channel,
                    text=payload["text"],
                    blocks=payload["blocks"],
                    thread_ts=ts,
                )
                # the first message shows the current state
                client.chat_update(
                    channel=thread_channel, ts=ts, text=payload["text"], blocks=payload["blocks"]
                )
        except SlackApiError as exc:
            status = exc.response.status_code
            error = str(exc.response.get("error") or f"HTTP {status}")
            if error in _PERMANENT_API_ERRORS:
                return SendResult(
                    False, error=f"{error}: {_PERMANENT_API_ERRORS[error]}", permanent=True
                )
            return SendResult(
                False,
                retry_after=_retry_after(exc.response.headers),
                error=f"Slack API answered {error}",
            )
        return SendResult(True, ts=answer.get("ts"), channel=answer.get("channel"))


class ConsoleSender:
    """`demo`: messages go to stdout, readable (or as Block Kit JSON)."""

    def __init__(self, stream: IO[str] | None = None, as_json: bool = False) -> None:
        self._stream = stream
        self._json = as_json

    def send(
        self, route: str, payload: dict[str, Any], thread: tuple[str, str] | None
    ) -> SendResult:
        stream = self._stream or sys.stdout
        if self._json:
            print(json.dumps(payload, indent=2, ensure_ascii=False), file=stream, flush=True)
        else:
            print(render_readable(payload), file=stream, flush=True)
        return SendResult(True)


def render_readable(payload: dict[str, Any]) -> str:
    """A Block Kit message as plain lines, for terminals."""
    lines = ["┌─ Slack message " + "─" * 50]
    for block in payload.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            lines.append(f"│ {block['text']['text']}")
        elif kind == "section":
            if "text" in block:
                lines += [f"│ {line}" for line in block["text"]["text"].splitlines()]
            for item in block.get("fields", []):
                label, _, value = item["text"].partition("\n")
                lines.append(f"│   {label.strip('*')}: {value}")
        elif kind == "context":
            lines += [f"│ ({e['text']})" for e in block.get("elements", [])]
    lines.append("└" + "─" * 66)
    return "\n".join(lines)


@dataclass
class DeliveryReport:
    sent: int = 0
    deferred: int = 0
    rejected: int = 0

    @property
    def ok(self) -> bool:
        return not self.deferred and not self.rejected


async def deliver(
    store: Store,
    sender: Sender,
    now: Callable[[], datetime],
    *,
    sleep: Sleep = asyncio.sleep,
    tries: int = TRIES_PER_ATTEMPT,
) -> DeliveryReport:
    """Send what the outbox holds, oldest first; a route that keeps failing waits a cycle."""
    report = DeliveryReport()
    stalled: set[str] = set()
    for item in store.pending_outbox(now()):
        if item.route in stalled:
            report.deferred += 1  # keep the order of one route's messages
            continue
        thread = None
        if (
            item.route.startswith("bot:")
            and item.kind in ("repeat", "resolved")
            and item.thread_alert
        ):
            thread = store.thread_of(item.thread_alert)
        result = SendResult(False)
        for attempt in range(tries):
            result = await asyncio.to_thread(sender.send, item.route, item.payload, thread)
            if result.ok or result.permanent:
                break
            if attempt + 1 < tries:
                await sleep(
                    min(
                        result.retry_after if result.retry_after is not None else 2.0**attempt,
                        MAX_WAIT,
                    )
                )
        if result.ok:
            store.outbox_sent(item.id)
            if item.kind == "firing" and result.ts and result.channel and item.thread_alert:
                store.set_thread(item.thread_alert, result.channel, result.ts)
            report.sent += 1
            log.info(
                "notification_sent",
                route=item.route,
                kind=item.kind,
                alerts=len(item.alert_ids),
            )
        elif result.permanent:
            store.outbox_reject(item.id, result.error)
            report.rejected += 1
            log.error("notification_rejected", route=item.route, error=result.error)
        else:
            store.outbox_retry(item.id, item.attempts + 1, now(), result.error)
            stalled.add(item.route)
            report.deferred += 1
            log.warning(
                "notification_deferred",
                route=item.route,
                error=result.error,
                attempts=item.attempts + 1,
                fix="Slack or the network is failing; the message stays queued",
            )
    return report
