"""Slack messages for alerts: Block Kit built with `slack_sdk.models.blocks`, plus a
plain `text` fallback. Pure: evaluations and states in, JSON-ready messages out.

Everything that comes from Langdock (key names, model names) goes through `name`, which
strips control and bidi-override characters, escapes ``& < >`` for mrkdwn and shows the value
as inline code, so a key called ``<!channel>`` or ``*x*`` is shown literally and pings no one.
The fallback ``text`` uses `plain`: the same, but inline code only where Slack would format.

slack-sdk is imported by the few functions that build blocks, when the first message is built:
importing any of it loads its web clients too (~20 ms), which a process with no Slack route (and
no `demo` console) never needs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from daemon.formatting import format_amount, format_metric, format_score
from daemon.money import format_percent
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation
from daemon.rules.durations import format_duration
from daemon.rules.lifecycle import AlertState
from daemon.rules.new_member import NewMemberEvaluation

if TYPE_CHECKING:
    from slack_sdk.models.blocks import Block, ContextBlock, DividerBlock, HeaderBlock, SectionBlock

EMOJI = {
    "info": ":large_blue_circle:",
    "warning": ":large_orange_circle:",
    "critical": ":red_circle:",
    "resolved": ":white_check_mark:",
    "period_ended": ":calendar:",
}
MAX_NAME = 80
# a span Slack's mrkdwn would format: a marker not inside a word, non-blank text, the same
# marker again not followed by a letter or digit
_FORMATTED = re.compile(r"(?<![^\W_])([*_~`])(?=\S).*?(?<=\S)\1(?![^\W_])", re.S)
MAX_SECTION = 2900  # Slack allows 3000 characters in a section's text
MAX_BLOCKS = 48  # of Slack's 50 per message
_BIDI = {
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
}


@dataclass(frozen=True)
class SlackMessage:
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks}


def escape(text: str) -> str:
    """Safe mrkdwn for untrusted text: no controls, no bidi tricks, ``& < >`` escaped."""
    cleaned = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
        if ch not in _BIDI
    )
    if len(cleaned) > MAX_NAME:
        cleaned = cleaned[: MAX_NAME - 1] + "…"
    return cleaned.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def name(text: str) -> str:
    """An untrusted name as inline code, so mrkdwn formatting in it shows literally."""
    return "`" + escape(text).replace("`", "ˋ") + "`"


def plain(text: str) -> str:
    """An untrusted name for a message's fallback ``text`` (notifications, and the lines of a
    grouped message): escaped like `escape`, and shown as inline code like `name` when Slack
    would format it (``*bold*``, ``_x_``, ``~x~``, a code span), so it shows literally there
    too. Other names stay as they are (``prod_web (key_4f1a)`` formats nothing)."""
    escaped = escape(text)
    return name(text) if _FORMATTED.search(escaped) else escaped


def _when(instant: datetime, tz: ZoneInfo) -> str:
    return f"{instant.astimezone(tz):%Y-%m-%d %H:%M %Z}"


def _period_text(ev: BudgetEvaluation, tz: ZoneInfo) -> str:
    start = ev.period.start.astimezone(tz)
    last = (ev.period.end - timedelta(seconds=1)).astimezone(tz)
    if ev.period.id.startswith("rolling-"):
        return f"rolling {ev.window} (to {_when(ev.now, tz)})"
    if start.date() == last.date():
        return f"{ev.window} {ev.period.id} ({start:%a %b %d %Y}, {tz.key})"
    return f"{ev.window} {ev.period.id} ({start:%b %d} – {last:%b %d %Y}, {tz.key})"


def _member_text(label: str) -> str:
    return name(label)


def _section(text: str) -> SectionBlock:
    from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock

    return SectionBlock(text=MarkdownTextObject(text=text[:MAX_SECTION]))


def _fields(pairs: Sequence[tuple[str, str]]) -> SectionBlock:
    from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock

    return SectionBlock(fields=[MarkdownTextObject(text=f"*{k}*\n{v}") for k, v in pairs])


def _header(text: str) -> HeaderBlock:
    from slack_sdk.models.blocks import HeaderBlock

    return HeaderBlock(text=text)


def _context(text: str) -> ContextBlock:
    from slack_sdk.models.blocks import ContextBlock, MarkdownTextObject

    return ContextBlock(elements=[MarkdownTextObject(text=text)])


def _divider() -> DividerBlock:
    from slack_sdk.models.blocks import DividerBlock

    return DividerBlock()


def _blocks(*blocks: Block) -> list[dict[str, Any]]:
    return [b.to_dict() for b in blocks]


def budget_message(
    ev: BudgetEvaluation,
    state: AlertState,
    tz: ZoneInfo,
    *,
    repeat: bool = False,
    mention: str | None = None,
    reached: Sequence[str] = (),
    came_true: bool = False,
) -> SlackMessage:
    """A budget alert. ``reached``: the member's lower thresholds crossed too (this message
    speaks for them); ``came_true``: a forecast alert of the member came true (the forecast's
    own alert when the message is about it, else the threshold that took over)."""
    condition = state.key.condition
    used = format_percent(ev.utilization)
    spend = format_amount(ev.spend, ev.unit)
    limit = format_amount(ev.limit, ev.unit)
    if condition == "forecast" and came_true:
        title = f"Budget limit reached: {ev.rule} (forecast came true)"
    elif condition == "forecast":
        title = f"Budget forecast over 100%: {ev.rule}"
    else:
        title = f"Budget {condition}% reached: {ev.rule}"
        if came_true:
            title += " (forecast came true)"
    if repeat:
        title = f"Still firing: {title}"
    pairs = [
        ("Member", _member_text(ev.member.label)),
        ("Window", escape(_period_text(ev, tz))),
        ("Spend", f"{spend} of {limit} ({used})"),
        ("Severity", f"{EMOJI[state.severity]} {state.severity}"),
    ]
    if reached:
        pairs.append(("Also reached", ", ".join(_condition_text(c) for c in reached)))
    if ev.forecast is not None:
        forecast = f"{format_amount(ev.forecast.projected, ev.unit)} by period end"
        if ev.forecast.crossing is not None:
            forecast += f"; 100% expected {_when(ev.forecast.crossing, tz)}"
        pairs.append(("Forecast", f"{forecast} ({ev.forecast.method.replace('_', ' ')})"))
    _add_contributors(pairs, ev.top_parts, lambda v: format_amount(v, ev.unit))
    text = (
        f"[{state.severity.upper()}] {title} — {plain(ev.member.label)}: {spend} of {limit}"
        f" ({used}), {escape(_period_text(ev, tz))}"
    )
    return _message(title, state, pairs, text, tz, mention)


def anomaly_message(
    ev: AnomalyEvaluation,
    state: AlertState,
    tz: ZoneInfo,
    *,
    repeat: bool = False,
    mention: str | None = None,
) -> SlackMessage:
    direction = "above" if state.key.condition == "up" else "below"
    title = f"Anomaly: {ev.metric} {direction} normal: {ev.rule}"
    if repeat:
        title = f"Still firing: {title}"
    observed, expected = (
        format_metric(ev.observed, ev.metric),
        format_metric(ev.expected, ev.metric),
    )
    window = f"{_when(ev.window.start, tz)} – {ev.window.end.astimezone(tz):%H:%M}"
    baseline = (
        f"{format_duration(ev.baseline.duration)} before the window,"
        f" {ev.seasonality.replace('_', ' ')}, {ev.points} points"
    )
    score = format_score(ev.score)
    pairs = [
        ("Member", _member_text(ev.member.label)),
        ("Window", window),
        ("Observed vs expected", f"{observed} vs {expected}"),
        ("Score", f"{score} (robust z)"),
        ("Baseline", baseline),
        ("Severity", f"{EMOJI[state.severity]} {state.severity}"),
    ]
    _add_contributors(pairs, ev.contributors, lambda v: format_metric(v, ev.metric))
    text = (
        f"[{state.severity.upper()}] {title} — {plain(ev.member.label)}: {observed} vs"
        f" expected {expected} (score {score}) in {window}"
    )
    return _message(title, state, pairs, text, tz, mention)


def new_member_message(
    ev: NewMemberEvaluation, state: AlertState, tz: ZoneInfo, *, mention: str | None = None
) -> SlackMessage:
    what = "API key" if ev.member.dimension == "api_key" else "model"
    title = f"New {what} in use: {ev.rule}"
    pairs = [
        ("Member", _member_text(ev.member.label)),
        ("First used", _when(ev.first_seen, tz)),
        ("Spend since", format_amount(ev.spend, "usd")),
        ("Severity", f"{EMOJI[state.severity]} {state.severity}"),
    ]
    _add_contributors(pairs, ev.top_parts, lambda v: format_amount(v, "usd"))
    text = (
        f"[{state.severity.upper()}] {title} — {plain(ev.member.label)} first used"
        f" {_when(ev.first_seen, tz)}, {format_amount(ev.spend, 'usd')} so far"
    )
    return _message(title, state, pairs, text, tz, mention)


def _add_contributors(
    pairs: list[tuple[str, str]],
    parts: Sequence[tuple[str, Decimal]],
    show: Callable[[Decimal], str],
) -> None:
    if parts:
        pairs.append(
            ("Top contributors", ", ".join(f"{name(label)} {show(v)}" for label, v in parts))
        )


def _condition_text(condition: str) -> str:
    return f"{condition}%" if condition[:1].isdigit() else condition


def resolved_message(
    state: AlertState,
    label: str,
    reason: str,
    tz: ZoneInfo,
    evaluation: BudgetEvaluation | AnomalyEvaluation | NewMemberEvaluation | None,
    *,
    still: Sequence[str] = (),
) -> SlackMessage:
    """An alert went back under (green), or its period ended (neutral: nothing went back
    under, a new period starts). ``still``: the member's lower alerts that keep firing."""
    key = state.key
    what = _condition_text(key.condition)
    ended = reason == "period ended"
    title = f"{'Period ended' if ended else 'Resolved'}: {key.rule} ({what})"
    emoji = EMOJI["period_ended" if ended else "resolved"]
    pairs = [
        ("Member", _member_text(label)),
        ("Cleared", f"{_when(state.resolved_at or state.since, tz)} ({escape(reason)})"),
    ]
    if still:
        pairs.append(("Still reached", ", ".join(_condition_text(c) for c in still)))
    if state.fired_at is not None:
        pairs.append(("Fired", _when(state.fired_at, tz)))
    if key.period:
        pairs.append(("Period", escape(key.period)))
    if isinstance(evaluation, BudgetEvaluation):
        pairs.append(
            (
                "Spend now",
                f"{format_amount(evaluation.spend, evaluation.unit)} of"
                f" {format_amount(evaluation.limit, evaluation.unit)}",
            )
        )
    elif isinstance(evaluation, AnomalyEvaluation):
        pairs.append(
            (
                "Now",
                f"{format_metric(evaluation.observed, evaluation.metric)} vs"
                f" {format_metric(evaluation.expected, evaluation.metric)}",
            )
        )
    tag = "PERIOD ENDED" if ended else "RESOLVED"
    text = f"[{tag}] {key.rule} ({what}) — {plain(label)}: {escape(reason)}"
    if still:
        text += f"; still reached: {', '.join(_condition_text(c) for c in still)}"
    return SlackMessage(
        text,
        _blocks(
            _header(f"{emoji} {title}"[:150]),
            _fields(pairs),
            _context(f"langdock-budget · {escape(key.id)}"),
        ),
    )


def group_message(lines: Sequence[str], worst: str, tz: ZoneInfo, now: datetime) -> SlackMessage:
    """Many alerts of one cycle to one route as one message, one line each."""
    title = f"{EMOJI.get(worst, '')} {len(lines)} alert changes from langdock-budget".strip()
    chunks: list[list[str]] = [[]]
    for line in lines:
        if sum(len(x) + 1 for x in chunks[-1]) + len(line) + 1 > MAX_SECTION:
            chunks.append([])
        chunks[-1].append(line)
    room = MAX_BLOCKS - 3
    if len(chunks) > room:
        dropped = sum(len(c) for c in chunks[room - 1 :])
        chunks = [*chunks[: room - 1], [f"…and {dropped} more"]]
    sections = [_section("\n".join(chunk)) for chunk in chunks if chunk]
    text = f"{len(lines)} alert changes: " + "; ".join(line.lstrip("• ") for line in lines[:10])
    return SlackMessage(
        text[:3000],
        _blocks(
            _header(title[:150]),
            *sections,
            _context(f"langdock-budget · {_when(now, tz)}"),
        ),
    )


def _message(
    title: str,
    state: AlertState,
    pairs: list[tuple[str, str]],
    text: str,
    tz: ZoneInfo,
    mention: str | None,
) -> SlackMessage:
    blocks: list[Block] = [_header(f"{EMOJI[state.severity]} {title}"[:150])]
    if mention:
        blocks.append(_section(mention))  # set in config by the operator: not escaped
    # Slack allows 10 fields per section.
    blocks += [_fields(pairs[i : i + 10]) for i in range(0, len(pairs), 10)]
    blocks += [
        _divider(),
        _context(f"langdock-budget · {escape(state.key.id)} · since {_when(state.since, tz)}"),
    ]
    return SlackMessage(f"{mention} {text}" if mention else text, _blocks(*blocks))


def summary_line(message: SlackMessage) -> str:
    """One bullet for a grouped message (the fallback text is already escaped)."""
    return "• " + message.text
