"""`import FILE.csv`: the web UI's per-call export into the hourly buckets (docs/DESIGN.md
"Digests, new members, import, silences").

The file is parsed, checked and grouped by polars (in Rust, on every core: a million calls
take about a second); Python only sees what is small: the distinct minutes (mapped onto
the local-hour bucket grid), the distinct prices, the bad rows and the groups. Calls are
grouped by (bucket, key, model); each price becomes an exact integer multiplier, so a
group's cost ``input x input_price / 1e6 + output x output_price / 1e6`` is an exact
integer sum (in 128 bits) scaled once at the end. Bad rows are reported with their line
number and skipped (or, with ``strict``, stop the import).

Imported buckets fill history only where the API has not been fetched yet: the poller still
fetches them later, and the API's numbers then replace the import's.
"""

from __future__ import annotations

import csv
import io
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from daemon.langdock.csv import KeyUsage, normalize_header
from daemon.rules.windows import bucket_end, bucket_start, calendar_period
from daemon.store import Store

Source = Path | bytes  # a file, or its contents
_COLUMNS = {
    "date": ("date", "timestamp", "created_at"),
    "key_id": ("api_key_id",),
    "key_name": ("api_key_name",),
    "model": ("model",),
    "input": ("input_tokens",),
    "output": ("output_tokens",),
    "input_price": ("input_token_price_(usd/1m_tokens)", "input_token_price", "input_price"),
    "output_price": ("output_token_price_(usd/1m_tokens)", "output_token_price", "output_price"),
}
_REQUIRED = ("date", "key_id", "model", "input", "output", "input_price", "output_price")
# "2026-11-20 10:15:00", "2026-11-20T10:15:00.123Z": UTC wall time, cut at the minute by
# polars; anything else (offsets, odd spacing) is parsed row by row in Python
_PLAIN_UTC = r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?Z?$"
_SHOWN_ERRORS = 10


class ImportFileError(ValueError):
    """The file can't be imported (missing columns, or a bad row under --strict)."""


def _polars() -> Any:
    """polars, loaded here only: the daemon and the other commands never pay for it."""
    try:
        import polars
    except ImportError:
        raise ImportFileError(
            "polars, the CSV engine of `import` and a dependency of langdock-budget, is not"
            " installed: reinstall langdock-budget, or pip install 'polars>=1.20'"
        ) from None
    return polars


@dataclass
class ImportResult:
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, with line numbers
    first: datetime | None = None
    last: datetime | None = None
    names: dict[str, str] = field(default_factory=dict)
    # a polars DataFrame, one row per (bucket start in unix seconds, key, model): calls,
    # input and output tokens, and the cost in units of 10**-scale USD (an exact integer)
    groups: Any = None
    scale: int = 6

    @property
    def group_count(self) -> int:
        return 0 if self.groups is None else int(self.groups.height)

    def group_rows(self) -> Iterator[tuple[int, str, str, int, int, int, Decimal]]:
        """(bucket start, key, model, calls, input, output, cost in USD) per group."""
        if self.groups is None:
            return
        columns = ("bucket", "key", "model", "calls", "input", "output", "units")
        lists = [self.groups.get_column(name).to_list() for name in columns]
        for start, key, model, calls, inp, out, units in zip(*lists, strict=True):
            yield start, key, model, calls, inp, out, Decimal(units).scaleb(-self.scale)

    @property
    def buckets(self) -> dict[tuple[datetime, str, str], tuple[Decimal, int, int, int]]:
        """(bucket start, key id, model) → (cost, calls, input, output)."""
        return {
            (datetime.fromtimestamp(start, UTC), key, model): (cost, calls, inp, out)
            for start, key, model, calls, inp, out, cost in self.group_rows()
        }

    def cost_by_key_day(self, tz: ZoneInfo) -> dict[tuple[str, str], Decimal]:
        totals: dict[tuple[str, str], Decimal] = {}
        days: dict[int, str] = {}
        for start, key_id, _model, _calls, _in, _out, cost in self.group_rows():
            day = days.get(start)
            if day is None:
                instant = datetime.fromtimestamp(start, UTC)
                day = days[start] = calendar_period("day", instant, tz).id
            totals[(key_id, day)] = totals.get((key_id, day), Decimal(0)) + cost
        return totals


def _header(source: Source) -> list[str]:
    """The header row, read with the csv module (byte-order mark and quotes handled)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            raw = handle.readline()
    else:
        raw = source.split(b"\n", 1)[0]
    try:
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFileError(
            "per-call CSV: line 1 (the header) is not UTF-8; export it again, or save it as UTF-8"
        ) from None
    header = next(csv.reader([line]), [])
    if not header:
        raise ImportFileError("per-call CSV: the file is empty")
    return header


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
        raise ImportFileError(
            f"per-call CSV: missing column(s) {', '.join(missing)} (headers seen: {seen});"
            " export it from Settings > API > Export"
        )
    return found


def _parse_date(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _price(text: str) -> Decimal | None:
    """A price per million tokens (an empty cell is 0), or None when it is not a finite,
    non-negative number."""
    try:
        price = Decimal(text.strip() or "0")
    except InvalidOperation:
        return None
    return price if price.is_finite() and price >= 0 else None


def _problem(row: dict[str, Any], labels: dict[str, str]) -> str:
    """Why a row flagged bad is bad, naming the column as the file's header spells it (only
    for the few rows shown to the user)."""

    def cell(name: str) -> tuple[str, str]:
        return f"column {labels[name]!r}", (row[name] or "").strip()

    column, date = cell("date")
    if not date:
        return f"{column} is empty"
    try:
        _parse_date(date)
    except ValueError as exc:
        return f"{column}: {date[:40]!r} is not a date ({exc})"
    for name in ("key_id", "model"):
        column, text = cell(name)
        if not text:
            return f"{column} is empty"
    for name in ("input", "output"):
        column, text = cell(name)
        if not (text or "0").lstrip("-").isdigit():
            return f"{column}: {text[:40]!r} is not a whole number"
        if int(text or "0") < 0:
            return f"{column}: {text[:40]!r} is negative"
    for name in ("input_price", "output_price"):
        column, text = cell(name)
        if _price(text) is None:
            return f"{column}: {text[:40]!r} is not a price (a number >= 0, USD per 1M tokens)"
    return "unreadable row"


def _locate_unreadable(source: Source, header: list[str]) -> str | None:
    """Where polars gave up on a file, found with the csv module: the first cell that is not
    UTF-8 or holds a stray double quote, or the quoted cell that never closes; as
    "line N: column 'X': what is wrong". Only runs on that failure path."""
    labels = [h.strip().lstrip("\ufeff") for h in header]

    def column(index: int) -> str:
        return repr(labels[index]) if index < len(labels) else f"#{index + 1} (no header)"

    def lines() -> Any:
        if isinstance(source, Path):
            # invalid bytes become lone surrogates, which no valid UTF-8 text decodes to
            return source.open(encoding="utf-8", errors="surrogateescape", newline="")
        return io.StringIO(source.decode("utf-8", errors="surrogateescape"), newline="")

    with lines() as handle:
        reader = csv.reader(handle, strict=True)
        line = 1  # where the next record starts
        try:
            for number, record in enumerate(reader):
                for index, text in enumerate(record):
                    where = f"line {line}: column {column(index)}"
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        shown = text.encode("utf-8", errors="surrogateescape")[:40]
                        return f"{where}: {shown!r} is not UTF-8; save the file as UTF-8"
                    if number and '"' in text:
                        return (
                            f"{where}: a stray double quote in {text[:40]!r} (a cell with"
                            ' quotes must be quoted whole, its quotes doubled: "a ""b""")'
                        )
                line = reader.line_num + 1
        except csv.Error as exc:
            error = str(exc)
        else:
            return None
    with lines() as handle:
        first = next((text for number, text in enumerate(handle, 1) if number == line), "")
    return (
        f"line {line}: column {column(_bad_quote_cell(first))}: {error} (a quoted cell that"
        " is never closed, or text after its closing quote?)"
    )


def _bad_quote_cell(line: str) -> int:
    """The index of the cell where a record's first line breaks the quoting rules: text after
    a closing quote, or a quote still open at the end of the line."""
    index, state = 0, "start"  # start | plain | quoted | closed (a quote just closed)
    for char in line.rstrip("\r\n"):
        if state == "quoted":
            state = "closed" if char == '"' else state
        elif state == "closed" and char not in '",':
            return index
        elif char == ",":
            index, state = index + 1, "start"
        elif char == '"' and state in ("start", "closed"):
            state = "quoted"  # an opening quote, or the second of a doubled one
        else:
            state = "plain"
    return index


def read_calls(source: Source, tz: ZoneInfo, *, strict: bool = False) -> ImportResult:
    """Aggregate a per-call CSV into priced hourly (key, model) groups."""
    pl = _polars()
    header = _header(source)
    wanted = _header_map(header)
    labels = {name: header[index].strip().lstrip("\ufeff") for name, index in wanted.items()}
    order = sorted(wanted, key=wanted.__getitem__)
    try:
        raw = pl.read_csv(
            source,
            has_header=False,
            skip_rows=1,
            columns=[wanted[name] for name in order],
            infer_schema=False,
            truncate_ragged_lines=True,
            encoding="utf8",
        )
    except Exception as exc:  # polars' own error types: not UTF-8, broken quoting, ...
        where = _locate_unreadable(source, header)
        if where is not None:
            raise ImportFileError(f"per-call CSV: unreadable: {where}") from None
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ImportFileError(f"per-call CSV: unreadable ({first_line})") from None
    raw = raw.rename(dict(zip(raw.columns, order, strict=True)))  # selected, in file order
    if "key_name" not in wanted:
        raw = raw.with_columns(key_name=pl.lit(None, dtype=pl.String))
    # Cells are stripped where a stray space would change the meaning (names, counts);
    # dates that are not plain go to the careful path, prices are checked per distinct text.
    key, model = pl.col("key_id").str.strip_chars(), pl.col("model").str.strip_chars()
    frame = (
        raw.lazy()
        .with_row_index("line", offset=2)
        .with_columns(
            minute=pl.when(pl.col("date").str.contains(_PLAIN_UTC)).then(
                pl.col("date").str.slice(0, 16)
            ),
            key=key,
            model=model,
            name=pl.col("key_name").str.strip_chars(),
            input_tokens=_tokens(pl, pl.col("input")),
            output_tokens=_tokens(pl, pl.col("output")),
            # a blank record (every cell empty) is skipped, as the csv module would
            blank=pl.all_horizontal(
                [
                    pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "")
                    for name in order
                    if name not in ("key_id", "model")
                ]
                + [key.is_null() | (key == ""), model.is_null() | (model == "")]
            ),
        )
        .collect()
    )
    spans: dict[int, tuple[int, int]] = {}  # UTC hour → the bucket that starts in it

    def bucket_of(when: datetime) -> int:
        stamp = when.timestamp()
        span = spans.get(int(stamp) // 3600)
        if span is None or not span[0] <= stamp < span[1]:
            start = bucket_start(when, tz)
            span = (int(start.timestamp()), int(bucket_end(start, tz).timestamp()))
            spans[int(stamp) // 3600] = span
        return span[0]

    # the plain dates: one Python call per distinct minute, not per row
    instants: dict[str, datetime] = {}
    for minute in frame.get_column("minute").drop_nulls().unique().to_list():
        try:
            instants[minute] = datetime.fromisoformat(minute + "+00:00")
        except ValueError:
            continue  # "2026-13-45 10:15": the row is reported as bad
    minutes = {minute: bucket_of(instant) for minute, instant in instants.items()}
    lazy = frame.lazy().with_columns(
        bucket=pl.col("minute").replace_strict(minutes, default=None, return_dtype=pl.Int64),
        parsed_at=pl.lit(None, dtype=pl.Float64),
    )
    # the other dates (with offsets, or odd spacing), row by row
    others = (
        frame.lazy()
        .filter(pl.col("minute").is_null() & pl.col("date").is_not_null() & ~pl.col("blank"))
        .select("line", "date")
        .collect()
    )
    if others.height:
        lines, buckets, stamps = [], [], []
        for line, date in others.iter_rows():
            try:
                when = _parse_date(date)
            except ValueError:
                continue
            lines.append(line)
            buckets.append(bucket_of(when))
            stamps.append(when.timestamp())
        patch = pl.DataFrame(
            {"line": lines, "parsed_bucket": buckets, "parsed_stamp": stamps},
            schema={
                "line": frame.schema["line"],
                "parsed_bucket": pl.Int64,
                "parsed_stamp": pl.Float64,
            },
        )
        lazy = lazy.join(patch.lazy(), on="line", how="left").with_columns(
            bucket=pl.coalesce("bucket", "parsed_bucket"), parsed_at=pl.col("parsed_stamp")
        )
    # prices: each distinct text checked once, then an exact integer multiplier
    price_texts = set(frame.get_column("input_price").drop_nulls().unique().to_list())
    price_texts |= set(frame.get_column("output_price").drop_nulls().unique().to_list())
    prices = {t: p for t in price_texts if (p := _price(t)) is not None}
    decimals = max((max(0, -int(p.as_tuple().exponent)) for p in prices.values()), default=0)
    multipliers = {t: int(p.scaleb(decimals)) for t, p in prices.items()}
    bad = (
        pl.col("bucket").is_null()
        | pl.col("key").is_null()
        | (pl.col("key") == "")
        | pl.col("model").is_null()
        | (pl.col("model") == "")
        | pl.col("input_tokens").is_null()
        | pl.col("output_tokens").is_null()
        | (pl.col("input_tokens") < 0)
        | (pl.col("output_tokens") < 0)
        | ~pl.col("input_price").is_in(list(multipliers))
        | ~pl.col("output_price").is_in(list(multipliers))
    ).fill_null(True)
    checked = lazy.filter(~pl.col("blank")).with_columns(bad=bad).collect().lazy()
    good = checked.filter(~pl.col("bad"))

    # 64-bit integers where no sum can overflow them, 128-bit otherwise
    tokens = checked.select(
        pl.col("input_tokens").cast(pl.Float64).abs().sum()
        + pl.col("output_tokens").cast(pl.Float64).abs().sum()
    ).collect()
    wide = (tokens.item() or 0) * max(multipliers.values(), default=0) >= 2**62
    units_type = pl.Int128 if wide else pl.Int64

    def cost_units(tokens: str, price: str) -> Any:
        multiplier = pl.col(price).replace_strict(multipliers, return_dtype=units_type)
        return pl.col(tokens).cast(units_type) * multiplier

    flagged, counts, groups, names, seen = pl.collect_all(
        [
            checked.filter(pl.col("bad")).head(1 if strict else _SHOWN_ERRORS),
            checked.select(rows=(~pl.col("bad")).sum(), skipped=pl.col("bad").sum()),
            good.group_by("bucket", "key", "model").agg(
                calls=pl.len(),
                input=pl.col("input_tokens").sum(),
                output=pl.col("output_tokens").sum(),
                units=(
                    cost_units("input_tokens", "input_price")
                    + cost_units("output_tokens", "output_price")
                ).sum(),
            ),
            good.filter(pl.col("name").is_not_null() & (pl.col("name") != ""))
            .group_by("key")
            .agg(pl.col("name").last()),
            good.select(
                minutes=pl.col("minute").drop_nulls().unique().implode(),
                first_parsed=pl.col("parsed_at").min(),
                last_parsed=pl.col("parsed_at").max(),
            ),
        ]
    )
    result = ImportResult(scale=6 + decimals)
    result.rows, result.skipped = (int(n) for n in counts.row(0))
    if result.skipped:
        shown = [
            f"line {row['line']}: {_problem(row, labels)}" for row in flagged.iter_rows(named=True)
        ]
        if strict:
            raise ImportFileError(f"per-call CSV: {shown[0]}; fix the row or drop --strict")
        result.errors = shown
    if not result.rows:
        return result
    result.groups = groups
    result.names = dict(names.iter_rows())
    # first and last call, to the minute for plain dates (enough to tell the days covered)
    span = seen.row(0, named=True)
    calls = [instants[minute] for minute in span["minutes"]]
    calls += [
        datetime.fromtimestamp(stamp, UTC)
        for stamp in (span["first_parsed"], span["last_parsed"])
        if stamp is not None
    ]
    result.first, result.last = min(calls), max(calls)
    return result


def _tokens(pl: Any, raw: Any) -> Any:
    """A token count: an empty cell counts as 0, anything not an integer as missing (bad)."""
    text = raw.str.strip_chars()
    return (
        pl.when(text == "")
        .then(pl.lit(0, dtype=pl.Int64))
        .otherwise(text.cast(pl.Int64, strict=False))
    )


def store_import(store: Store, result: ImportResult, tz: ZoneInfo, now: datetime) -> int:
    """Write the imported buckets that the API has not filled yet; return how many."""
    fetched = store.segments("api-keys", datetime(1970, 1, 1, tzinfo=UTC))  # oldest first
    starts = [segment.start for segment in fetched]
    by_bucket: dict[int, list[KeyUsage]] = {}
    for start, key_id, model, calls, inp, out, cost in result.group_rows():
        by_bucket.setdefault(start, []).append(
            KeyUsage(
                key_id,
                result.names.get(key_id, key_id),
                model,
                calls,
                cost,
                prompt_tokens=inp,
                completion_tokens=out,
            )
        )
    written = 0
    for start_ts, rows in sorted(by_bucket.items()):
        begins = datetime.fromtimestamp(start_ts, UTC)
        at = bisect_right(starts, begins) - 1
        if at >= 0 and begins < fetched[at].end:
            continue  # the API's numbers for this hour (or the range holding it) win
        store.replace_key_usage(begins, bucket_end(begins, tz), rows, now, export="import")
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
