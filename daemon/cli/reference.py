"""docs/CLI.md, generated from the argparse tree: every command's description, usage and
options as `--help` prints them. Regenerate with ``make docs``; a test keeps it current."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from daemon.cli.app import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subcommands(child)


def render() -> str:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the same wrapping wherever it is generated
    try:
        return _render(build_parser())
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _render(parser: argparse.ArgumentParser) -> str:
    lines = [
        "# Command line",
        "",
        "Generated from the parser by `make docs` (`daemon/cli/reference.py`); a test keeps",
        "it current. Every command takes `--config PATH` (default `$LANGDOCK_BUDGET_CONFIG`,",
        "then `/etc/langdock-budget/config.yaml`), `--log-format json|console` and",
        "`--log-level`; exit codes are in each description.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for child in _subcommands(parser):
        lines += ["", f"## `{child.prog}`", "", "```text", child.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `make docs`
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/CLI.md")
    target.write_text(render())
    print(f"wrote {target}")
