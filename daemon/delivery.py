"""Delivering the outbox to Slack: senders (webhook, bot token, console) and `deliver`.

`deliver` sends the outbox oldest first, removing an item only after Slack acknowledged it;
it retries 429, 5xx and connection errors a few times with backoff (``Retry-After`` honoured)
and otherwise leaves the item for the next cycle. Messages Slack refuses for good (bad token,
unknown channel, deleted webhook) are marked rejected with a one-line fix, never retried
forever. A message whose alerts are all silenced when its turn comes is dropped unsent.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Protocol
from urllib.error import URLError

import structlog
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError

from daemon.config import Config
from daemon.rules.lifecycle import AlertKey
from daemon.store import OutboxItem, Silence, Store

TRIES_PER_ATTEMPT = 3
MAX_WAIT = 30.0
Sleep = Callable[[float], Awaitable[None]]
log = structlog.get_logger("langdock_budget.notify")

# follow-ups that go into the thread of their alert's first message (bot token routes)
THREADED = ("repeat", "resolved", "superseded")
# kinds whose alerts count as not announced when the message is dropped for a silence, so
# the firing message goes out when the silence ends
ANNOUNCING = ("firing", "superseded", "group")


def silence_matcher(
    silences: Sequence[Silence], key_names: Mapping[str, str], now: datetime
) -> Callable[[AlertKey], bool]:
    """Whether a silence active at ``now`` covers an alert (member globs match the key's id
    or its name)."""
    active = [s for s in silences if s.active(now)]

    def silenced(key: AlertKey) -> bool:
        name = key_names.get(key.member, key.member)
        return any(s.matches(key.rule, key.member, name) for s in active)

    return silenced


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
    silenced: int = 0  # dropped unsent: every alert of the message was silenced by then

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
    """Send what the outbox holds, oldest first; a route that keeps failing waits a cycle.

    A message about alerts that are all silenced now (the silence came after it was queued)
    is dropped and counted in ``silenced``; a dropped firing message counts as never sent, so
    it goes out when the silence ends if the alert still fires.
    """
    report = DeliveryReport()
    stalled: set[str] = set()
    at = now()
    silences = store.silences(at)
    silenced = silence_matcher(silences, store.api_key_names() if silences else {}, at)
    for item in store.pending_outbox(at):
        if item.alert_ids and all(silenced(AlertKey.parse(a)) for a in item.alert_ids):
            store.outbox_drop(item.id, item.alert_ids if item.kind in ANNOUNCING else ())
            report.silenced += 1
            log.info("notification_silenced", route=item.route, kind=item.kind)
            continue
        if item.route in stalled:
            report.deferred += 1  # keep the order of one route's messages
            continue
        thread = None
        if item.route.startswith("bot:") and item.kind in THREADED and item.thread_alert:
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
            _remember_thread(store, item, thread, result)
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


def _remember_thread(
    store: Store, item: OutboxItem, thread: tuple[str, str] | None, result: SendResult
) -> None:
    """Where the follow-ups of a message's alert go (bot token routes): the first message of
    an alert starts its thread; an alert that superseded a forecast continues the forecast's
    thread (whose first message now shows it)."""
    if item.kind == "firing" and result.ts and result.channel and item.thread_alert:
        store.set_thread(item.thread_alert, result.channel, result.ts)
    elif item.kind == "superseded" and item.alert_ids:
        taking_over = item.alert_ids[0]
        if thread is not None:
            store.set_thread(taking_over, *thread)
        elif result.ts and result.channel:
            store.set_thread(taking_over, result.channel, result.ts)
