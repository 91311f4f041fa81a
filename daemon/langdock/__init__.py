"""Everything that talks to (or stands in for) Langdock's Usage Export API.

- `client`: `LangdockClient`, HTTP with pacing and bounded retries; one export at a time.
- `protocol`: what an export request looks like, what its answers mean, the errors.
- `download`: fetching one export's signed file in bounded memory, read as a stream.
- `csv`: parsing the export CSVs into typed rows, summed per key and model (the entry);
  `csv_rows`: the row types, the columns and the per-row parsers; `csv_columns`: the
  column-wise read of an api-keys file.
- `checks`: the bounds every cell is checked against (damaged records, poisoned values).
- `pacing`: `Pacer`, a sliding log so no 60 s window holds more calls than allowed.
- `simulator` and `sim_workspace`: a loopback stand-in for the API, for `demo` and tests.

The public client API is re-exported here: ``from daemon.langdock import LangdockClient``.
`LangdockClient` is imported when first asked for: it loads httpx and tenacity (~50 ms), which
the store (it reads `csv`'s column names) and the commands that make no export call never need.
"""

from typing import TYPE_CHECKING, Any

from daemon.langdock.pacing import Clock, Pacer, Sleep
from daemon.langdock.protocol import (
    AuthError,
    BadRequestError,
    DataError,
    ExportKind,
    LangdockError,
    TransientError,
    export_body,
    export_endpoint,
    wall_clock,
)

if TYPE_CHECKING:
    from daemon.langdock.client import LangdockClient

__all__ = [
    "AuthError",
    "BadRequestError",
    "Clock",
    "DataError",
    "ExportKind",
    "LangdockClient",
    "LangdockError",
    "Pacer",
    "Sleep",
    "TransientError",
    "export_body",
    "export_endpoint",
    "wall_clock",
]


def __getattr__(name: str) -> Any:
    if name == "LangdockClient":
        from daemon.langdock.client import LangdockClient

        return LangdockClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
