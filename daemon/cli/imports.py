"""`langdock-budget import FILE.csv [--reconcile]`: the web UI's per-call export into the store.

`daemon.importer` loads polars only when a file is read, and this module loads the importer
only when the command runs, so registering it costs the other commands (and the daemon) nothing.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, AddCommand, load, utc_now
from daemon.cli.signals import run_async
from daemon.config import Config
from daemon.cycle import make_client
from daemon.money import format_usd
from daemon.state import open_store

if TYPE_CHECKING:
    from daemon import importer


def add_parser(sub: Any, command: AddCommand) -> None:
    imports = command(
        sub,
        "import",
        "ingest a per-call CSV from the web UI (Settings > API > Export)",
        cmd_import,
        description="Ingest the web UI's per-call CSV export (Settings > API > Export) into"
        " the hourly buckets, priced exactly per call; hours the API export already filled"
        " are kept. Bad rows are skipped and shown with their line and column (--strict stops"
        " at the first). Exit 0 ok, 1 differences found by --reconcile, 2 an unreadable file.",
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


def cmd_import(args: argparse.Namespace) -> int:
    from daemon import importer

    config = load(args)
    try:
        result = importer.read_calls(args.file, config.tz, strict=args.strict)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except (importer.ImportFileError, UnicodeDecodeError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    store = open_store(config, exclusive=True)
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
    return run_async(_reconcile(config, result, args.tolerance))


async def _reconcile(config: Config, result: importer.ImportResult, tolerance: Decimal) -> int:
    """The file's per-key daily cost next to the API-key export's, day by day."""
    from daemon import importer

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
