"""`langdock-budget run`: the daemon (`daemon.service`), until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from daemon.cli.common import AddCommand, config_path


def add_parser(sub: Any, command: AddCommand) -> None:
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


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.service import run_daemon

    return asyncio.run(run_daemon(config_path(args)))
