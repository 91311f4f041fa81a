"""What every command shares: exit codes, the clock, and loading the config.

Command modules import from here (and from the rest of `daemon`); nothing here imports a
command module, so no command imports back up to the parser in `daemon.cli.app`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from daemon.config import DEFAULT_CONFIG_PATH, Config, load_config
from daemon.logs import redactor

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
Handler = Callable[[argparse.Namespace], int]
log = structlog.get_logger("langdock_budget.cli")


class AddCommand(Protocol):
    """`command` in `daemon.cli.app.build_parser`: adds a subcommand that takes the common
    options (and runs ``handler``); ``help`` is its line in the parent's list,
    ``description`` what its own --help says."""

    def __call__(
        self,
        group: Any,
        name: str,
        help: str,
        handler: Handler | None = None,
        *,
        description: str,
    ) -> argparse.ArgumentParser: ...


def utc_now() -> datetime:
    """The wall clock. A command reads it once and hands the instant on; a cycle (which
    reads it before and after its poll) is handed this function."""
    return datetime.now(UTC)


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
