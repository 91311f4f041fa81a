"""The calls checked and grouped a chunk of the file at a time (`read.read_chunks`, read
ahead on another thread), all in polars: each call's date onto the local-hour bucket grid, its
key, model and prices onto small integer ids and exact integer multipliers (`cells`, `money`),
bad rows flagged, then one partial group per (bucket, key, model) and chunk whose cost is an
integer count of 10**-(6 + decimals) USD. Python only sees what is small: the distinct quarter
hours, keys, models and prices, the bad rows shown, the partial groups' count. At the end the
partial groups of buckets that more than one chunk holds are merged.

Only the partial groups stay in memory, not the file's cells: a million calls peak at less
than half of what pandas needs to read them (docs/PERFORMANCE.md "Import"). Costs that could
outgrow 128 bits (prices with dozens of digits) are summed per price in polars and priced
with Python's integers instead (a second read of the file)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from daemon.importer.cells import (
    QUARTER,
    Ids,
    by_text,
    derived,
    distinct,
    learn,
    lookup,
    seconds,
    tokens,
)
from daemon.importer.cells import Texts as _Texts  # group._Texts: tests set its LIMIT
from daemon.importer.money import Pricing, TooWide, narrowed, priced_in_python, scaled
from daemon.importer.read import (
    ImportFileError,
    Layout,
    Source,
    load_polars,
    parse_date,
    read_ahead,
    read_chunks,
    read_layout,
    row_problem,
)
from daemon.importer.result import ImportResult
from daemon.rules.windows import bucket_end, bucket_start

_SHOWN_ERRORS = 10


def read_calls(
    source: Source, tz: ZoneInfo, *, strict: bool = False, chunk_bytes: int = 0
) -> ImportResult:
    """Aggregate a per-call CSV into priced hourly (key, model) groups."""
    pl = load_polars()
    layout = read_layout(source)
    try:
        return _read(pl, source, layout, tz, strict, chunk_bytes, exact=False)
    except TooWide:  # prices with dozens of digits: priced once more, in Python
        return _read(pl, source, layout, tz, strict, chunk_bytes, exact=True)


def _read(
    pl: Any,
    source: Source,
    layout: Layout,
    tz: ZoneInfo,
    strict: bool,
    chunk_bytes: int,
    *,
    exact: bool,
) -> ImportResult:
    calls = _Calls(pl, tz, layout.labels, strict, exact)
    for frame in read_ahead(
        read_chunks(source, layout, chunk_bytes), functools.partial(derived, pl)
    ):
        calls.add(frame)
    return calls.result()


class _Calls:
    """What the chunks add up to so far: one partial group per (bucket, key, model) and chunk,
    its cost already an integer count of 10**-(6 + decimals) USD (the most decimals of any price
    so far; earlier chunks are scaled up when a price with more comes). With ``exact``, the
    partial groups keep their prices' ids and tokens instead, for Python to price at the end."""

    def __init__(
        self, pl: Any, tz: ZoneInfo, labels: dict[str, str], strict: bool, exact: bool
    ) -> None:
        self.pl, self.tz, self.labels, self.strict, self.exact = pl, tz, labels, strict, exact
        # UTC quarter hour → the quarter hour its bucket starts on (None: not a date Python has)
        self.buckets: dict[int, int | None] = {}
        self.spans: dict[int, tuple[int, int]] = {}  # UTC hour → the bucket that starts in it
        self.others: dict[str, tuple[int, float] | None] = {}  # other dates → bucket, stamp
        self.pricing = Pricing(pl)  # the costs' scale and the integer widths they need
        self.keys, self.models, self.prices = Ids(), Ids(), Ids()
        self.texts = {
            "key_id": _Texts(pl, lambda text: self.keys.of(text, text.strip() or None)),
            "model": _Texts(pl, lambda text: self.models.of(text, text.strip() or None)),
            "input_price": _Texts(pl, self.pricing.price),
        }
        self.texts["output_price"] = self.texts["input_price"]  # one list of prices
        self.names: dict[int, str] = {}
        self.partials: list[Any] = []
        self.rows = self.skipped = 0
        self.errors: list[str] = []
        self.first: datetime | None = None
        self.last: datetime | None = None

    def bucket_of(self, when: datetime) -> int | None:
        """The bucket holding ``when``, as the UTC quarter hour it starts on (None where the
        calendar ends: a bad row)."""
        stamp = when.timestamp()
        span = self.spans.get(int(stamp) // 3600)
        if span is None or not span[0] <= stamp < span[1]:
            try:
                start = bucket_start(when, self.tz)
                span = (int(start.timestamp()), int(bucket_end(start, self.tz).timestamp()))
            except (OverflowError, ValueError):  # year 1 or 9999
                return None
            self.spans[int(stamp) // 3600] = span
        return span[0] // QUARTER

    def add(self, frame: Any) -> None:
        """Add a chunk (`cells.derived` of what `read_chunks` gave)."""
        pl = self.pl
        frame = frame.with_columns(
            **{f"{column}#": texts.codes(column) for column, texts in self.texts.items()}
        )
        found = distinct(pl, frame, list(self.texts))
        if found["unread"]:  # dates with a T, counts with spaces: read again, more slowly
            with_t = seconds(pl, pl.col("date"), "T")
            frame = frame.with_columns(
                minute=pl.coalesce("minute", pl.when("plain").then(with_t)),
                input_tokens=pl.coalesce("input_tokens", tokens(pl, "input")),
                output_tokens=pl.coalesce("output_tokens", tokens(pl, "output")),
            )
            found = distinct(pl, frame, list(self.texts))
        if relearnt := learn(pl, frame, found, self.texts):
            frame = frame.with_columns(
                **{f"{column}#": self.texts[column].codes(column) for column in relearnt}
            )
        self.pricing.tokens += found["tokens"] or 0
        token_type = self.pricing.token_type()

        quarters = {}
        for quarter in found["quarters"]:
            if quarter not in self.buckets:
                try:
                    instant = datetime.fromtimestamp(quarter * QUARTER, UTC)
                except (OverflowError, ValueError):  # year 0 (polars reads it; Python not)
                    self.buckets[quarter] = None
                else:
                    self.buckets[quarter] = self.bucket_of(instant)
            quarters[quarter] = self.buckets[quarter]
        bucket = lookup(pl, pl.col("minute") // QUARTER, quarters, pl.Int32)
        stamp = pl.lit(None, dtype=pl.Float64)
        others = {}
        for date in found["others"]:
            if date not in self.others:
                try:
                    when = parse_date(date)
                except ValueError:
                    self.others[date] = None
                else:
                    start = self.bucket_of(when)
                    self.others[date] = None if start is None else (start, when.timestamp())
            if (other := self.others[date]) is not None:
                others[date] = other
        if others:
            on_quarter = {date: other[0] for date, other in others.items()}
            bucket = pl.coalesce(bucket, by_text(pl, "date", on_quarter, pl.Int32))
            stamp = by_text(pl, "date", {d: o[1] for d, o in others.items()}, pl.Float64)
        buckets = [b for b in quarters.values() if b is not None]
        buckets += [other[0] for other in others.values()]
        prices = self.texts["input_price"]
        if self.exact:
            pairs = zip(prices.texts, prices.values, strict=True)
            price_type, factors = pl.UInt32, [self.prices.of(t, v) for t, v in pairs]
        else:
            price_type = self.pricing.units_type(prices.values, self.partials)
            factors = [
                None if v is None else scaled(v, self.pricing.decimals) for v in prices.values
            ]
        checked = frame.with_columns(
            bucket=bucket,
            stamp=stamp,
            key=self.texts["key_id"].lookup("key_id", pl.UInt32),
            model_id=self.texts["model"].lookup("model", pl.UInt32),
            input_id=prices.lookup("input_price", price_type, factors),
            output_id=prices.lookup("output_price", price_type, factors),
        ).with_columns(
            bad=(
                pl.any_horizontal(
                    pl.col(name).is_null()
                    for name in (
                        "bucket",
                        "key",
                        "model_id",
                        "input_id",
                        "output_id",
                        "input_tokens",
                        "output_tokens",
                    )
                )
                | (pl.col("input_tokens") < 0)
                | (pl.col("output_tokens") < 0)
            ).fill_null(True)
        )
        del frame
        flagged = checked.filter(pl.col("bad"))
        good = checked.filter(~pl.col("bad")) if flagged.height else checked
        del checked
        sums = {
            "calls": pl.len(),
            "input": pl.col("input_tokens").cast(token_type).sum(),
            "output": pl.col("output_tokens").cast(token_type).sum(),
        }
        if self.exact:
            by = ["bucket", "key", "model_id", "input_id", "output_id"]
            partial = good.group_by(by).agg(**sums)
        else:
            sums["units"] = (
                pl.col("input_tokens").cast(price_type) * pl.col("input_id")
                + pl.col("output_tokens").cast(price_type) * pl.col("output_id")
            ).sum()
            partial = narrowed(pl, self._grouped(good, sums, buckets))
        if partial.height:
            self.partials.append(partial)
        self.rows += good.height
        if flagged.height:  # the first and last call among the good ones
            span = good.select(
                first=pl.col("minute").min(),
                last=pl.col("minute").max(),
                first_parsed=pl.col("stamp").min(),
                last_parsed=pl.col("stamp").max(),
            ).row(0)
        else:  # all good: the first and last of all, as read for the mapping
            stamps = [other[1] for other in others.values()]
            span = (found["first"], found["last"], min(stamps, default=None))
            span += (max(stamps, default=None),)
        for stamp_s in span:
            if stamp_s is not None:
                when = datetime.fromtimestamp(stamp_s, UTC)
                self.first = when if self.first is None else min(self.first, when)
                self.last = when if self.last is None else max(self.last, when)
        self._name(good, good.select("key", "key_name").filter(pl.col("key").is_last_distinct()))
        if flagged.height:
            self._flag(flagged)

    def _name(self, good: Any, last: Any) -> None:
        """Each key's name: the last one given (stripped), blank ones aside."""
        pl = self.pl
        blank = []
        for key, name in last.iter_rows():
            if name is not None and name.strip():
                self.names[key] = name.strip()
            else:
                blank.append(key)
        if blank:  # its last call had no name: the one before that had, maybe
            named = good.filter(
                pl.col("key").is_in(blank) & (pl.col("key_name").str.strip_chars() != "")
            )
            names = named.group_by("key").agg(pl.col("key_name").last().str.strip_chars())
            self.names.update(names.iter_rows())

    def _grouped(self, good: Any, sums: dict[str, Any], buckets: list[int]) -> Any:
        """The calls summed per (bucket, key, model): grouped by one integer that packs the
        three (a single 32- or 64-bit key hashes fastest), unpacked after."""
        pl = self.pl
        keys, models = len(self.keys.values), len(self.models.values)
        low, high = min(buckets, default=0), max(buckets, default=0)
        size = (high - low + 1) * keys * models
        if size >= 2**62:
            return good.group_by("bucket", "key", "model_id").agg(**sums)
        width = pl.UInt32 if size < 2**32 else pl.Int64
        packed = (pl.col("bucket").cast(pl.Int64) - low) * keys + pl.col("key")
        packed = (packed * models + pl.col("model_id")).cast(width)
        group = pl.col("group").cast(pl.Int64)
        return (
            good.group_by(group=packed)
            .agg(**sums)
            .select(
                (group // (keys * models) + low).cast(pl.Int32).alias("bucket"),
                (group // models % keys).cast(pl.UInt32).alias("key"),
                (group % models).cast(pl.UInt32).alias("model_id"),
                *sums,
            )
        )

    def _flag(self, flagged: Any) -> None:
        pl = self.pl
        # a blank record (every cell empty) is skipped, as the csv module would
        blank = pl.all_horizontal(
            pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "") for name in self.labels
        )
        bad = flagged.filter(~blank)
        self.skipped += bad.height
        room = (1 if self.strict else _SHOWN_ERRORS) - len(self.errors)
        for row in bad.head(max(room, 0)).iter_rows(named=True):
            self.errors.append(f"line {row['line']}: {row_problem(row, self.labels)}")
        if self.strict and self.errors:
            raise ImportFileError(f"per-call CSV: {self.errors[0]}; fix the row or drop --strict")

    def result(self) -> ImportResult:
        pl = self.pl
        decimals = self.pricing.decimals_seen
        result = ImportResult(scale=6 + decimals, rows=self.rows, skipped=self.skipped)
        result.errors = self.errors
        if not self.rows:
            return result
        if self.exact:
            multipliers = [scaled(price, decimals) for price in self.prices.values]
            groups = priced_in_python(pl, self.partials, multipliers)
        else:
            groups = self._merged()
        result.groups = groups.rename({"model_id": "model"})
        result.keys, result.models = self.keys.values, self.models.values
        result.names = {self.keys.values[key]: name for key, name in self.names.items()}
        result.first, result.last = self.first, self.last
        return result

    def _merged(self) -> Any:
        """The partial groups as one frame, merged where a (bucket, key, model) came in more
        than one chunk (a sorted file: only the hours where one chunk ends and the next
        starts), the rest as they are."""
        pl = self.pl
        partials, self.partials = self.partials, []
        seen: dict[int, int] = {}
        for partial in partials:
            for bucket in partial.get_column("bucket").unique().to_list():
                seen[bucket] = seen.get(bucket, 0) + 1
        shared = [bucket for bucket, count in seen.items() if count > 1]
        apart, together = [], []
        partials.reverse()
        while partials:  # each chunk's partial groups freed as soon as they are split
            partial = partials.pop()
            mixed = partial.get_column("bucket").is_in(shared)
            if mixed.any():
                together.append(partial.filter(mixed))
                partial = partial.filter(~mixed)
            apart.append(partial)
        if together:  # summed in the widest integers any sum may need, narrowed after
            token_type = self.pricing.token_type()
            wide = {"input": token_type, "output": token_type, "units": self.pricing.bounded()}
            merged = pl.concat([part.cast(wide) for part in together])
            del together
            sums = pl.col("calls", "input", "output", "units").sum()
            apart.append(narrowed(pl, merged.group_by("bucket", "key", "model_id").agg(sums)))
        widths = [pl.Int32, pl.Int64, pl.Int128]  # narrowest first
        types = {
            name: max((part.schema[name] for part in apart), key=widths.index)
            for name in ("input", "output", "units")
        }
        apart.reverse()
        groups = []
        while apart:  # one at a time: widened where another chunk needed more bits
            groups.append(apart.pop().cast(types))
        return pl.concat(groups)
