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
"""

from daemon.langdock.client import LangdockClient
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
