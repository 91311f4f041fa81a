"""Which ranges of each export the store holds, what to fetch next, and which rules can be
trusted yet. Pure: segments, rules and ``now`` go in, plans and verdicts come out.

The store keeps one truth per time range. A *segment* is a range fetched in one export call:
either one bucket (a local hour, "fine") or a *coarse* range of several buckets that never
crosses a local midnight. A first start (or a restart after downtime) fills what the budget
and report windows need coarsely, so budgets are right within a minute or two
(`poll_plan`); the background then refines coarse ranges into their hours, newest first
(`refine_plan`); the hours of a coarse range replace it only once all of them are in.
See docs/DESIGN.md, "First start: coarse to fine".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from daemon.rules.schema import AnomalyRule, AnyRule, BudgetRule
from daemon.rules.selection import UsageNeed
from daemon.rules.types import KEY_METRICS
from daemon.rules.windows import (
    bucket_end,
    bucket_start,
    buckets,
    calendar_period,
    is_calendar,
    window_period,
)

ExportKind = Literal["api-keys", "models"]
EXPORTS: tuple[ExportKind, ...] = ("api-keys", "models")
Why = Literal["running", "final", "settle", "gap", "refine", "history"]
# the spend windows of the tables and of `langdock_cost_usd` (see spend_windows.window_ranges)
REPORT_WINDOWS = ("day", "month", "24h", "7d")
# the models export (errors, latency) fills hours this recent in the poll, the rest later
RECENT_MODEL_HOURS = timedelta(hours=6)
# a coarse range a rolling window's edge reaches this soon is refined first
EDGE_LOOKAHEAD = timedelta(hours=26)


@dataclass(frozen=True, slots=True)
class Segment:
    """A range [start, end) fetched in one call, and when."""

    start: datetime
    end: datetime
    fetched_at: datetime


@dataclass(frozen=True, slots=True)
class Fetch:
    """One export call to make: the range, why, and whether its rows wait in the staging
    area until the whole coarse range they refine is in (``staged``)."""

    export: ExportKind
    start: datetime
    end: datetime
    why: Why
    staged: bool = False
    within: tuple[datetime, datetime] | None = None  # the coarse range a staged hour refines
    hours: tuple[datetime, ...] = ()  # all the hours of ``within``: it is replaced once all are in


def is_fine(segment: Segment, tz: ZoneInfo) -> bool:
    return segment.end == bucket_end(segment.start, tz)


def uncovered(
    segments: Iterable[Segment], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) that no segment covers, oldest first."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    for segment in sorted(segments, key=lambda s: s.start):
        if segment.end <= cursor:
            continue
        if segment.start >= end:
            break
        if segment.start > cursor:
            gaps.append((cursor, segment.start))
        cursor = max(cursor, segment.end)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def horizon(now: datetime, tz: ZoneInfo, backfill: timedelta) -> datetime:
    """The oldest bucket the daemon keeps for the configured backfill."""
    return bucket_start(now - backfill, tz)


@dataclass(frozen=True)
class Windows:
    """Where the windows that must be right first begin: every budget rule's window and the
    report windows (today, month, 24h, 7d); ``rolling`` are the starts that move hourly."""

    starts: tuple[datetime, ...]
    rolling: tuple[datetime, ...]


def first_windows(rules: Sequence[AnyRule], now: datetime, tz: ZoneInfo) -> Windows:
    names = [*REPORT_WINDOWS, *(r.window for r in rules if isinstance(r, BudgetRule))]
    starts, rolling = [], []
    for name in dict.fromkeys(names):
        start = window_period(name, now, tz).start
        starts.append(start)
        if not is_calendar(name):
            rolling.append(start)
    return Windows(tuple(starts), tuple(rolling))


def _edge(start: datetime, tz: ZoneInfo) -> datetime:
    """The first bucket a rolling window starting at ``start`` counts (buckets that start
    inside the window)."""
    return start if bucket_start(start, tz) == start else bucket_end(start, tz)


def _fine_zones(rolling: Iterable[datetime], tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """Each rolling edge's bucket on its own, so the ranges around it end and begin there: the
    window is exact now, and an hour from now too (its edge is then where a range begins)."""
    return [(_edge(s, tz), bucket_end(_edge(s, tz), tz)) for s in rolling]


def coarse_pieces(
    start: datetime, end: datetime, tz: ZoneInfo, fine_zones: Sequence[tuple[datetime, datetime]]
) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut into export ranges: whole local days (or their parts), never across
    a local midnight, and single buckets inside ``fine_zones``."""
    piece: datetime | None = None
    day_end = start
    for bucket in buckets(start, end, tz):
        fine = any(lo <= bucket.start < hi for lo, hi in fine_zones)
        if piece is not None and (fine or bucket.start >= day_end):
            yield piece, bucket.start
            piece = None
        if bucket.start >= day_end:
            day_end = calendar_period("day", bucket.start, tz).end
        if fine:
            yield bucket.start, bucket.end
        elif piece is None:
            piece = bucket.start
    if piece is not None:
        yield piece, end


def poll_plan(
    now: datetime,
    tz: ZoneInfo,
    *,
    backfill: timedelta,
    settle_after: timedelta,
    segments: Mapping[ExportKind, Sequence[Segment]],
    windows: Windows,
    staged: Iterable[datetime] = (),
) -> list[Fetch]:
    """What the cycle fetches before it evaluates, newest first: the running bucket, each
    bucket's final and late-data fetch, every gap of the backfill (coarse, see
    `coarse_pieces`: a local day per call, cut at the rolling windows' edges, so budgets are
    exact and every key's first use is known), and the hours of a coarse range a rolling
    window's edge has moved into. A steady-state poll makes 2 calls, at most 4 when an hour
    ends."""
    oldest = horizon(now, tz, backfill)
    current, running_end = bucket_start(now, tz), bucket_end(now, tz)
    zones = _fine_zones(windows.rolling, tz)
    plan: list[Fetch] = []
    for export in EXPORTS:
        segs = [s for s in segments.get(export, ()) if s.end > oldest]
        for s in segs:
            if s.end > now:
                plan.append(Fetch(export, s.start, s.end, "running"))
            elif s.fetched_at < s.end:
                plan.append(Fetch(export, s.start, s.end, "final"))
            elif s.fetched_at < s.end + settle_after <= now:
                plan.append(Fetch(export, s.start, s.end, "settle"))
        if not any(s.start <= current < s.end for s in segs):
            plan.append(Fetch(export, current, running_end, "running"))
        if export == "api-keys":
            for lo, hi in uncovered(segs, oldest, current):
                plan += [Fetch(export, a, b, "gap") for a, b in coarse_pieces(lo, hi, tz, zones)]
            have = set(staged)
            for segment in _edge_ranges(segs, windows.rolling, oldest, tz):
                plan += _refinement(export, segment, have, tz, "refine")
        else:
            recent = max(oldest, bucket_start(now - RECENT_MODEL_HOURS, tz))
            for lo, hi in uncovered(segs, recent, current):
                plan += [Fetch(export, b.start, b.end, "gap") for b in buckets(lo, hi, tz)]
    plan.sort(key=lambda f: f.start, reverse=True)  # newest first: current windows fill first
    return plan


def refine_plan(
    now: datetime,
    tz: ZoneInfo,
    *,
    backfill: timedelta,
    segments: Mapping[ExportKind, Sequence[Segment]],
    staged: Iterable[datetime],
    windows: Windows,
) -> list[Fetch]:
    """The background's work: the hours of every coarse range (staged until all are in) and
    every hour of the backfill never fetched. Coarse ranges a rolling edge reaches within a
    day come first, then newest first. Hours fetched before they settled are fetched once
    more by the poll (`poll_plan`'s late-data rule), as any other hour."""
    oldest = horizon(now, tz, backfill)
    current = bucket_start(now, tz)
    have = set(staged)
    edges = [(s, s + EDGE_LOOKAHEAD) for s in windows.rolling]
    work: list[tuple[bool, Fetch]] = []
    for export in EXPORTS:
        segs = [s for s in segments.get(export, ()) if s.end > oldest]
        for s in segs:
            if is_fine(s, tz):
                continue
            urgent = any(s.start < hi and lo < s.end for lo, hi in edges)
            work += [(urgent, fetch) for fetch in _refinement(export, s, have, tz, "refine")]
        for lo, hi in uncovered(segs, oldest, current):
            work += [(False, Fetch(export, b.start, b.end, "history")) for b in buckets(lo, hi, tz)]
    work.sort(key=lambda item: (not item[0], -item[1].start.timestamp(), item[1].export))
    return [fetch for _, fetch in work]


def _refinement(
    export: ExportKind, segment: Segment, have: set[datetime], tz: ZoneInfo, why: Why
) -> list[Fetch]:
    """The hours of a coarse range not staged yet, each to be staged until all are in."""
    hours = tuple(b.start for b in buckets(segment.start, segment.end, tz))
    within = (segment.start, segment.end)
    return [
        Fetch(export, b.start, b.end, why, True, within, hours)
        for b in buckets(segment.start, segment.end, tz)
        if b.start not in have
    ]


def _edge_ranges(
    segments: Iterable[Segment], rolling: Iterable[datetime], oldest: datetime, tz: ZoneInfo
) -> list[Segment]:
    """Coarse ranges a rolling window's edge lies inside: its total is not exact until they
    are hour by hour (the edge moves into a new local day once a day)."""
    edges = [_edge(s, tz) for s in rolling if s > oldest]
    return [
        s for s in segments if not is_fine(s, tz) and any(s.start < edge < s.end for edge in edges)
    ]


def fine_start(segments: Sequence[Segment], now: datetime, tz: ZoneInfo) -> datetime | None:
    """Where the unbroken hour-by-hour history up to now begins: hourly series (baselines,
    forecast profiles) look no further back. None before anything was fetched."""
    if not segments:
        return None
    by_end = {s.end: s for s in segments if is_fine(s, tz)}
    cursor = bucket_start(now, tz)
    running = by_end.get(bucket_end(now, tz))
    if running is None:
        return cursor
    while (previous := by_end.get(cursor)) is not None:
        cursor = previous.start
    return cursor


def _export_of(need: UsageNeed) -> ExportKind:
    return "api-keys" if need.metric in KEY_METRICS else "models"


def warming_rules(
    needs: Iterable[UsageNeed],
    segments: Mapping[ExportKind, Sequence[Segment]],
    now: datetime,
    tz: ZoneInfo,
    backfill: timedelta,
) -> dict[str, str]:
    """Rules whose history is not complete yet, with the reason: they are shown as warming
    up and do not fire. A budget needs its window covered and no coarse range across its
    edge; an anomaly rule needs its whole baseline hour by hour; new-member rules never
    wait (what the first start finds is never new)."""
    oldest = horizon(now, tz, backfill)
    warming: dict[str, str] = {}
    verdicts: dict[tuple[bool, ExportKind, datetime, datetime], str | None] = {}
    for need in needs:
        if need.rule.name in warming or not isinstance(need.rule, BudgetRule | AnomalyRule):
            continue
        export = _export_of(need)
        start = need.start
        if isinstance(need.rule, BudgetRule):  # a forecast's profile reads fine hours only
            start = window_period(need.rule.window, now, tz).start
        lo, hi = max(start, oldest), min(need.end, now)
        if lo >= hi:
            continue
        anomaly = isinstance(need.rule, AnomalyRule)
        key = (anomaly, export, lo, hi)  # 200 rules share a handful of windows
        if key not in verdicts:
            verdicts[key] = _warming_reason(anomaly, segments.get(export, ()), lo, hi, tz)
        reason = verdicts[key]
        if reason is not None:
            warming[need.rule.name] = reason
    return warming


def _warming_reason(
    anomaly: bool, segs: Sequence[Segment], lo: datetime, hi: datetime, tz: ZoneInfo
) -> str | None:
    """Why [lo, hi) is not complete for a rule (None: it is)."""
    inside = [s for s in segs if s.start < hi and s.end > lo]
    missing = uncovered(inside, max(lo, bucket_start(lo, tz)), hi)
    if anomaly:
        fine = sum(
            (min(s.end, hi) - max(s.start, lo) for s in inside if is_fine(s, tz)),
            timedelta(0),
        )
        if missing or fine < hi - lo:
            return f"{100 * fine / (hi - lo):.0f} % of its hourly baseline in"
        return None
    if missing:
        return "window not fully fetched yet"
    edge = _edge(lo, tz)
    if any(s.start < edge < s.end and not is_fine(s, tz) for s in inside):
        return "rolling window edge still at day grain"
    return None


@dataclass(frozen=True)
class BackfillProgress:
    """How much of the backfill is in hour by hour (both exports), and what is left."""

    buckets: int  # buckets in the backfill range, both exports
    fine: int  # of those, in the store (or staged) hour by hour
    coarse: int  # coarse ranges still waiting for their hours

    @property
    def remaining(self) -> int:
        return self.buckets - self.fine

    @property
    def ratio(self) -> float:
        return self.fine / self.buckets if self.buckets else 1.0

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def eta(self, per_minute: float) -> timedelta:
        return timedelta(minutes=self.remaining / per_minute) if per_minute > 0 else timedelta(0)

    def describe(self, per_minute: float) -> str:
        """One line for logs, `status` and `once`."""
        if self.done:
            return f"hourly history complete ({self.buckets} buckets)"
        minutes = self.eta(per_minute).total_seconds() / 60
        left = "under a minute" if minutes < 1 else f"about {round(minutes)} min"
        return (
            f"hourly history {100 * self.ratio:.0f} % ({self.fine} of {self.buckets} buckets),"
            f" {left} left at {per_minute:.0f} calls/min"
        )


def backfill_progress(
    segments: Mapping[ExportKind, Sequence[Segment]],
    staged: Iterable[datetime],
    now: datetime,
    tz: ZoneInfo,
    backfill: timedelta,
) -> BackfillProgress:
    oldest = horizon(now, tz, backfill)
    current = bucket_start(now, tz)
    per_export = sum(1 for _ in buckets(oldest, current, tz))
    staged_set = {t for t in staged if oldest <= t < current}
    fine = coarse = 0
    for export in EXPORTS:
        for s in segments.get(export, ()):
            if s.start < oldest or s.start >= current:
                continue
            if is_fine(s, tz):
                fine += 1
            else:
                coarse += 1
    return BackfillProgress(len(EXPORTS) * per_export, fine + len(staged_set), coarse)
