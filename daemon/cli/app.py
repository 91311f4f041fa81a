"""The `langdock-budget` program: global options, the parser, signals, and dispatch.

Each command group lives in its own module of `daemon.cli` and adds its subcommand through
`command` (its `add_parser`); the order below is the order `--help` lists them in.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.cli import alerts, check, demo, digest, imports, once, run, silence, status
from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Handler, log
from daemon.cli.signals import StopSignals
from daemon.config import DEFAULT_CONFIG_PATH, ConfigError
from daemon.logs import configure_logging, default_log_format
from daemon.store import BackendError, StoreError


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
        except BackendError as exc:  # PostgreSQL: unreachable, refused, or the lease lost
            print(
                f"error: PostgreSQL (state.url): {exc}; check that the server is reachable"
                " and the role may use the database",
                file=sys.stderr,
            )
            return EXIT_FAILED
        except KeyboardInterrupt:
            log.info(
                "stopped",
                signal=stop.received,
                command=args.command,
                note="stopped before the end; "
                + (
                    "the demo's throw-away store is removed"
                    if args.command == "demo"
                    else "what was already stored is kept"
                ),
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

    for add_parser in (
        run.add_parser,
        check.add_parser,
        once.add_parser,
        status.add_parser,
        alerts.add_test_alert_parser,
        digest.add_parser,
        imports.add_parser,
        silence.add_parser,
        alerts.add_rules_parser,
        demo.add_parser,
    ):
        add_parser(sub, command)
    return parser
