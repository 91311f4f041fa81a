"""The calls priced and grouped: each call's date onto the local-hour bucket grid, each price
into an exact integer multiplier, bad rows flagged, then one group per (bucket, key, model),
all in polars; Python only sees what is small (the distinct minutes and prices, the bad rows
shown, the groups)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from daemon.importer.read import (
    ImportFileError,
    Source,
    load_polars,
    parse_date,
    parse_price,
    read_frame,
    row_problem,
)
from daemon.importer.result import ImportResult
from daemon.rules.windows import bucket_end, bucket_start

_SHOWN_ERRORS = 10


def read_calls(source: Source, tz: ZoneInfo, *, strict: bool = False) -> ImportResult:
    """Aggregate a per-call CSV into priced hourly (key, model) groups."""
    pl = load_polars()
    frame, labels = read_frame(source)
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
                when = parse_date(date)
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
    prices = {t: p for t in price_texts if (p := parse_price(t)) is not None}
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
            f"line {row['line']}: {row_problem(row, labels)}"
            for row in flagged.iter_rows(named=True)
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
