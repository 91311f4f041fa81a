"""An import's groups into the store, as hourly buckets, where the API has not filled them yet:
the poller still fetches those hours later, and the API's numbers then replace the import's."""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from daemon.importer.result import ImportResult
from daemon.langdock.csv import KeyUsage
from daemon.rules.windows import bucket_end
from daemon.store import Store


def store_import(store: Store, result: ImportResult, tz: ZoneInfo, now: datetime) -> int:
    """Write the imported buckets that the API has not filled yet; return how many."""
    fetched = store.segments("api-keys", datetime(1970, 1, 1, tzinfo=UTC))  # oldest first
    starts = [segment.start for segment in fetched]
    written = 0
    for start_ts, groups in result.by_bucket():  # one bucket's rows at a time
        begins = datetime.fromtimestamp(start_ts, UTC)
        at = bisect_right(starts, begins) - 1
        if at >= 0 and begins < fetched[at].end:
            continue  # the API's numbers for this hour (or the range holding it) win
        rows = [
            KeyUsage(
                key_id,
                result.names.get(key_id, key_id),
                model,
                calls,
                cost,
                prompt_tokens=inp,
                completion_tokens=out,
            )
            for key_id, model, calls, inp, out, cost in groups
        ]
        store.replace_key_usage(begins, bucket_end(begins, tz), rows, now, export="import")
        written += 1
    return written
