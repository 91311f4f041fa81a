"""One daemon cycle: poll Langdock into the store, then evaluate every rule.

The I/O shell around the pure engine: it decides how much history the rules need, loads it
from the store into a `UsageIndex`, runs `rules.engine.evaluate` with the stored alert
states, hands the result to the notification pipeline (`daemon.notify`: it says which
members' contributors its messages name, loaded here and handed back for rendering) and
saves the new states with the queued messages. `once`, `demo` and `run` all go through
here; for `run` (``metrics=True``) it last loads what `/metrics` shows (`daemon.published`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog

from daemon.config import Config
from daemon.coverage import (
    BackfillProgress,
    Segment,
    backfill_progress,
    fine_start,
    first_windows,
    poll_plan,
    warming_rules,
)
from daemon.ingest import PollReport, Progress, load_segments, poll, store_failure
from daemon.langdock.pacing import Pacer
from daemon.notify import (
    SETTLE,
    DeliveryReport,
    Sender,
    Sleep,
    decide,
    deliver,
    render,
    route_for,
    silence_matcher,
)
from daemon.published import Published, load_published
from daemon.rules.engine import EngineResult, evaluate, usage_wanted
from daemon.rules.schema import AnyRule
from daemon.rules.selection import (
    PartsQuery,
    Selection,
    SelectionFilter,
    parts_series,
    selection_filters,
    selection_of,
)
from daemon.rules.series import Raw, Series, ts
from daemon.rules.usage import UsageIndex
from daemon.rules.windows import bucket_end, bucket_start
from daemon.store import DB_ERRORS, OutboxItem, Store

if TYPE_CHECKING:
    from daemon.langdock import LangdockClient

log = structlog.get_logger("langdock_budget.cycle")


@dataclass(frozen=True)
class Readiness:
    """How complete the store's history is at one instant: the backfill's progress, the
    rules still warming up (with why) and where the hour-by-hour history begins."""

    progress: BackfillProgress
    warming: dict[str, str]
    fine_start: datetime | None


def readiness(store: Store, config: Config, now: datetime) -> Readiness:
    tz, backfill = config.tz, config.poll.backfill
    segments = load_segments(store, now, tz, backfill)
    keys: list[Segment] = segments["api-keys"]
    return Readiness(
        backfill_progress(segments, store.staged_starts(), now, tz, backfill),
        warming_rules(usage_wanted(config.rules, now, tz), segments, now, tz, backfill),
        fine_start(keys, now, tz),
    )


def backfill_pace(config: Config, backfilling: bool) -> int:
    """Export calls a minute: the backfill pace while history is missing, else the poll's."""
    steady = config.langdock.max_requests_per_minute
    return max(steady, config.langdock.backfill_max_requests_per_minute) if backfilling else steady


def make_client(config: Config, pacer: Pacer | None = None, reserve: int = 0) -> LangdockClient:
    """The configured Langdock client (`run` shares one ``pacer`` between its two)."""
    from daemon.langdock import LangdockClient  # httpx: only where exports are made

    return LangdockClient(
        config.langdock.base_url,
        config.api_key(),
        timeout=config.langdock.timeout.total_seconds(),
        max_requests_per_minute=config.langdock.max_requests_per_minute,
        max_retries=config.langdock.max_retries,
        pacer=pacer,
        reserve=reserve,
        max_download_bytes=config.langdock.max_download_bytes,
        download_deadline=config.langdock.download_timeout.total_seconds(),
    )


def poll_reserve(config: Config) -> int:
    """Calls a minute the background backfill leaves to the poll (a poll makes 2-4)."""
    return min(10, config.langdock.backfill_max_requests_per_minute // 3)


def refine_pace(config: Config) -> int:
    """Calls a minute the background backfill makes (for its time-left estimates)."""
    return max(1, backfill_pace(config, backfilling=True) - poll_reserve(config))


@dataclass
class CycleResult:
    poll: PollReport
    engine: EngineResult
    delivery: DeliveryReport
    readiness: Readiness | None = None
    store_error: str | None = None
    published: Published | None = None  # what /metrics shows, loaded with ``metrics=True``

    @property
    def ok(self) -> bool:
        return self.poll.ok and self.delivery.ok and self.store_error is None


# A window over this many stored hours or fewer is summed from the members' hourly series, one
# series per member shared by all such windows of a selection (a first cycle's 10,000 keys:
# one series each, not one per window); longer ones from sums kept between cycles.
FEW_BUCKETS = 48


def history_needed(rules: Sequence[AnyRule], now: datetime, tz: ZoneInfo) -> datetime:
    """The oldest instant any rule looks at (window, baseline, forecast profile)."""
    return min((need.start for need in usage_wanted(rules, now, tz)), default=now)


def load_usage(
    store: Store, config: Config, now: datetime, history_start: datetime | None
) -> UsageIndex:
    """The usage the rules read at ``now`` (see `usage_wanted`): for each distinct selection
    of keys and models, one total per member and budget window (SQLite sums them, whole days
    from the daily sums) or hourly series over the longest range its rules look back, the
    models export as points. A member's contributors are not in it: the planner names the
    members its messages need them for, and `load_contributors` loads those."""
    needs = usage_wanted(config.rules, now, config.tz)
    key_names = store.api_key_names()
    filters = selection_filters(((n.rule, n.metric) for n in needs), key_names, store.models())
    series: dict[Selection, datetime] = {}
    windows: dict[Selection, list[tuple[datetime, datetime]]] = {}
    stored: dict[tuple[datetime, datetime], int] = {}  # hours stored per window (few windows)
    for need in needs:
        selection = selection_of(need.rule, need.metric)
        if selection not in filters:
            continue  # errors and latency: from the models export
        span = (need.start, need.end)
        if span not in stored:
            stored[span] = store.stored_buckets(*span)
        if need.series or stored[span] <= FEW_BUCKETS:
            series[selection] = min(need.start, series.get(selection, need.start))
        elif span not in windows.setdefault(selection, []):
            windows[selection].append(span)
    totals: dict[tuple[Selection, int, int], tuple[SelectionFilter, dict[str, Raw]]] = {}
    fresh_from = bucket_start(now, config.tz)  # sums before the running hour are kept
    for selection, spans in windows.items():
        for (start, stop), by_member in zip(
            spans, store.member_totals(filters[selection], spans, fresh_from), strict=True
        ):
            totals[(selection, ts(start), ts(stop))] = (filters[selection], by_member)
    end = bucket_end(now, config.tz)
    oldest = history_needed(config.rules, now, config.tz)
    return UsageIndex(
        model_points=store.model_points(oldest, end),
        rows=(),
        prepared={
            selection: (
                filters[selection],
                store.member_points(filters[selection], start, end, fresh_from),
            )
            for selection, start in series.items()
        },
        prepared_totals=totals,
        key_names=key_names,
        history_start=history_start,
        first_seen=store.first_seen(),
        # what the first poll found is not new (see Store.start_watching)
        new_after=store.watch_since(),
    )


def evaluate_rules(
    store: Store,
    config: Config,
    now: datetime,
    *,
    persist: bool = True,
    console: bool = False,
    ready: Readiness | None = None,
) -> EngineResult:
    """Evaluate all rules against the store; rules still warming up (see `readiness`) are
    shown but cannot fire.

    With ``persist`` the new alert states and the notifications about them are saved in one
    transaction; without it (``status``, ``once --dry-run``) nothing is written.
    """
    if not config.rules:
        return EngineResult()
    ready = ready or readiness(store, config, now)
    usage = load_usage(store, config, now, ready.fine_start)
    result = evaluate(
        config.rules, usage, store.load_alerts(), now, config.tz, warming=ready.warming
    )
    if not persist:
        return result
    outbox, notified = plan_notifications(store, config, result, now, console=console)
    events = [(now, n.transition.kind, n.transition.state) for n in result.notices]
    store.save_alerts(result.states, outbox, notified, events)
    for notice in result.notices:
        state = notice.transition.state
        why = {"reason": notice.transition.reason} if notice.transition.reason else {}
        log.info(
            "alert_" + notice.transition.kind,
            rule=state.key.rule,
            member=state.key.member,
            condition=state.key.condition,
            period=state.key.period,
            severity=state.severity,
            **why,
        )
    log.info(
        "rules_evaluated",
        rules=len(config.rules),
        # anomaly and new-member members, and the budget members that can move an alert
        evaluations=len(result.evaluations) + sum(len(t.worked) for t in result.budget_tables),
        firing=len(result.firing),
        transitions=len(result.notices),
        queued_notifications=len(outbox),
    )
    return result


def plan_notifications(
    store: Store, config: Config, result: EngineResult, now: datetime, *, console: bool
) -> tuple[list[OutboxItem], dict[str, datetime]]:
    """The notification pipeline up to the outbox (see `daemon.notify`): decide what to say
    (silences, one message per alert group, repeat timing), load the contributors the
    messages name, render and group."""
    if config.slack is None and not console:
        return [], {}  # no route: transitions are only logged
    key_names = store.api_key_names()
    labels = {key_id: f"{name} ({key_id})" for key_id, name in key_names.items()}
    decided = decide(
        result,
        {rule.name: rule for rule in config.rules},
        lambda rule: route_for(rule, config, console=console),
        store.last_notified(),
        now,
        repeat_interval=config.slack.repeat_interval if config.slack else timedelta(0),
        send_resolved=config.slack.send_resolved if config.slack else True,
        labels=labels,
        silenced=silence_matcher(store.silences(now), key_names, now).state,
    )
    parts = load_contributors(store, config, now, decided.parts_wanted, key_names)
    return render(decided, config.tz, parts), decided.notified


def load_contributors(
    store: Store,
    config: Config,
    now: datetime,
    wanted: Sequence[PartsQuery],
    key_names: Mapping[str, str],
) -> dict[PartsQuery, dict[str, Series]]:
    """The contributors (models of a key, keys of a model) of the members a message names,
    one query each, over the history the rules read at ``now``."""
    if not wanted:
        return {}
    oldest = history_needed(config.rules, now, config.tz)
    end = bucket_end(now, config.tz)
    return {
        query: parts_series(
            query, store.member_parts(query.selection, query.member_id, oldest, end), key_names
        )
        for query in wanted
    }


async def run_cycle(
    config: Config,
    store: Store,
    client: LangdockClient,
    now: Callable[[], datetime],
    *,
    sender: Sender | None = None,
    console: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_stored: Callable[[], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    metrics: bool = False,
    lead: bool = True,
) -> CycleResult:
    """Poll, evaluate, queue notifications and deliver the outbox (nothing sent on dry runs);
    with ``metrics`` (the daemon) also load what `/metrics` shows (`daemon.published`).

    The poll fills what the budget and report windows need first (coarsely where it can,
    see `daemon.coverage`); finer history is the background refiner's (`run` only).

    Without ``lead`` (a replica that does not hold the lease, `daemon.leadership`) nothing
    is fetched, written or sent: the rules are evaluated on what the leader stored, for
    `/metrics` and the status page."""
    if not lead:
        return _follow(config, store, now(), metrics=metrics)
    tz, backfill = config.tz, config.poll.backfill
    started = now()
    store.start_watching(started, backfill)
    segments = load_segments(store, started, tz, backfill)
    staged = store.staged_starts()  # hours the background already has: not fetched again
    plan = poll_plan(
        started,
        tz,
        backfill=backfill,
        settle_after=config.poll.settle_after,
        segments=segments,
        windows=first_windows(config.rules, started, tz),
        staged=staged,
    )
    before = backfill_progress(segments, staged, started, tz, backfill)
    backfilling = not before.done or any(f.why == "gap" for f in plan)
    pace = backfill_pace(config, backfilling)
    if pace >= client.pacer.per_minute or client.pacer.used() < pace:
        client.pacer.per_minute = pace  # back to the poll's pace once a backfill burst is over
    report = await poll(client, store, plan, now=now, progress=progress, on_stored=on_stored)
    at = now()  # the instant this cycle evaluates at
    try:
        if not dry_run:
            store.refresh_rollups(at)  # sum the days that ended since the last cycle
        ready = readiness(store, config, at)
        engine = evaluate_rules(
            store, config, at, persist=not dry_run, console=console, ready=ready
        )
    except DB_ERRORS as exc:  # disk full, locked: alert state can't be saved this cycle
        message, fix = store_failure(exc)
        log.error("store_write_failed", error=message, fix=fix or "the next cycle tries again")
        shown = None
        if metrics:
            with contextlib.suppress(*DB_ERRORS):  # unreadable too: the last series stay
                shown = load_published(store, config, EngineResult(), at)
        return CycleResult(
            report, EngineResult(), DeliveryReport(), store_error=message, published=shown
        )
    delivery = DeliveryReport()
    if sender is not None and not dry_run:
        delivery = await deliver(store, sender, now, sleep=sleep, settle=settle_of(config))
    # last, so the outbox gauges count what delivery left
    shown = load_published(store, config, engine, at) if metrics else None
    store.sweep_kept_sums()  # once a cycle: what no rule reads any more is forgotten
    return CycleResult(report, engine, delivery, ready, published=shown)


def settle_of(config: Config) -> timedelta:
    """`slack.recheck_after`: how long an uncertain send settles before it is looked for."""
    return config.slack.recheck_after if config.slack is not None else SETTLE


def _follow(config: Config, store: Store, at: datetime, *, metrics: bool) -> CycleResult:
    """A follower's cycle: what the leader stored, evaluated read-only (nothing kept from the
    last cycle: the leader wrote since). The exports' last successes are the leader's."""
    store.forget_kept()
    report = PollReport(at)
    try:
        for export in ("api-keys", "models"):
            last = store.last_success(export)
            if last is not None:
                report.export_ok_at[export] = last
        ready = readiness(store, config, at)
        engine = evaluate_rules(store, config, at, persist=False, ready=ready)
        shown = load_published(store, config, engine, at) if metrics else None
    except DB_ERRORS as exc:
        log.error("store_read_failed", error=str(exc), fix="the next cycle tries again")
        return CycleResult(report, EngineResult(), DeliveryReport(), store_error=str(exc))
    return CycleResult(report, engine, DeliveryReport(), ready, published=shown)
