"""`import FILE.csv`: the web UI's per-call export into the hourly buckets (docs/DESIGN.md
"Digests, new members, import, silences").

`read` reads the file with polars (in Rust), a few megabytes at a time, so that only the
groups stay in memory, not the file's cells; `group` maps each chunk's distinct quarter hours
onto the local-hour bucket grid and its distinct prices onto exact integer multipliers (the
lookups in `cells`, the arithmetic in `money`), and groups the calls by (bucket, key, model),
so a group's cost ``input x input_price / 1e6 + output x output_price / 1e6`` is an exact
integer sum (in 64 or 128 bits, or Python's integers past that) scaled once at the end;
`result` holds what came out. Bad rows are reported
with their line number and skipped (or, with ``strict``, stop the import).

`write` stores the imported buckets only where the API has not been fetched yet: the poller
still fetches them later, and the API's numbers then replace the import's.

polars is loaded only when a file is read (`read.load_polars`), never by importing this; nor
is the store (`write`), until `store_import` is used: reading a file needs neither it nor the
HTTP client, and the import's peak memory is measured without them (bench/import_bench.py).
"""

from typing import TYPE_CHECKING, Any

from daemon.importer.group import read_calls
from daemon.importer.read import ImportFileError, Source
from daemon.importer.result import ImportResult, day_ranges

if TYPE_CHECKING:
    from daemon.importer.write import store_import

__all__ = [
    "ImportFileError",
    "ImportResult",
    "Source",
    "day_ranges",
    "read_calls",
    "store_import",
]


def __getattr__(name: str) -> Any:
    if name == "store_import":
        from daemon.importer.write import store_import

        return store_import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
