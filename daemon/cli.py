"""The `langdock-budget` command line (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from daemon import __version__, prometheus_rules
from daemon.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from daemon.cycle import CycleResult, evaluate_rules, readiness, refine_pace, run_cycle
from daemon.ingest import PollReport
from daemon.langdock import LangdockClient
from daemon.logs import configure_logging, default_log_format, redact, redactor
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
from daemon.rules.durations import format_duration
from daemon.rules.schema import BudgetRule, NewMemberRule
from daemon.rules.usage import expand_members
from daemon.service import make_client
from daemon.store import Store, StoreError

Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[..., argparse.ArgumentParser]  # `command` in build_parser
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
log = structlog.get_logger("langdock_budget.cli")


def utc_now() -> datetime:
    return datetime.now(UTC)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in global_defaults().items():
        if not hasattr(args, name):  # options given neither before nor after the command
            setattr(args, name, default)
    configure_logging(args.log_format, args.log_level)
    handler: Handler = args.handler
    with StopSignals() as stop:
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
            log.info(
                "stopped",
                signal=stop.received,
                command=args.command,
                note="stopped before the end; what was already stored is kept",
            )
            if stop.received == "SIGTERM" or args.command == "demo":
                return EXIT_OK  # a requested stop, as `run` exits on SIGTERM
            return EXIT_INTERRUPTED  # Ctrl-C: 128 + SIGINT, as shells report it


def global_defaults() -> dict[str, Any]:
    """Defaults applied after parsing (`set_defaults` would leak into the shared parent
    actions), read when the command starts: logs are console lines for a person at a terminal,
    JSON otherwise, unless --log-format or $LANGDOCK_BUDGET_LOG_FORMAT says which."""
    return {
        "config": None,
        "log_format": default_log_format(os.environ.get("LANGDOCK_BUDGET_LOG_FORMAT")),
        "log_level": os.environ.get("LANGDOCK_BUDGET_LOG_LEVEL", "info"),
    }


class StopSignals:
    """While a command runs, SIGTERM stops it the way Ctrl-C does: inside `asyncio.run` the
    running cycle is cancelled at its next await (connections closed, no partial bucket,
    `demo` removes its store), elsewhere KeyboardInterrupt is raised; `main` then logs one
    line and exits 0 for SIGTERM, 130 for Ctrl-C. `run` installs its own handlers."""

    def __init__(self) -> None:
        self.received = "SIGINT"
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def _on_sigterm(self, _signum: int, frame: FrameType | None) -> None:
        self.received = "SIGTERM"
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):  # SIGINT ignored (a background job): stop all the same
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)  # asyncio.run's handler cancels its main task


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
        help="log lines on stderr (default: $LANGDOCK_BUDGET_LOG_FORMAT, else console when"
        " stderr is a terminal, json otherwise)",
    )
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="log level (default: $LANGDOCK_BUDGET_LOG_LEVEL, else info)",
    )
    parser = argparse.ArgumentParser(
        prog="langdock-budget",
        parents=[common],
        description="Budget and anomaly alerts for Langdock API usage.",
    )
    parser.add_argument("--version", action="version", version=f"langdock-budget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, help: str, handler: Handler | None = None, *, description: str
    ) -> argparse.ArgumentParser:
        """A subcommand that takes the common options (and runs ``handler``); ``help`` is its
        line in the parent's list, ``description`` what its own --help says."""
        parser = group.add_parser(name, parents=[common], help=help, description=description)
        if handler is not None:
            parser.set_defaults(handler=handler)
        return parser  # type: ignore[no-any-return]

    command(
        sub,
        "run",
        "the daemon: poll, evaluate, publish metrics, notify until stopped",
        cmd_run,
        description="The daemon: poll Langdock every poll.interval (a backfill first), keep"
        " the usage in the store, evaluate the rules, send Slack messages through a durable"
        " outbox and serve /metrics and /healthz, until SIGTERM or SIGINT (exit 0). SIGHUP"
        " reloads the config and rules, keeping the old ones if the new are invalid.",
    )
    command(
        sub,
        "check",
        "validate config and rules; no network",
        cmd_check,
        description="Validate the config and its rule files and print what they say, each"
        " rule expanded over the keys and models in the store; no network. Exit 0 valid, 2"
        " invalid (one line per problem: file, key, what is wrong, how to fix it).",
    )
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
    command(
        sub,
        "status",
        "spend from the store; no network",
        cmd_status,
        description="What the store knows, without network and without writing: spend per key"
        " and per model, the rules' results, active alerts and silences, and when the last"
        " fetches succeeded.",
    )
    command(
        sub,
        "test-alert",
        "send sample budget and anomaly messages to every route",
        cmd_test_alert,
        description="Send a sample budget and a sample anomaly message through every Slack"
        " route of the config and print Slack's answers, to check webhooks, tokens and"
        " channels before an alert needs them. Exit 0 all sent, 1 a send failed.",
    )

    digest = command(
        sub,
        "digest",
        "the spend digest of the last complete day or week",
        cmd_digest,
        description="Build the spend digest of the last complete day or week (in the"
        " configured zone) and send it through the Slack outbox, or print it with --dry-run."
        " The daemon sends digests by itself when the config has a digests section.",
    )
    digest.add_argument(
        "--period",
        choices=("day", "week"),
        default="day",
        help="the last complete local day (default) or ISO week",
    )
    digest.add_argument("--dry-run", action="store_true", help="print it; send nothing")

    from daemon.cli_import import add_import_parser
    from daemon.cli_silence import add_silence_parser

    add_import_parser(sub, command)
    add_silence_parser(sub, command)

    rules = command(
        sub,
        "rules",
        "rule utilities",
        description="Tools around the rules of the config.",
    )
    rule_actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    command(
        rule_actions,
        "export-prometheus",
        "print Prometheus alerting rules equivalent to the budget rules",
        cmd_rules_export,
        description="Print Prometheus alerting rules (YAML) equivalent to the budget rules,"
        " over the daemon's own metrics, for teams that route alerts through Alertmanager"
        " instead of (or besides) Slack.",
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


def cmd_once(args: argparse.Namespace) -> int:
    config = load(args)
    store = Store.open(config.state.path, exclusive=True, tz=config.tz)
    try:
        result = asyncio.run(_once(config, store, dry_run=args.dry_run))
        print(render_cycle(store, config, result, utc_now()))
    finally:
        store.close()
    problems = once_problems(result)
    for line in problems:
        print(f"once: {line}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


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
        from daemon.notify import silence_matcher
        from daemon.report import render_outbox
        from daemon.rules.lifecycle import AlertState

        silences = store.silences(now)
        key_names = store.api_key_names()
        labels = {key_id: f"{name} ({key_id})" for key_id, name in key_names.items()}
        silenced_key = silence_matcher(silences, key_names, now)

        def silenced(state: AlertState) -> bool:
            return silenced_key(state.key)

        if config.rules:
            # one evaluation feeds both tables, so they agree: the alerts as of now
            result = evaluate_rules(store, config, now, persist=False)
            print(render_evaluations(result, config.tz, silenced=silenced))
            print()
            print(
                render_active(
                    result.states,
                    config.tz,
                    labels=labels,
                    silenced=silenced,
                    warming=result.warming,
                )
            )
            print()
        if silences:
            print(render_silences(silences, config.tz))
            print()
        waiting = store.outbox_waiting()
        print(render_outbox(waiting, config.tz, now, labels=labels, silenced=silenced_key))
        print()
        for export in ("api-keys", "models"):
            last = store.last_success(export)
            age = f"{(now - last).total_seconds() / 60:.0f} min ago" if last else "never"
            print(f"last successful {export} fetch: {age}")
        failed = [f for f in store.last_fetches(20) if not f.ok]
        if failed:
            latest = redact(failed[0].message or "")
            print(f"recent fetch failures: {len(failed)} (latest: {latest})")
        progress = readiness(store, config, now).progress
        print(f"backfill: {progress.describe(refine_pace(config))}")
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
