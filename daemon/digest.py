"""Spend digests: a daily or weekly summary for Slack (config `digests:`).

The digest covers the last complete day or ISO week in the configured zone: total spend and
the change against the period before, the top 5 keys and models, every budget's use and
forecast now, the anomalies that fired in the period, and the keys first seen in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from daemon.config import Config, DigestConfig
from daemon.cycle import evaluate_rules
from daemon.formatting import format_amount
from daemon.money import format_percent, format_usd
from daemon.notify.slack.blocks import SlackMessage, escape, name
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.schema import AnomalyRule
from daemon.rules.windows import Period, calendar_period
from daemon.store import OutboxItem, Store

TOP = 5
PeriodName = Literal["day", "week"]


@dataclass(frozen=True)
class Digest:
    period: Period
    total: Decimal
    previous_total: Decimal
    top_keys: list[tuple[str, Decimal]]
    top_models: list[tuple[str, Decimal]]
    budgets: list[BudgetEvaluation]
    anomalies: list[tuple[datetime, str, str, str]]  # at, rule, member, direction
    new_keys: list[tuple[str, datetime]]


def _top(totals: dict[str, Decimal]) -> list[tuple[str, Decimal]]:
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:TOP]


def build_digest(store: Store, config: Config, now: datetime, period: PeriodName) -> Digest:
    tz = config.tz
    current = calendar_period(period, now, tz)
    last = calendar_period(period, current.start - timedelta(microseconds=1), tz)
    before = calendar_period(period, last.start - timedelta(microseconds=1), tz)
    keys: dict[str, Decimal] = {}
    models: dict[str, Decimal] = {}
    for t in store.key_model_totals(last.start, last.end):
        label = f"{t.api_key_name} ({t.api_key_id})"
        keys[label] = keys.get(label, Decimal(0)) + t.cost_usd
        models[t.model] = models.get(t.model, Decimal(0)) + t.cost_usd
    previous = sum(
        (t.cost_usd for t in store.key_model_totals(before.start, before.end)), Decimal(0)
    )
    shown = [
        e
        for table in evaluate_rules(store, config, now, persist=False).budget_tables
        for e in table.top(TOP)
    ]
    anomaly_rules = {r.name for r in config.rules if isinstance(r, AnomalyRule)}
    names = store.api_key_names()
    anomalies = [
        (at, rule, names.get(member, member), cond)
        for at, kind, rule, member, cond, _sev in store.alert_events(last.start, last.end)
        if kind == "firing" and rule in anomaly_rules
    ]
    new_keys = sorted(
        (f"{names.get(k, k)} ({k})", seen)
        for k, seen in store.first_seen().get("api_key", {}).items()
        if last.start <= seen < last.end
    )
    return Digest(
        last,
        sum(keys.values(), Decimal(0)),
        previous,
        _top(keys),
        _top(models),
        shown,
        anomalies,
        new_keys,
    )


def _lines(items: Sequence[str]) -> str:
    return "\n".join(items) if items else "_none_"


def digest_message(digest: Digest, tz: ZoneInfo) -> SlackMessage:
    # slack-sdk loads its web clients too: only when a digest is built (daemon.notify.slack.blocks)
    from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

    kind = "Daily" if digest.period.duration <= timedelta(hours=25) else "Weekly"
    title = f"{kind} LLM spend digest: {digest.period.id}"
    if digest.previous_total:
        change = (digest.total - digest.previous_total) / digest.previous_total
        versus = f"{'+' if change >= 0 else ''}{format_percent(change)} vs the period before"
    else:
        versus = "no spend in the period before"
    budgets = []
    for b in digest.budgets:
        line = (
            f"• {escape(b.rule)} {name(b.member.label)}: {format_amount(b.spend, b.unit)}"
            f" of {format_amount(b.limit, b.unit)} ({format_percent(b.utilization)})"
        )
        if b.forecast is not None:
            line += f", forecast {format_amount(b.forecast.projected, b.unit)}"
        budgets.append(line)
    anomalies = [
        f"• {at.astimezone(tz):%a %H:%M} {escape(rule)} {name(member)} ({direction})"
        for at, rule, member, direction in digest.anomalies[:20]
    ]
    new_keys = [
        f"• {name(label)} first used {seen.astimezone(tz):%a %H:%M}"
        for label, seen in digest.new_keys[:20]
    ]
    top_keys = [f"• {name(k)} {format_usd(v)}" for k, v in digest.top_keys]
    top_models = [f"• {name(m)} {format_usd(v)}" for m, v in digest.top_models]
    sections = [
        f"*Total* {format_usd(digest.total)} ({versus})",
        f"*Top keys*\n{_lines(top_keys)}",
        f"*Top models*\n{_lines(top_models)}",
        f"*Budgets now*\n{_lines(budgets)}",
        f"*Anomalies in the period*\n{_lines(anomalies)}",
        f"*New keys*\n{_lines(new_keys)}",
    ]
    blocks = [HeaderBlock(text=f":bar_chart: {title}"[:150]).to_dict()]
    blocks += [SectionBlock(text=MarkdownTextObject(text=s[:2900])).to_dict() for s in sections]
    blocks.append(
        ContextBlock(elements=[MarkdownTextObject(text=f"langdock-budget · {tz.key}")]).to_dict()
    )
    text = f"{title}: {format_usd(digest.total)} ({versus})"
    return SlackMessage(text, blocks)


def queue_digest(
    store: Store, route: str, message: SlackMessage, now: datetime, mark: str | None = None
) -> bool:
    """Queue the digest; with ``mark`` only once per mark, whichever process (or replica)
    asks (the scheduled digests: `digest_mark`). False: it was queued before."""
    item = OutboxItem(route, "digest", [], None, message.payload(), now)
    if mark is None:
        store.queue([item])
        return True
    return store.queue_once([item], mark)


def digest_mark(period: PeriodName, now: datetime, tz: ZoneInfo) -> str:
    """The scheduled digest of the period before ``now``'s: queued once (`queue_digest`)."""
    current = calendar_period(period, now, tz)
    return f"digest:{period}:{int(current.start.timestamp())}"


def missed_digests(
    digests: Sequence[DigestConfig], now: datetime, tz: ZoneInfo, grace: timedelta
) -> list[tuple[PeriodName, datetime]]:
    """The digests whose local time passed within ``grace`` before ``now``, with the instant
    each was due: a replica that starts leading right after another died sends them as of
    that instant (`queue_digest` keeps each once)."""
    missed: list[tuple[PeriodName, datetime]] = []
    local = now.astimezone(tz)
    for digest in digests:
        hour, minute = (int(x) for x in digest.at.split(":"))
        for days_back in (0, 1):
            day = (local - timedelta(days=days_back)).date()
            due = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
            weekday_ok = digest.period == "day" or _WEEKDAYS[due.weekday()] == digest.weekday
            if weekday_ok and due <= now < due + grace:
                missed.append((digest.period, due))
                break
    return missed


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
