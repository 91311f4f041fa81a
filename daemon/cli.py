"""The `langdock-budget` command line (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__, importer, prometheus_rules
from daemon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from daemon.cycle import CycleResult, evaluate_rules, run_cycle
from daemon.ingest import PollReport
from daemon.langdock import LangdockClient
from daemon.logs import configure_logging, redactor
from daemon.money import format_usd
from daemon.notify import (
    Sender,
    SlackSender,
    deliver,
    render_readable,
    route_for,
    sample_messages,
)
from daemon.report import (
    render_active,
    render_evaluations,
    render_report,
    render_silences,
    spend_report,
)
from daemon.rules.durations import format_duration, parse_duration
from daemon.rules.schema import BudgetRule, NewMemberRule
from daemon.rules.usage import expand_members
from daemon.service import make_client
from daemon.store import Store, StoreError

Handler = Callable[[argparse.Namespace], int]
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
log = structlog.get_logger("langdock_budget.cli")


def utc_now() -> datetime:
    return datetime.now(UTC)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in _GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):  # options given neither before nor after the command
            setattr(args, name, default)
    configure_logging(args.log_format, args.log_level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "demo" else EXIT_INTERRUPTED


# Defaults applied after parsing: `set_defaults` would leak into the shared parent actions.
_GLOBAL_DEFAULTS = {
    "config": None,
    "log_format": os.environ.get("LANGDOCK_BUDGET_LOG_FORMAT", "json"),
    "log_level": os.environ.get("LANGDOCK_BUDGET_LOG_LEVEL", "info"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"config file (default: $LANGDOCK_BUDGET_CONFIG, then {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=argparse.SUPPRESS,
        help="log lines on stderr: json (default) or console",
    )
    common.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS
    )
    parser = argparse.ArgumentParser(
        prog="langdock-budget",
        parents=[common],
        description="Budget and anomaly alerts for Langdock API usage.",
    )
    parser.add_argument("--version", action="version", version=f"langdock-budget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, help: str, handler: Handler | None = None
    ) -> argparse.ArgumentParser:
        """A subcommand that takes the common options (and runs ``handler``)."""
        parser = group.add_parser(name, parents=[common], help=help)
        if handler is not None:
            parser.set_defaults(handler=handler)
        return parser  # type: ignore[no-any-return]

    command(
        sub, "run", "the daemon: poll, evaluate, publish metrics, notify until stopped", cmd_run
    )
    command(sub, "check", "validate config and rules; no network", cmd_check)
    once = command(
        sub, "once", "one cycle: fetch, store, evaluate, print a summary; then exit", cmd_once
    )
    once.add_argument("--dry-run", action="store_true", help="send no notifications")
    command(sub, "status", "spend from the store; no network", cmd_status)
    command(
        sub, "test-alert", "send sample budget and anomaly messages to every route", cmd_test_alert
    )

    digest = command(sub, "digest", "the spend digest of the last complete day or week", cmd_digest)
    digest.add_argument("--period", choices=("day", "week"), default="day")
    digest.add_argument("--dry-run", action="store_true", help="print it; send nothing")

    imports = command(
        sub, "import", "ingest a per-call CSV from the web UI (Settings > API > Export)", cmd_import
    )
    imports.add_argument("file", type=Path, help="the per-call CSV")
    imports.add_argument("--strict", action="store_true", help="stop at the first bad row")
    imports.add_argument(
        "--reconcile",
        action="store_true",
        help="compare per-key daily cost with the API-key export; exit 1 on differences",
    )
    imports.add_argument(
        "--tolerance",
        type=Decimal,
        default=Decimal("0.01"),
        help="USD difference per key and day to ignore (default 0.01)",
    )

    silence = command(
        sub, "silence", "keep Slack quiet for a rule (state and metrics still tracked)"
    )
    actions = silence.add_subparsers(dest="silence_command", required=True, metavar="ACTION")
    add = command(actions, "add", "silence a rule (and member)", cmd_silence_add)
    add.add_argument("--rule", required=True, help="rule name")
    add.add_argument("--member", help="glob on the key name or id, or the model (default: all)")
    add.add_argument("--for", dest="duration", required=True, help="how long, e.g. 24h, 3d")
    add.add_argument("--reason", required=True, help="why (shown in status)")
    listing = command(actions, "list", "active silences", cmd_silence_list)
    listing.add_argument("--all", action="store_true", help="include expired ones")
    expire = command(actions, "expire", "end a silence now", cmd_silence_expire)
    expire.add_argument("id", type=int)

    rules = command(sub, "rules", "rule utilities")
    rule_actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    command(
        rule_actions,
        "export-prometheus",
        "print Prometheus alerting rules equivalent to the budget rules",
        cmd_rules_export,
    )

    from daemon.demo import add_demo_parser

    add_demo_parser(sub, common)
    return parser


def config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("LANGDOCK_BUDGET_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load(args: argparse.Namespace) -> Config:
    config = load_config(config_path(args))
    redactor.set_secrets(config.secrets())
    for warning in config.warnings:
        log.warning("config_warning", warning=warning)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.service import run_daemon

    return asyncio.run(run_daemon(config_path(args)))


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args)
    print(describe_config(config))
    for warning in config.warnings:
        print(f"warning: {warning}")
    if config.rules:
        print()
        print(describe_members(config))
    return EXIT_OK


def describe_members(config: Config) -> str:
    """Each rule expanded over the keys and models in the store (read only; no network)."""
    if not config.state.path.exists():
        return "members: no store yet, so rules are not expanded (run `once` first)"
    store = Store.open(config.state.path, tz=config.tz)
    try:
        key_names, models = store.api_key_names(), store.models()
    finally:
        store.close()
    lines = [f"members (from {len(key_names)} keys and {len(models)} models in the store):"]
    for rule in config.rules:
        members, warnings = expand_members(rule, key_names, models)
        shown = ", ".join(members[:8]) + (f", +{len(members) - 8} more" if len(members) > 8 else "")
        lines.append(f"  - {rule.name}: {shown or '(none yet)'}")
        lines += [
            f"    warning: {rule.name}: {w} (new keys and models join when they appear)"
            for w in warnings
        ]
    return "\n".join(lines)


def describe_config(config: Config) -> str:
    lines = [
        f"config      {config.source}  (valid)",
        f"langdock    {config.langdock.base_url}  (<= {config.langdock.max_requests_per_minute}"
        " requests/min)",
        f"timezone    {config.timezone}",
        f"poll        every {format_duration(config.poll.interval)}, backfill"
        f" {format_duration(config.poll.backfill)}",
        f"state       {config.state.path}",
        f"metrics     http://{config.metrics.listen}/metrics",
        f"slack       {_slack_route(config)}",
        f"rules       {len(config.rules)}",
    ]
    for rule in config.rules:
        scope = (
            ", ".join(f"{k}={v}" for k, v in rule.scope.model_dump().items() if v) or "workspace"
        )
        each = f" each {rule.each}" if rule.each else ""
        if isinstance(rule, BudgetRule):
            limit = (
                f"${rule.limit_usd}"
                if rule.limit_usd is not None
                else f"{rule.limit_requests} requests"
                if rule.limit_requests is not None
                else f"{rule.limit_tokens} tokens"
            )
            thresholds = "/".join(f"{t}%" for t in rule.thresholds)
            what = f"budget {limit} per {rule.window} at {thresholds}"
            if rule.forecast:
                what += " + forecast"
        elif isinstance(rule, NewMemberRule):
            what = f"new {rule.each} alert (stays up {format_duration(rule.window)})"
        else:
            what = (
                f"anomaly {rule.metric} over {format_duration(rule.window)} vs"
                f" {format_duration(rule.baseline)} baseline, sensitivity {rule.sensitivity}"
            )
        lines.append(f"  - {rule.name}: {what}; scope {scope}{each}")
    return "\n".join(lines)


def _slack_route(config: Config) -> str:
    if config.slack is None:
        return "not configured (alerts are only logged)"
    if config.slack.webhook_url is not None:
        return "incoming webhook"
    return f"bot token to {config.slack.channel}"


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
    progress = _progress_bar if sys.stderr.isatty() else None
    result = await run_cycle(
        config,
        store,
        client,
        now,
        sender=sender,
        console=console,
        dry_run=dry_run,
        progress=progress,
    )
    if progress is not None:
        print(file=sys.stderr)
    return result


def _progress_bar(done: int, total: int, what: str = "fetching", unit: str = "buckets") -> None:
    width = 30
    filled = width * done // max(total, 1)
    amount = f"{100 * done // max(total, 1)}%" if unit == "of the file" else f"{done}/{total}"
    print(
        f"\r{what} [{'#' * filled}{'.' * (width - filled)}] {amount} {unit}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def cmd_once(args: argparse.Namespace) -> int:
    config = load(args)
    store = Store.open(config.state.path, exclusive=True, tz=config.tz)
    try:
        result = asyncio.run(_once(config, store, dry_run=args.dry_run))
        print(render_cycle(store, config, result, utc_now()))
    finally:
        store.close()
    return EXIT_OK if result.ok else EXIT_FAILED


async def _once(config: Config, store: Store, *, dry_run: bool) -> CycleResult:
    sender = SlackSender(config) if config.slack is not None else None
    async with make_client(config) as client:
        return await cycle_once(config, store, client, sender=sender, dry_run=dry_run)


def render_cycle(store: Store, config: Config, result: CycleResult, now: datetime) -> str:
    """What `once` and `demo` print: spend tables, every rule's result, the poll summary."""
    parts = [render_report(spend_report(store, now, config.tz))]
    if config.rules:
        parts.append(render_evaluations(result.engine, config.tz))
    parts.append(summary_line(result.poll) + delivery_line(result))
    return "\n\n".join(parts)


def delivery_line(result: CycleResult) -> str:
    d = result.delivery
    if not (d.sent or d.deferred or d.rejected):
        return ""
    text = f"; Slack: {d.sent} sent"
    if d.deferred:
        text += f", {d.deferred} queued for retry"
    if d.rejected:
        text += f", {d.rejected} rejected (see the log for the fix)"
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
    return text


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    if not config.state.path.exists():
        print(f"no store at {config.state.path} yet: run `langdock-budget once` first")
        return EXIT_OK
    store = Store.open(config.state.path, tz=config.tz)
    try:
        now = utc_now()
        print(render_report(spend_report(store, now, config.tz)))
        print()
        if config.rules:
            stored = store.load_alerts()
            result = evaluate_rules(store, config, now, persist=False)
            print(render_evaluations(result, config.tz))
            print()
            print(render_active(stored, config.tz))
            print()
        silences = store.silences(now)
        if silences:
            print(render_silences(silences, config.tz))
            print()
        for export in ("api-keys", "models"):
            last = store.last_success(export)
            age = f"{(now - last).total_seconds() / 60:.0f} min ago" if last else "never"
            print(f"last successful {export} fetch: {age}")
        failed = [f for f in store.last_fetches(20) if not f.ok]
        if failed:
            print(f"recent fetch failures: {len(failed)} (latest: {failed[0].message})")
    finally:
        store.close()
    return EXIT_OK


def cmd_digest(args: argparse.Namespace) -> int:
    from daemon.digest import build_digest, digest_message, queue_digest

    config = load(args)
    if not config.state.path.exists():
        print(f"no store at {config.state.path} yet: run `langdock-budget once` first")
        return EXIT_FAILED
    store = Store.open(config.state.path, exclusive=not args.dry_run, tz=config.tz)
    try:
        message = digest_message(build_digest(store, config, utc_now(), args.period), config.tz)
        if args.dry_run:
            print(render_readable(message.payload()))
            return EXIT_OK
        route = route_for(None, config)
        if route is None:
            print("no Slack route configured: use --dry-run, or add a slack section")
            return EXIT_FAILED
        queue_digest(store, route, message, utc_now())
        report = asyncio.run(deliver(store, SlackSender(config), utc_now))
    finally:
        store.close()
    print(f"digest: {report.sent} sent" + ("" if report.ok else ", queued for retry"))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_import(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        result = importer.read_calls(args.file, config.tz, strict=args.strict)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except (importer.ImportError_, UnicodeDecodeError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    store = Store.open(config.state.path, exclusive=True, tz=config.tz)
    try:
        written = importer.store_import(store, result, config.tz, utc_now())
    finally:
        store.close()
    print(
        f"imported {result.rows:,} calls into {result.group_count:,} (hour, key, model)"
        f" groups; {written} hourly buckets written (hours the API already filled are kept)"
    )
    if result.skipped:
        print(f"skipped {result.skipped:,} bad rows, e.g.:")
        for line in result.errors:
            print(f"  {line}")
    if not args.reconcile or result.first is None or result.last is None:
        return EXIT_OK
    return asyncio.run(_reconcile(config, result, args.tolerance))


async def _reconcile(config: Config, result: importer.ImportResult, tolerance: Decimal) -> int:
    """The file's per-key daily cost next to the API-key export's, day by day."""
    assert result.first is not None and result.last is not None
    ours = result.cost_by_key_day(config.tz)
    days = importer.day_ranges(result.first, result.last, config.tz)
    differences = 0
    print(f"reconciling {len(days)} days against the API-key export (tolerance {tolerance} USD)")
    async with make_client(config) as client:
        for index, (day, start, end) in enumerate(days):
            partial = index in (0, len(days) - 1)
            theirs: dict[str, Decimal] = {}
            for row in await client.key_usage(start, end):
                theirs[row.api_key_id] = theirs.get(row.api_key_id, Decimal(0)) + row.cost_usd
            keys = {k for k, d in ours if d == day} | set(theirs)
            for key in sorted(keys):
                mine = ours.get((key, day), Decimal(0))
                api = theirs.get(key, Decimal(0))
                if abs(mine - api) > tolerance:
                    note = " (the file covers part of this day only)" if partial else ""
                    differences += 0 if partial else 1
                    print(
                        f"  {day} {key}: file {format_usd(mine)}, API {format_usd(api)},"
                        f" difference {format_usd(mine - api)}{note}"
                    )
    print(f"{differences} difference(s) above {tolerance} USD on fully covered days")
    return EXIT_FAILED if differences else EXIT_OK


def cmd_silence_add(args: argparse.Namespace) -> int:
    config = load(args)
    if args.rule not in {rule.name for rule in config.rules}:
        names = ", ".join(sorted(rule.name for rule in config.rules)) or "(none)"
        print(
            f"error: no rule named {args.rule!r} in {config.source}; rules: {names}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        print(f"error: --for: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    now = utc_now()
    store = Store.open(config.state.path, tz=config.tz)
    try:
        silence_id = store.add_silence(args.rule, args.member, now, now + duration, args.reason)
    finally:
        store.close()
    until = (now + duration).astimezone(config.tz)
    print(
        f"silence {silence_id}: {args.rule}{' / ' + args.member if args.member else ''}"
        f" until {until:%Y-%m-%d %H:%M %Z}"
    )
    return EXIT_OK


def cmd_silence_list(args: argparse.Namespace) -> int:
    config = load(args)
    if not config.state.path.exists():
        print("no silences (no store yet)")
        return EXIT_OK
    store = Store.open(config.state.path, tz=config.tz)
    try:
        print(render_silences(store.silences(utc_now(), include_expired=args.all), config.tz))
    finally:
        store.close()
    return EXIT_OK


def cmd_silence_expire(args: argparse.Namespace) -> int:
    config = load(args)
    store = Store.open(config.state.path, tz=config.tz)
    try:
        ended = store.expire_silence(args.id, utc_now())
    finally:
        store.close()
    print(f"silence {args.id} {'expired' if ended else 'was not active (unknown or already over)'}")
    return EXIT_OK if ended else EXIT_FAILED


def cmd_rules_export(args: argparse.Namespace) -> int:
    print(prometheus_rules.render(load(args).rules), end="")
    return EXIT_OK


def cmd_test_alert(args: argparse.Namespace) -> int:
    config = load(args)
    if config.slack is None:
        print("no Slack route configured: add a slack section (webhook_url or token + channel)")
        return EXIT_FAILED
    sender = SlackSender(config)
    routes = sorted(
        {route_for(rule, config) or "" for rule in config.rules} - {""}
        | {route_for(None, config) or ""} - {""}
    )
    failed = 0
    for route in routes:
        for message in sample_messages(config.tz, utc_now()):
            result = sender.send(route, message.payload(), None)
            if result.ok:
                answer = f"ok (ts {result.ts})" if result.ts else "ok"
            else:
                failed += 1
                answer = f"FAILED: {result.error}"
            print(f"{route}: {message.text[:60]}…: {answer}")
    return EXIT_OK if not failed else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
