"""`import FILE.csv`: the web UI's per-call export (SPEC §1) into the hourly buckets.

The file is streamed once. Calls are grouped by (bucket, key, model, input price, output
price); each group's tokens are summed as integers and priced once, exactly:
``input x input_price / 1e6 + output x output_price / 1e6``. Memory grows with the number of
groups, not rows. Bad rows are reported with their line number and skipped (or, with
``strict``, stop the import).

Imported buckets fill history only where the API has not been fetched yet: the poller still
fetches them later, and the API's numbers then replace the import's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from daemon.exports import KeyUsage, normalize_header
from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from daemon.store import Store

MILLION = Decimal(1_000_000)
_COLUMNS = {
    "date": ("date", "timestamp", "created_at"),
    "key_id": ("api_key_id",),
    "key_name": ("api_key_name",),
    "provider": ("provider",),
    "model": ("model",),
    "input": ("input_tokens",),
    "output": ("output_tokens",),
    "latency": ("completion_time_(ms)", "completion_time_ms", "completion_time"),
    "input_price": ("input_token_price_(usd/1m_tokens)", "input_token_price", "input_price"),
    "output_price": ("output_token_price_(usd/1m_tokens)", "output_token_price", "output_price"),
}
_REQUIRED = ("date", "key_id", "model", "input", "output", "input_price", "output_price")


class ImportError_(ValueError):
    """The file can't be imported (missing columns, or a bad row under --strict)."""


@dataclass
class ImportResult:
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, with line numbers
    first: datetime | None = None
    last: datetime | None = None
    # (bucket start, key id, model) → cost, requests, input, output
    buckets: dict[tuple[datetime, str, str], list[Decimal | int]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def cost_by_key_day(self, tz: ZoneInfo) -> dict[tuple[str, str], Decimal]:
        totals: dict[tuple[str, str], Decimal] = {}
        for (start, key_id, _model), values in self.buckets.items():
            day = calendar_period("day", start, tz).id
            cost = values[0]
            assert isinstance(cost, Decimal)
            totals[(key_id, day)] = totals.get((key_id, day), Decimal(0)) + cost
        return totals


def _header_map(header: list[str]) -> dict[str, int]:
    position = {normalize_header(h): i for i, h in enumerate(header)}
    found = {}
    for name, aliases in _COLUMNS.items():
        for alias in aliases:
            if alias in position:
                found[name] = position[alias]
                break
    missing = [n for n in _REQUIRED if n not in found]
    if missing:
        seen = ", ".join(h.strip().lstrip("\ufeff") for h in header)
        raise ImportError_(
            f"per-call CSV: missing column(s) {', '.join(missing)} (headers seen: {seen});"
            " export it from Settings > API > Export"
        )
    return found


def _parse_date(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_calls(lines: Iterable[str], tz: ZoneInfo, *, strict: bool = False) -> ImportResult:
    """Aggregate a per-call CSV into priced hourly (key, model) groups."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_("per-call CSV: the file is empty") from None
    cols = _header_map(header)
    groups: dict[tuple[datetime, str, str, str, str], list[int]] = {}
    result = ImportResult()
    buckets_of_hour: dict[datetime, tuple[datetime, datetime]] = {}
    prices: dict[str, Decimal] = {}
    i_date, i_key, i_model = cols["date"], cols["key_id"], cols["model"]
    i_in, i_out, i_pin, i_pout = (
        cols["input"],
        cols["output"],
        cols["input_price"],
        cols["output_price"],
    )
    i_name = cols.get("key_name")
    first = last = None
    for record in reader:
        if not record or not any(cell.strip() for cell in record):
            continue
        try:
            when = _parse_date(record[i_date])
            key_id = record[i_key].strip()
            model = record[i_model].strip()
            if not key_id or not model:
                raise ValueError("empty API Key ID or Model")
            input_tokens = int(record[i_in] or 0)
            output_tokens = int(record[i_out] or 0)
            in_text, out_text = record[i_pin].strip() or "0", record[i_pout].strip() or "0"
            for text in (in_text, out_text):
                if text not in prices:  # few distinct prices: parse and check each once
                    price = Decimal(text)
                    if not price.is_finite() or price < 0:
                        raise ValueError(f"invalid price {text!r}")
                    prices[text] = price
            if input_tokens < 0 or output_tokens < 0:
                raise ValueError("negative token count")
        except (ValueError, IndexError, InvalidOperation) as exc:
            message = f"line {reader.line_num}: {exc}"
            if strict:
                raise ImportError_(
                    f"per-call CSV: {message}; fix the row or drop --strict"
                ) from None
            result.skipped += 1
            if len(result.errors) < 10:
                result.errors.append(message)
            continue
        hour = when.replace(minute=0, second=0, microsecond=0)
        span = buckets_of_hour.get(hour)
        if span is None or not span[0] <= when < span[1]:
            start = bucket_start(when, tz)
            span = buckets_of_hour[hour] = (start, bucket_end(start, tz))
        group = groups.get((span[0], key_id, model, in_text, out_text))
        if group is None:
            groups[(span[0], key_id, model, in_text, out_text)] = [1, input_tokens, output_tokens]
        else:
            group[0] += 1
            group[1] += input_tokens
            group[2] += output_tokens
        if i_name is not None and i_name < len(record) and record[i_name]:
            result.names[key_id] = record[i_name].strip()
        result.rows += 1
        if first is None or when < first:
            first = when
        if last is None or when > last:
            last = when
    result.first, result.last = first, last
    for (start, key_id, model, in_text, out_text), (calls, inp, out) in groups.items():
        cost = (inp * prices[in_text] + out * prices[out_text]) / MILLION
        values = result.buckets.setdefault((start, key_id, model), [Decimal(0), 0, 0, 0])
        values[0] += cost
        values[1] += calls
        values[2] += inp
        values[3] += out
    return result


def store_import(store: Store, result: ImportResult, tz: ZoneInfo, now: datetime) -> int:
    """Write the imported buckets that the API has not filled yet; return how many."""
    fetched = store.fetched_segments("api-keys", datetime(1970, 1, 1, tzinfo=UTC))
    by_bucket: dict[datetime, list[KeyUsage]] = {}
    for (start, key_id, model), (cost, calls, inp, out) in result.buckets.items():
        assert isinstance(cost, Decimal) and isinstance(calls, int)
        by_bucket.setdefault(start, []).append(
            KeyUsage(
                key_id,
                result.names.get(key_id, key_id),
                model,
                calls,
                cost,
                prompt_tokens=int(inp),
                completion_tokens=int(out),
            )
        )
    written = 0
    for start, rows in sorted(by_bucket.items()):
        if start in fetched:
            continue  # the API's numbers for this hour win
        store.replace_key_usage(start, bucket_end(start, tz), rows, now, export="import")
        written += 1
    return written


def day_ranges(
    first: datetime, last: datetime, tz: ZoneInfo
) -> list[tuple[str, datetime, datetime]]:
    """The local days the file spans, as (id, start, end)."""
    days = []
    period = calendar_period("day", first, tz)
    while period.start <= last:
        days.append((period.id, period.start, period.end))
        period = calendar_period("day", period.end + timedelta(seconds=1), tz)
    return days
