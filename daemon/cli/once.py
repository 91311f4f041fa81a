"""`langdock-budget once`: one cycle, then exit; and what a cycle prints (`render_cycle`,
which `demo` prints after each of its cycles too)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.cli.common import EXIT_FAILED, EXIT_OK, AddCommand, load, utc_now
from daemon.cli.rules_table import render_evaluations
from daemon.cli.signals import run_async
from daemon.cli.spend import render_report, spend_report
from daemon.config import Config
from daemon.cycle import CycleResult, make_client, refine_pace, run_cycle
from daemon.ingest import PollReport
from daemon.notify import Sender, slack_sender
from daemon.state import command_sender, open_store
from daemon.store import Store

if TYPE_CHECKING:
    from daemon.langdock import LangdockClient


def add_parser(sub: Any, command: AddCommand) -> None:
    once = command(
        sub,
        "once",
        "one cycle: fetch, store, evaluate, print a summary; then exit",
        cmd_once,
        description="One cycle, then exit: fetch what is due from Langdock (on an empty store:"
        " what the budget windows need, a local day per call, in a minute or two; the hourly"
        " history is left to `run`), store it, evaluate every rule,"
        " send what Slack should hear, and print spend per key and per model and each rule's"
        " result. Exit 0 when all went well; 1 when a fetch or a Slack notification failed"
        " (the last line, on stderr, says which and what to do); 2 on a bad config. SIGTERM"
        " stops it with exit 0, Ctrl-C with 130; what was stored is kept.",
    )
    once.add_argument("--dry-run", action="store_true", help="send no notifications")


def cmd_once(args: argparse.Namespace) -> int:
    config = load(args)
    store = open_store(config, exclusive=True)
    try:
        result = run_async(_once(config, store, dry_run=args.dry_run))
        print(render_cycle(store, config, result, utc_now()))
    finally:
        store.close()
    problems = once_problems(result)
    for line in problems:
        print(f"once: {line}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


async def _once(config: Config, store: Store, *, dry_run: bool) -> CycleResult:
    slack = slack_sender(config)
    sender = command_sender(store, slack) if slack is not None else None
    async with make_client(config) as client:
        return await cycle_once(config, store, client, sender=sender, dry_run=dry_run)


async def cycle_once(
    config: Config,
    store: Store,
    client: LangdockClient,
    now: Callable[[], datetime] = utc_now,
    *,
    sender: Sender | None = None,
    console: bool = False,
    dry_run: bool = False,
) -> CycleResult:
    """The one cycle (`daemon.cycle.run_cycle`), with a progress bar on a terminal."""
    bar = ProgressBar(client) if sys.stderr.isatty() else None
    result = await run_cycle(
        config,
        store,
        client,
        now,
        sender=sender,
        console=console,
        dry_run=dry_run,
        progress=bar,
    )
    if bar is not None and bar.open:
        print(file=sys.stderr)  # the poll stopped early: end the bar's line
    return result


class ProgressBar:
    """The poll's progress on a terminal: ranges fetched of all, and the time left at the
    current pace (a first start fetches a few dozen ranges; a steady poll shows nothing)."""

    def __init__(self, client: LangdockClient, width: int = 30) -> None:
        self.client, self.width, self.open = client, width, False

    def __call__(self, done: int, total: int) -> None:
        if total <= 4:
            return
        self.open = done < total
        filled = self.width * done // total
        left = (total - done) * 60 / max(self.client.pacer.per_minute, 1)
        print(
            f"\rfetching [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} ranges,"
            f" about {left:.0f}s left ",
            end="\n" if done == total else "",
            file=sys.stderr,
            flush=True,
        )


def once_problems(result: CycleResult) -> list[str]:
    """Why `once` exits 1: one line per part that failed (fetch, notify, store), naming it
    and what to do; empty when the cycle went well."""
    lines = []
    poll, delivery = result.poll, result.delivery
    if not poll.ok:
        first = poll.failures[0].message if poll.failures else f"stopped: {poll.aborted}"
        if poll.aborted in ("auth", "bad_request"):
            todo = "fix the langdock section of the config as the error says, then run once again"
        elif poll.aborted == "store":
            todo = "free disk space or stop the other process holding the store, then run again"
        else:
            todo = "what was fetched is stored; run once again later, it fetches what is missing"
        lines.append(
            f"fetch failed: {len(poll.failures)} of {poll.planned} buckets not fetched"
            f" ({first}); {todo}"
        )
    if not delivery.ok:
        if delivery.rejected:
            todo = (
                "Slack's answer is in the notification_rejected log line: fix the slack section"
                " (webhook_url, token, channel) and check it with `langdock-budget test-alert`"
            )
        else:
            todo = "Slack or the network is failing; the next once or run sends what is queued"
        lines.append(
            f"notify failed: {delivery.deferred} Slack message(s) queued for retry,"
            f" {delivery.rejected} rejected; {todo}"
        )
    if result.store_error is not None:
        lines.append(
            f"store failed: the alert state was not saved ({result.store_error}); free disk"
            " space or stop the other process holding the store, then run once again"
        )
    return lines


def render_cycle(store: Store, config: Config, result: CycleResult, now: datetime) -> str:
    """What `once` and `demo` print: spend tables, every rule's result, the poll summary."""
    parts = [render_report(spend_report(store, now, config.tz))]
    if config.rules:
        parts.append(render_evaluations(result.engine, config.tz))
    parts.append(summary_line(result.poll) + delivery_line(result))
    if result.readiness is not None and not result.readiness.progress.done:
        pace = refine_pace(config)
        parts[-1] += (
            f"\nhistory: {result.readiness.progress.describe(pace)}; `langdock-budget run`"
            " fetches the rest in the background (until then anomaly rules are warming up)"
        )
    return "\n\n".join(parts)


def delivery_line(result: CycleResult) -> str:
    d = result.delivery
    if not (d.sent or d.deferred or d.rejected or d.silenced or d.waiting):
        return ""
    text = f"; Slack: {d.sent} sent"
    if d.deferred:
        text += f", {d.deferred} queued for retry"
    if d.rejected:
        text += f", {d.rejected} rejected (see the log for the fix; `status` lists them)"
    if d.silenced:
        text += f", {d.silenced} dropped (silenced)"
    if d.waiting:
        until = f" until {d.next_attempt:%H:%M} UTC" if d.next_attempt is not None else ""
        text += f", {d.waiting} waiting{until} (Slack asked to wait)"
    return text


def summary_line(report: PollReport) -> str:
    text = (
        f"fetched {report.fetched}/{report.planned} buckets, {report.rows} rows,"
        f" {report.calls} export calls in {report.seconds:.1f}s"
    )
    if report.failures:
        first = report.failures[0]
        text += f"; {len(report.failures)} failed (first: {first.message})"
    if report.aborted:
        text += f"; poll stopped early ({report.aborted}), the next poll retries"
    if report.rejected:
        shown = report.rejected[:5]
        more = len(report.rejected) - len(shown)
        text += f"\n{len(report.rejected)} rows left out (values out of bounds):"
        text += "".join(f"\n  {line}" for line in shown)
        text += f"\n  … and {more} more (see the log)" if more else ""
    return text
