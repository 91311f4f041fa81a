"""Sending one outbox message to Slack through slack-sdk (`SlackSender`: incoming webhooks and
the bot token's Web API) and reading Slack's answer as a `SendResult`. When to send and retry
is `daemon.notify.deliver`.

A send whose answer never came (a timeout, a connection dropped after the request went out),
or a Web API 5xx / ``fatal_error`` / ``internal_error``, leaves it open whether Slack posted the
message: the result is *uncertain* (``maybe_sent``). Bot token messages carry message metadata
naming their outbox row, so the next attempt first looks for that row in the channel's
history (or the thread's replies) and posts only if it is not there. Webhooks can't be read
back: an uncertain webhook send is posted again (docs/DESIGN.md, "Slack delivery").
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Mapping
from typing import Any
from urllib.error import URLError

import structlog
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError

from daemon.config import Config
from daemon.logs import redact
from daemon.notify.routes import current_route, route_target
from daemon.notify.senders import SEND_TIMEOUT, Attempt, SendResult
from daemon.store import OutboxItem

CHECK_MARGIN = 900  # s before the row was queued where the search starts (clock skew)
CHECK_PAGES = 5  # pages of 200 messages searched for an uncertain send
MAX_RETRY_AFTER = 366 * 86400.0  # Slack's wait is honoured; this only guards date arithmetic
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")
log = structlog.get_logger("langdock_budget.notify")


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
    "invalid_metadata_format": "Slack refused the message metadata; please report this as a bug",
    "invalid_payload": "Slack refused the payload; please report this as a bug",
    "msg_too_long": "the message is too long; please report this as a bug",
}
# Web API errors after which the message may have been posted (Slack's own words: "it's
# possible some aspect of the operation succeeded")
_MAYBE_POSTED = {"fatal_error", "internal_error"}
_PERMANENT_WEBHOOK = {
    400: "Slack refused the payload; please report this as a bug",
    403: "the webhook is not allowed to post (invalid_token or action_prohibited); create a new"
    " webhook and update slack.webhook_url",
    404: "the webhook does not exist any more (no_service); create a new one and update"
    " slack.webhook_url",
    410: "the webhook's channel is gone (channel_is_archived); create a new webhook",
}
# the history can't be read: post again (the narrow window docs/DESIGN.md describes)
_UNCHECKABLE = {"missing_scope", "channel_not_found", "not_in_channel", "invalid_arguments"}


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return min(max(0.0, float(raw)), MAX_RETRY_AFTER)
            except (TypeError, ValueError):
                return None
    return None


def _no_answer(exc: BaseException) -> SendResult:
    """A send that raised. urllib raises `URLError` only while connecting or writing the
    request, so Slack never got it whole; anything later (a read timeout, a reset, a garbled
    answer) came after the request went out: Slack may have posted it, or be posting it."""
    if isinstance(exc, URLError):
        reason = exc.reason
        name = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        return SendResult(False, error=f"connection failed ({name})")
    return SendResult(
        False,
        error=f"no answer from Slack ({type(exc).__name__}); the message may have arrived",
        maybe_sent=True,
        in_flight=True,
    )


_SEND_ERRORS = (URLError, OSError, TimeoutError, http.client.HTTPException)


class SlackSender:
    """Sends through slack-sdk's sync clients (called in a worker thread by `deliver`).

    The SDK's own retry handlers are off: they sleep with `time.sleep` inside the call; our
    retries live in `deliver`, where the wait is injectable and kept with the outbox row.
    """

    def __init__(self, config: Config, timeout: int = SEND_TIMEOUT) -> None:
        assert config.slack is not None
        self._config = config
        self._slack = config.slack
        self._rules = {r.name: r for r in config.rules}
        self._timeout = timeout
        self._web: WebClient | None = None
        self._ids: dict[str, str] = {}  # channel name -> id

    def target(self, route: str) -> str | None:
        return route_target(route, self._config)

    def route_now(self, item: OutboxItem) -> str | None:
        return current_route(item, self._config)

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
        self,
        route: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
        attempt: Attempt | None = None,
    ) -> SendResult:
        try:
            if route.startswith("webhook:"):
                return self._send_webhook(route, payload)
            return self._send_bot(route.removeprefix("bot:"), payload, thread, attempt)
        except _SEND_ERRORS as exc:
            return _no_answer(exc)

    def _send_webhook(self, route: str, payload: dict[str, Any]) -> SendResult:
        client = WebhookClient(self._webhook_url(route), timeout=self._timeout, retry_handlers=[])
        response = client.send_dict(payload)
        if response.status_code == 200:
            return SendResult(True)
        body = redact((response.body or "").strip()[:100])
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
        self,
        channel: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
        attempt: Attempt | None,
    ) -> SendResult:
        client = self._client()
        if attempt is not None and attempt.check:
            found = self._look_for(client, channel, thread, attempt)
            if isinstance(found, SendResult):
                return found
            if found is not None:
                ts, where = found
                if thread is not None:
                    self._update_parent(client, thread, payload)
                return SendResult(True, ts=ts, channel=where, found=True)
        extra: dict[str, Any] = {} if attempt is None else {"metadata": attempt.metadata()}
        try:
            if thread is None:
                answer = client.chat_postMessage(
                    channel=channel, text=payload["text"], blocks=payload["blocks"], **extra
                )
            else:
                answer = client.chat_postMessage(
                    channel=thread[0],
                    text=payload["text"],
                    blocks=payload["blocks"],
                    thread_ts=thread[1],
                    **extra,
                )
        except SlackApiError as exc:
            return _api_failure(exc)
        if thread is not None:
            self._update_parent(client, thread, payload)
        return SendResult(True, ts=answer.get("ts"), channel=answer.get("channel"))

    def _update_parent(
        self, client: WebClient, thread: tuple[str, str], payload: dict[str, Any]
    ) -> None:
        """The thread's first message shows the current state. Cosmetic: a failure is logged,
        and the reply (already posted) is not sent again for it."""
        try:
            client.chat_update(
                channel=thread[0], ts=thread[1], text=payload["text"], blocks=payload["blocks"]
            )
        except (SlackApiError, *_SEND_ERRORS) as exc:
            error = _api_failure(exc).error if isinstance(exc, SlackApiError) else repr(exc)
            log.warning("thread_update_failed", error=redact(error))

    def _channel_id(self, client: WebClient, channel: str) -> str | None:
        """A channel's id by its name (conversations.list; remembered for the process)."""
        name = channel.removeprefix("#")
        if name in self._ids:
            return self._ids[name]
        cursor: str | None = None
        for _ in range(CHECK_PAGES):
            page = client.conversations_list(
                types="public_channel,private_channel",
                exclude_archived=True,
                limit=1000,
                cursor=cursor,
            )
            for found in page.get("channels") or []:
                if found.get("name") == name and found.get("id"):
                    self._ids[name] = str(found["id"])
                    return self._ids[name]
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                break
        return None

    def _look_for(
        self,
        client: WebClient,
        channel: str,
        thread: tuple[str, str] | None,
        attempt: Attempt,
    ) -> tuple[str, str] | SendResult | None:
        """Where an earlier attempt of ``attempt``'s row arrived: (ts, channel id); None when
        it did not, or when it can't be looked up (then it is posted again, with a warning);
        a failed `SendResult` when Slack can't be asked now."""
        oldest = f"{int(attempt.queued_at.timestamp()) - CHECK_MARGIN}.000000"
        cursor: str | None = None
        try:
            where = thread[0] if thread is not None else None
            where = where or (channel if _CHANNEL_ID.match(channel) else attempt.channel)
            where = where or self._channel_id(client, channel)
            if where is None:
                log.warning("slack_send_unverifiable", channel=channel, reason="no such channel")
                return None
            for _ in range(CHECK_PAGES):
                if thread is None:
                    page = client.conversations_history(
                        channel=where,
                        oldest=oldest,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                else:
                    page = client.conversations_replies(
                        channel=where,
                        ts=thread[1],
                        oldest=oldest,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                for message in page.get("messages") or []:
                    if attempt.matches(message) and message.get("ts"):
                        return str(message["ts"]), where
                cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
                if not page.get("has_more") or cursor is None:
                    return None
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in _UNCHECKABLE:
                log.warning(
                    "slack_send_unverifiable",
                    channel=channel,
                    reason=error,
                    fix="give the bot channels:history and channels:read (groups:history and"
                    " groups:read for private channels) so an uncertain send is checked"
                    " before it is posted again",
                )
                return None
            failed = _api_failure(exc)
            if failed.permanent:
                return None  # posting fails the same way: a dead letter, not a stuck row
            return SendResult(
                False,
                retry_after=failed.retry_after,
                error=f"could not check whether the message arrived: {failed.error}",
                maybe_sent=True,
            )
        except _SEND_ERRORS as exc:
            return SendResult(
                False,
                error=f"could not check whether the message arrived ({type(exc).__name__})",
                maybe_sent=True,
            )
        log.warning("slack_send_unverifiable", channel=channel, reason="history too long")
        return None


def _api_failure(exc: SlackApiError) -> SendResult:
    status = exc.response.status_code
    error = redact(str(exc.response.get("error") or f"HTTP {status}"))
    if error in _PERMANENT_API_ERRORS:
        return SendResult(False, error=f"{error}: {_PERMANENT_API_ERRORS[error]}", permanent=True)
    return SendResult(
        False,
        retry_after=_retry_after(exc.response.headers),
        error=f"Slack API answered {error}",
        maybe_sent=status >= 500 or error in _MAYBE_POSTED,
    )
