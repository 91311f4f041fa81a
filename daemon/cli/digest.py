"""`langdock-budget digest`: the spend digest of the last complete day or week."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import EXIT_FAILED, EXIT_OK, AddCommand, load, utc_now
from daemon.cli.signals import run_async
from daemon.cycle import settle_of
from daemon.notify import deliver, render_readable, route_for
from daemon.state import command_sender, open_store, store_exists, store_name


def add_parser(sub: Any, command: AddCommand) -> None:
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


def cmd_digest(args: argparse.Namespace) -> int:
    from daemon.digest import build_digest, digest_message, queue_digest

    config = load(args)
    if not store_exists(config):
        print(f"no store at {store_name(config)} yet: run `langdock-budget once` first")
        return EXIT_FAILED
    store = open_store(config, exclusive=not args.dry_run)
    try:
        now = utc_now()
        message = digest_message(build_digest(store, config, now, args.period), config.tz)
        if args.dry_run:
            print(render_readable(message.payload()))
            return EXIT_OK
        route = route_for(None, config)
        if route is None:
            print("no Slack route configured: use --dry-run, or add a slack section")
            return EXIT_FAILED
        queue_digest(store, route, message, now)
        # delivery reads the clock itself: Slack may ask it to wait between tries
        from daemon.notify import SlackSender  # slack-sdk: loaded only to send

        sender = command_sender(store, SlackSender(config))
        report = run_async(deliver(store, sender, utc_now, settle=settle_of(config)))
    finally:
        store.close()
    print(f"digest: {report.sent} sent" + ("" if report.ok else ", queued for retry"))
    return EXIT_OK if report.ok else EXIT_FAILED
