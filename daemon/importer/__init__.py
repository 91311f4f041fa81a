"""`import FILE.csv`: the web UI's per-call export into the hourly buckets (docs/DESIGN.md
"Digests, new members, import, silences").

`read` reads the file with polars (in Rust, on every core: a million calls take about a
second); `group` maps the distinct minutes onto the local-hour bucket grid and the distinct
prices onto exact integer multipliers, and groups the calls by (bucket, key, model), so a
group's cost ``input x input_price / 1e6 + output x output_price / 1e6`` is an exact integer
sum (in 128 bits) scaled once at the end; `result` holds what came out. Bad rows are reported
with their line number and skipped (or, with ``strict``, stop the import).

`write` stores the imported buckets only where the API has not been fetched yet: the poller
still fetches them later, and the API's numbers then replace the import's.

polars is loaded only when a file is read (`read.load_polars`), never by importing this.
"""

from daemon.importer.group import read_calls
from daemon.importer.read import ImportFileError, Source
from daemon.importer.result import ImportResult, day_ranges
from daemon.importer.write import store_import

__all__ = [
    "ImportFileError",
    "ImportResult",
    "Source",
    "day_ranges",
    "read_calls",
    "store_import",
]
