"""The outbox in `status`: messages waiting for Slack (why, and until when) and the dead
letters Slack refused for good."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from daemon.formatting import grid
from daemon.rules.durations import format_duration
from daemon.rules.lifecycle import AlertKey
from daemon.rules.types import WORKSPACE
from daemon.store import OutboxItem


def member_text(member: str, labels: Mapping[str, str]) -> str:
    """A member for people: "workspace", else its label ("name (id)") or its id."""
    return "workspace" if member == WORKSPACE else labels.get(member, member)


def condition_label(condition: str) -> str:
    return f"{condition}%" if condition[:1].isdigit() else condition


MAX_ERROR = 60


def _short(error: str, most: int = MAX_ERROR) -> str:
    return error if len(error) <= most else error[: most - 1] + "…"


def _when(at: datetime, tz: ZoneInfo, now: datetime) -> str:
    """A next try: "now", or its local time (with the date when not today) and how long."""
    if at <= now:
        return "now"
    local = at.astimezone(tz)
    today = local.date() == now.astimezone(tz).date()
    shown = f"{local:%H:%M}" if today else f"{local:%Y-%m-%d %H:%M}"
    left = timedelta(seconds=int((at - now).total_seconds() + 59) // 60 * 60)
    return f"{shown} (in {format_duration(left)})"


def _about(item: OutboxItem, labels: Mapping[str, str]) -> str:
    keys = [AlertKey.parse(a) for a in item.alert_ids]
    if not keys:
        return "-"
    first = keys[0]
    about = f"{first.rule} {member_text(first.member, labels)}"
    about += f" {condition_label(first.condition)}".rstrip()
    if len(keys) > 1:
        about += f" (+{len(keys) - 1} more)"
    return about


def _pending_note(
    item: OutboxItem, next_at: datetime, error: str | None, tz: ZoneInfo, now: datetime
) -> str:
    """``next_at``: when it may go out, its route's earlier messages considered."""
    notes = []
    own = item.next_attempt_at or next_at
    if next_at > own:
        notes.append(f"behind an earlier message of its route: next try {_when(next_at, tz, now)}")
    elif next_at > now or error:
        notes.append(f"next try {_when(next_at, tz, now)}")
    if item.uncertain:
        notes.append(
            "may have arrived: looked for in Slack before posting again"
            if item.route.startswith("bot:")
            else "may have arrived (a webhook can't be checked: posted again)"
        )
    if error:
        notes.append(f"last error: {_short(error)}")
    return "; ".join(notes)


def render_outbox(
    waiting: Sequence[tuple[OutboxItem, datetime, str | None]],
    tz: ZoneInfo,
    now: datetime,
    *,
    labels: Mapping[str, str] | None = None,
    silenced: Callable[[AlertKey], bool] | None = None,
) -> str:
    """Messages still to be sent (oldest first): what about, how often tried, why waiting and
    until when (a wait Slack asked for holds its route's later messages too); then the dead
    letters, which Slack refused for good."""
    pending = [w for w in waiting if not w[0].dead]
    dead = [w for w in waiting if w[0].dead]
    if not waiting:
        return "Outbox: empty"
    labels = labels or {}
    rows = []
    route_wait: dict[str, datetime] = {}  # a route moves when its oldest message may go
    heads: list[datetime] = []
    for item, next_at, error in pending:
        keys = [AlertKey.parse(a) for a in item.alert_ids]
        if keys and silenced is not None and all(silenced(k) for k in keys):
            rows.append(_row(item, tz, labels, "silenced: will be dropped, not sent"))
            continue
        if item.route not in route_wait:
            heads.append(next_at)
        route_wait[item.route] = max(next_at, route_wait.get(item.route, next_at))
        note = _pending_note(item, route_wait[item.route], error, tz, now)
        rows.append(_row(item, tz, labels, note))
    lines = []
    if pending:
        title = f"Outbox: {len(pending)} waiting"
        if heads and min(heads) > now:
            title += f", next try {_when(min(heads), tz, now)}"
        headers = ["queued", "route", "kind", "about", "tries", "note"]
        lines += [title, *grid(headers, rows, right={4})]
    else:
        lines.append("Outbox: empty")
    if dead:
        lines += ["", *render_dead_letters([item for item, _, _ in dead], tz, labels)]
    return "\n".join(lines)


def _row(item: OutboxItem, tz: ZoneInfo, labels: Mapping[str, str], note: str) -> list[str]:
    return [
        f"{item.created_at.astimezone(tz):%Y-%m-%d %H:%M}",
        item.route,
        item.kind,
        _about(item, labels),
        str(item.attempts),
        note,
    ]


def render_dead_letters(
    dead: Sequence[OutboxItem], tz: ZoneInfo, labels: Mapping[str, str]
) -> list[str]:
    """Messages Slack refused for good, with its answer (and the fix)."""
    rows = [
        [
            f"{item.created_at.astimezone(tz):%Y-%m-%d %H:%M}",
            item.route,
            item.kind,
            _about(item, labels),
            _short(item.last_error or "-", 2 * MAX_ERROR),
        ]
        for item in dead
    ]
    title = (
        f"Dead letters: {len(dead)} (Slack refused them for good; each goes out again once the"
        " config changes its route: a new webhook_url, token, api_url or channel)"
    )
    return [title, *grid(["queued", "route", "kind", "about", "Slack's answer"], rows, set())]
