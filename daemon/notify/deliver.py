"""Delivering the outbox (`deliver`): the last stage of the notification pipeline. The senders
are `daemon.notify.senders` (console) and `daemon.notify.slack.sender` (slack-sdk).

`deliver` sends the outbox oldest first, one route's messages in order, removing an item only
after Slack acknowledged it. Waits are kept with the outbox row (``next_attempt_at``), so they
hold across cycles and restarts:

- 429 and 5xx: a few tries per cycle with backoff; a ``Retry-After`` of up to `MAX_WAIT` is
  waited out in the cycle, a longer one (or one left after the last try) is stored whatever
  its length, and the route's messages wait for it.
- An uncertain send (no answer, or a Web API error after which Slack may have posted) is
  never blindly repeated: the row is marked uncertain (before each post too, so a crash
  mid-send counts) and the next attempt looks for it in Slack first (bot token routes, by
  message metadata). One that may still be in flight waits `SETTLE` before that look.
- A refusal for good (bad token, unknown channel, deleted webhook) makes a *dead letter*:
  kept, shown in `status`, counted, and re-queued by `requeue_dead_letters` (every `deliver`
  starts with it) once the config sends its route somewhere else.
- A message whose alerts are all silenced when its turn comes is dropped unsent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from daemon.notify.senders import Attempt, Sender, SendResult
from daemon.notify.silence import silence_matcher
from daemon.rules.lifecycle import AlertKey
from daemon.store import OutboxItem, Store

TRIES_PER_ATTEMPT = 3
MAX_WAIT = 30.0  # the longest wait inside one cycle; longer ones are stored with the row
SETTLE = timedelta(seconds=60)  # after a send that got no answer, before looking for it
Sleep = Callable[[float], Awaitable[None]]
log = structlog.get_logger("langdock_budget.notify")

# follow-ups that go into the thread of their alert's first message (bot token routes)
THREADED = ("repeat", "resolved", "superseded")
# kinds whose alerts count as not announced when the message is dropped for a silence, so
# the firing message goes out when the silence ends
ANNOUNCING = ("firing", "superseded", "group")


@dataclass
class DeliveryReport:
    sent: int = 0  # found already posted included
    deferred: int = 0  # tried (or behind one that was) and still queued
    rejected: int = 0  # refused for good this time: now dead letters
    silenced: int = 0  # dropped unsent: every alert of the message was silenced by then
    waiting: int = 0  # not tried: Slack asked to wait (or an uncertain send settles)
    found: int = 0  # an earlier, uncertain attempt had arrived: not posted again
    requeued: int = 0  # dead letters whose route changed, queued again
    next_attempt: datetime | None = None  # the earliest stored wait, when something waits

    @property
    def ok(self) -> bool:
        return not self.deferred and not self.rejected


def requeue_dead_letters(store: Store, sender: Sender, *, everything: bool = False) -> int:
    """Queue again the dead letters whose route the config changed: the route the message
    would take now differs (its rule's channel or webhook moved), or the same route now
    points elsewhere (a new webhook URL, token or API URL). A dead letter from before targets
    were recorded counts as changed only when its route name did. ``everything``: all of
    them (an operator who fixed Slack's side, say invited the bot). Returns how many."""
    requeued = 0
    for item in store.outbox_dead_letters():
        route = sender.route_now(item)
        target = sender.target(route) if route is not None else None
        if route is None or target is None:
            continue  # no such route any more: it could only fail again
        moved = route != item.route or (item.target is not None and target != item.target)
        if moved or everything:
            store.outbox_requeue(item.id, route)
            requeued += 1
            log.info("dead_letter_requeued", route=route, was=item.route, kind=item.kind)
    return requeued


async def deliver(
    store: Store,
    sender: Sender,
    now: Callable[[], datetime],
    *,
    sleep: Sleep = asyncio.sleep,
    tries: int = TRIES_PER_ATTEMPT,
    settle: timedelta = SETTLE,
) -> DeliveryReport:
    """Send what the outbox holds, oldest first; a route that keeps failing waits a cycle,
    and a route whose oldest message Slack asked to wait for waits as long as asked.

    A message about alerts that are all silenced now (the silence came after it was queued)
    is dropped and counted in ``silenced``; a dropped firing message counts as never sent, so
    it goes out when the silence ends if the alert still fires.
    """
    report = DeliveryReport(requeued=requeue_dead_letters(store, sender))
    held: dict[str, str] = {}  # route -> "deferred" | "waiting": its later messages wait too
    at = now()
    silences = store.silences(at)
    silenced = silence_matcher(silences, store.api_key_names() if silences else {}, at)
    for item in store.outbox_pending():
        if item.alert_ids and all(silenced(AlertKey.parse(a)) for a in item.alert_ids):
            store.outbox_drop(item.id, item.alert_ids if item.kind in ANNOUNCING else ())
            report.silenced += 1
            log.info("notification_silenced", route=item.route, kind=item.kind)
            continue
        if held.get(item.route) == "waiting":
            report.waiting += 1  # keep the order of one route's messages
            continue
        if item.route in held:
            report.deferred += 1
            continue
        if item.next_attempt_at is not None and item.next_attempt_at > at:
            held[item.route] = "waiting"
            report.waiting += 1
            continue
        result = await _attempts(store, sender, item, now, sleep, tries, settle)
        if result.elsewhere:
            report.deferred += 1
            held[item.route] = "deferred"
            log.warning("notification_taken_elsewhere", route=item.route, kind=item.kind)
            continue
        if result.ok:
            store.outbox_sent(item.id)
            _remember(store, item, result)
            report.sent += 1
            report.found += result.found
            log.info(
                "notification_sent",
                route=item.route,
                kind=item.kind,
                alerts=len(item.alert_ids),
                **({"found_already_posted": True} if result.found else {}),
            )
        elif result.permanent:
            store.outbox_reject(item.id, result.error, sender.target(item.route))
            report.rejected += 1
            log.error("notification_rejected", route=item.route, error=result.error)
        else:
            failed_at = now()
            wait = timedelta(seconds=result.retry_after or 0)
            if result.in_flight:
                wait = max(wait, settle)
            error = result.error
            if result.retry_after is not None:
                error += f" (Retry-After: {result.retry_after:g} s)"
            store.outbox_retry(
                item.id, item.attempts + 1, failed_at + wait, error, uncertain=result.maybe_sent
            )
            held[item.route] = "deferred"
            report.deferred += 1
            log.warning(
                "notification_deferred",
                route=item.route,
                error=error,
                attempts=item.attempts + 1,
                next_attempt=(failed_at + wait).isoformat(),
                uncertain=result.maybe_sent,
                fix="Slack or the network is failing; the message stays queued",
            )
    report.next_attempt = store.outbox_next_attempt()
    return report


async def _attempts(
    store: Store,
    sender: Sender,
    item: OutboxItem,
    now: Callable[[], datetime],
    sleep: Sleep,
    tries: int,
    settle: timedelta,
) -> SendResult:
    """Up to ``tries`` sends of one item in this cycle; stops early when Slack asks for a
    wait longer than `MAX_WAIT` or when a send may still be in flight."""
    thread = None
    if item.route.startswith("bot:") and item.kind in THREADED and item.thread_alert:
        thread = store.thread_of(item.thread_alert)
    channel = store.route_channel(item.route) if item.route.startswith("bot:") else None
    # what a crash from here on leaves; whether to look first is what the row says now
    claim = store.outbox_sending(item.id, now() + settle, due=now())
    if claim is None:
        return SendResult(False, error="taken by another replica", elsewhere=True)
    attempt = Attempt(item.id, item.created_at, check=claim.uncertain, channel=channel)
    result = SendResult(False)
    for n in range(tries):
        if n and store.outbox_sending(item.id, now() + settle) is None:
            return SendResult(False, error="taken by another replica", elsewhere=True)
        result = await asyncio.to_thread(sender.send, item.route, item.payload, thread, attempt)
        if result.ok or result.permanent or result.in_flight:
            break
        attempt = replace(attempt, check=result.maybe_sent)
        wait = result.retry_after if result.retry_after is not None else 2.0**n
        if wait > MAX_WAIT or n + 1 == tries:
            break
        await sleep(wait)
    return result


def _remember(store: Store, item: OutboxItem, result: SendResult) -> None:
    """What a sent message teaches: the channel id of its route (a bot route named by channel
    name; read back by id when a send is uncertain) and where its alert's thread is."""
    thread = None
    if item.route.startswith("bot:") and item.kind in THREADED and item.thread_alert:
        thread = store.thread_of(item.thread_alert)
    if item.route.startswith("bot:") and thread is None and result.channel:
        store.set_route_channel(item.route, result.channel)
    _remember_thread(store, item, thread, result)


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
