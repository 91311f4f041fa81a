"""What each page shows: the last cycle's result (kept by the daemon) plus a few small store
reads (alert notifications, silences, the outbox, the fetch log, a member's buckets for its
charts). Handlers in `daemon.web.app` render these contexts with the templates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from daemon import __version__
from daemon.config import Config
from daemon.cycle import CycleResult
from daemon.metric_series import scope_id
from daemon.metrics import Stats
from daemon.notify import silence_matcher
from daemon.rules.budget import BudgetTable, budget_metric
from daemon.rules.lifecycle import AlertState
from daemon.rules.schema import BudgetRule
from daemon.rules.selection import selection_filters
from daemon.rules.series import NANOS
from daemon.rules.types import WORKSPACE
from daemon.state import open_store
from daemon.store import Store
from daemon.web.charts import Point, cumulative_chart, hourly_chart
from daemon.web.view import anomaly_bands, bar, budget_bars

T = TypeVar("T")
HOURLY_DAYS = 3  # the detail page's hourly chart: the last three days


@dataclass
class Site:
    """What the pages read; the daemon hands in getters so a reload or a new cycle shows at
    once.

    Pages never use the daemon's own store connection: their queries (and silences written
    from the page) run on one worker thread with a connection of its own (`read`), so a slow
    query or a locked database never holds the event loop, the cycle or `/metrics`.
    """

    config: Callable[[], Config]
    latest: Callable[[], CycleResult | None]  # the last cycle that evaluated the rules
    stats: Callable[[], Stats]
    health: Callable[[], tuple[bool, dict[str, object]]]
    clock: Callable[[], datetime]
    _worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="pages")
    )
    _store: Store | None = None  # the worker thread's connection
    _closed: bool = False

    async def read(self, job: Callable[[Store], T]) -> T:
        """``job`` with the pages' store, on the pages' thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._run, job)

    def _run(self, job: Callable[[Store], T]) -> T:
        if self._store is None:
            config = self.config()
            self._store = open_store(config)
        return job(self._store)

    def close(self) -> None:
        def shut() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        if self._closed:
            return
        self._closed = True
        self._worker.submit(shut).result()
        self._worker.shutdown()


def _alert_sets(
    result: CycleResult, store: Store, now: datetime
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(rule, member) of the firing alerts, and of those a silence covers *now* (one made a
    moment ago on the page included)."""
    firing_states = result.engine.firing
    names = result.published.key_names if result.published is not None else {}
    matcher = silence_matcher(store.silences(now), names, now)
    firing = {(s.key.rule, s.key.member) for s in firing_states}
    silenced = {(s.key.rule, s.key.member) for s in firing_states if matcher.state(s)}
    return firing, silenced


def _thresholds(config: Config) -> dict[str, list[Decimal]]:
    return {r.name: list(r.thresholds) for r in config.rules if isinstance(r, BudgetRule)}


def header(site: Site) -> dict[str, Any]:
    ok, health = site.health()
    result = site.latest()
    return {
        "version": __version__,
        "healthy": ok,
        "state": health.get("state", "starting"),
        "backfill": health.get("backfill"),
        "evaluated": None if result is None else result.poll.started,
        "tz": site.config().tz,
    }


MAX_ALERT_ROWS = 100  # the overview's firing alerts, the worst first (then "N more")
MAX_SILENCE_ROWS = 200


def overview(site: Site, store: Store) -> dict[str, Any]:
    config, result = site.config(), site.latest()
    now = site.clock()
    context: dict[str, Any] = {"bars": [], "hidden": {}, "bands": [], "alerts": []}
    context["alerts_hidden"] = 0
    if result is not None:
        firing, silenced = _alert_sets(result, store, now)
        warming = result.readiness.warming if result.readiness is not None else {}
        context["bars"], context["hidden"] = budget_bars(
            result.engine.budget_tables, _thresholds(config), warming, firing, silenced
        )
        context["bands"] = anomaly_bands(result.engine.anomalies(), firing, limit=10)
        rows = alerts(result, store, silenced)
        context["alerts"] = rows[:MAX_ALERT_ROWS]
        context["alerts_hidden"] = len(rows) - len(context["alerts"])
    silences = store.silences(now)
    context["silences"] = silences[:MAX_SILENCE_ROWS]
    context["silences_hidden"] = len(silences) - len(context["silences"])
    context["outbox"] = store.outbox_waiting()
    context["dead_letters"] = store.outbox_dead_letters()
    context["exports"] = exports(site, store)
    context["rules"] = [rule.name for rule in config.rules]
    return context


def alerts(
    result: CycleResult, store: Store, silenced: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """One row per rule and member (as Slack gets one message): the worst condition, the
    others listed, the first firing and the last notification."""
    names = result.published.key_names if result.published is not None else {}
    notified = store.last_notified()
    grouped: dict[tuple[str, str], list[AlertState]] = {}
    for state in result.engine.firing:
        grouped.setdefault((state.key.rule, state.key.member), []).append(state)
    rows: list[dict[str, Any]] = []
    for (rule, member), states in grouped.items():
        states.sort(key=_worst_first)
        times = [notified[s.key.id] for s in states if s.key.id in notified]
        rows.append(
            {
                "rule": rule,
                "scope": scope_id(member),
                "member": _member_label(member, names),
                "condition": states[0].key.condition,
                "also": [s.key.condition for s in states[1:]],
                "severity": states[0].severity,
                "since": min(s.fired_at or s.since for s in states),
                "notified": max(times, default=None),
                "silenced": (rule, member) in silenced,
            }
        )
    rows.sort(key=lambda row: (SEVERITY_ORDER.get(row["severity"], 9), row["since"]))
    return rows


SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _worst_first(state: AlertState) -> tuple[int, float]:
    condition = state.key.condition
    level = float(condition) if condition.replace(".", "", 1).isdigit() else 0.0
    return (SEVERITY_ORDER.get(state.severity, 9), -level)


def _member_label(member: str, names: Mapping[str, str]) -> str:
    if member == WORKSPACE:
        return "workspace"
    return f"{names[member]} ({member})" if member in names else member


def exports(site: Site, store: Store) -> list[dict[str, Any]]:
    stats = site.stats()
    rows = []
    for export in ("api-keys", "models"):
        last = store.last_success(export)
        errors = sum(n for (name, _), n in stats.export_errors.items() if name == export)
        rows.append({"export": export, "last_success": last, "errors": errors})
    return rows


def rule_page(site: Site, store: Store, name: str) -> dict[str, Any] | None:
    """Every member of one rule (up to 500): budget bars or anomaly bands."""
    config, result = site.config(), site.latest()
    rule = next((r for r in config.rules if r.name == name), None)
    if rule is None:
        return None
    context: dict[str, Any] = {"rule": rule, "bars": [], "bands": [], "hidden": {}}
    if result is None:
        return context
    firing, silenced = _alert_sets(result, store, site.clock())
    warming = result.readiness.warming if result.readiness is not None else {}
    tables = [t for t in result.engine.budget_tables if t.rule == name]
    context["bars"], context["hidden"] = budget_bars(
        tables, _thresholds(config), warming, firing, silenced, per_rule=500
    )
    anomalies = [e for e in result.engine.anomalies() if e.rule == name]
    context["bands"] = anomaly_bands(anomalies, firing, limit=500)
    context["hidden"][name] = context["hidden"].get(name, 0) + max(0, len(anomalies) - 500)
    context["warming"] = warming.get(name)
    return context


def budget_detail(site: Site, store: Store, name: str, scope: str) -> dict[str, Any] | None:
    """One budget member: its bar, the window's cumulative curve with forecast and limit,
    and the last days' hourly spend."""
    config, result = site.config(), site.latest()
    rule = next((r for r in config.rules if r.name == name), None)
    if result is None or not isinstance(rule, BudgetRule):
        return None
    table = next((t for t in result.engine.budget_tables if t.rule == name), None)
    member_id = WORKSPACE if scope == "workspace" else scope
    index = _member_index(table, member_id) if table is not None else None
    if table is None or index is None:
        return None
    evaluation = table[index]
    firing, silenced = _alert_sets(result, store, site.clock())
    warming = result.readiness.warming if result.readiness is not None else {}
    shown = bar(evaluation, rule.thresholds, warming.get(name), firing, silenced)
    tz = config.tz
    period, now = evaluation.period, evaluation.now
    start = period.start
    end = period.end if shown.period_end is not None else now
    recent = now - timedelta(days=HOURLY_DAYS)
    window_points = member_points(store, rule, member_id, start, now)
    hourly_points = member_points(store, rule, member_id, recent, now)
    return {
        "rule": rule,
        "bar": shown,
        "curve": cumulative_chart(
            window_points, start, now, end, shown.limit, shown.forecast, shown.unit, tz
        ),
        "hourly": hourly_chart(hourly_points, recent, now, shown.unit, tz),
        "contributors": evaluation.top_parts,
    }


def _member_index(table: BudgetTable, member_id: str) -> int | None:
    for index, usage in enumerate(table.members):
        if usage.member.id == member_id:
            return index
    return None


def member_points(
    store: Store, rule: BudgetRule, member_id: str, start: datetime, end: datetime
) -> list[Point]:
    """A budget member's stored buckets in [start, end), in the rule's unit."""
    metric = budget_metric(rule)
    filters = selection_filters([(rule, metric)], store.api_key_names(), store.models())
    scale = NANOS if metric == "cost_usd" else 0
    points: list[Point] = []
    for selection in filters.values():
        for bucket, raw in store.member_series(selection, member_id, start, end):
            points.append((datetime.fromtimestamp(bucket, UTC), Decimal(raw).scaleb(-scale)))
    return sorted(points)
