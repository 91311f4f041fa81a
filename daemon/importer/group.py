"""The calls checked, priced and grouped a chunk of the file at a time (`read.read_chunks`),
all in polars: each call's date onto the local-hour bucket grid, its key, model and prices
onto small integer ids and exact integer multipliers, bad rows flagged, then one partial group
per (bucket, key, model) and chunk whose cost is an integer count of 10**-(6 + decimals) USD
(64-bit, or 128-bit where a sum could need it). Python only sees what is small: the distinct
quarter hours, keys, models and prices, the bad rows shown, the partial groups' count. At the
end the partial groups of buckets that more than one chunk holds are merged.

Only the partial groups stay in memory, not the file's cells: a million calls peak at less
than half of what pandas needs to read them (docs/PERFORMANCE.md "Import"). Costs that could
outgrow 128 bits (prices with dozens of digits) are summed per price in polars and priced
with Python's integers instead (a second read of the file)."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from daemon.importer.read import (
    PLAIN_UTC,
    ImportFileError,
    Layout,
    Source,
    load_polars,
    parse_date,
    parse_price,
    read_chunks,
    read_layout,
    row_problem,
)
from daemon.importer.result import ImportResult
from daemon.rules.windows import bucket_end, bucket_start

_SHOWN_ERRORS = 10
_QUARTER = 900  # seconds: every bucket starts and ends on a UTC quarter hour (rules.windows)
_INT64_SAFE = 2**62  # sums below this can't overflow a 64-bit integer
_INT128_SAFE = 2**126


def read_calls(
    source: Source, tz: ZoneInfo, *, strict: bool = False, chunk_bytes: int = 0
) -> ImportResult:
    """Aggregate a per-call CSV into priced hourly (key, model) groups."""
    pl = load_polars()
    layout = read_layout(source)
    try:
        return _read(pl, source, layout, tz, strict, chunk_bytes, exact=False)
    except _TooWide:  # prices with dozens of digits: priced once more, in Python
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
    for frame in _read_ahead(
        read_chunks(source, layout, chunk_bytes), functools.partial(_derived, pl)
    ):
        calls.add(frame)
    return calls.result()


def _derived(pl: Any, raw: Any) -> Any:
    """What each chunk needs that no earlier chunk decides (on the reading thread): whether a
    date is plain UTC and its minute, the token counts the fast path reads."""
    # a plain UTC date's unix seconds, cut at the minute ("2026-11-20 10:15", or with a T)
    return raw.with_columns(
        plain=pl.col("date").str.contains(PLAIN_UTC),
        input_tokens=pl.col("input").cast(pl.Int64, strict=False),
        output_tokens=pl.col("output").cast(pl.Int64, strict=False),
    ).with_columns(minute=pl.when("plain").then(_seconds(pl, pl.col("date"), " ")))


def _read_ahead(chunks: Generator[Any, None, None], prepare: Callable[[Any], Any]) -> Iterator[Any]:
    """``chunks``, each read and prepared (by another thread) while the one before is added:
    polars works with the interpreter lock released, so on a machine with a core to spare the
    reading is hidden behind the adding. At most one chunk waits: two in memory at once."""
    ready: queue.SimpleQueue[Any] = queue.SimpleQueue()
    turn = threading.Semaphore(1)  # released when the reader may read the next chunk
    done = threading.Event()  # the caller stopped early: the reader closes the file

    def read() -> None:
        try:
            while turn.acquire() and not done.is_set():
                chunk = next(chunks, _END)
                ready.put(chunk if chunk is _END else prepare(chunk))
                if chunk is _END:
                    return
        except BaseException as exc:  # an unreadable file: raised in the caller's thread
            ready.put(_Failed(exc))
        finally:
            chunks.close()

    reader = threading.Thread(target=read, name="import-reader", daemon=True)
    reader.start()
    try:
        while (chunk := ready.get()) is not _END:
            if isinstance(chunk, _Failed):
                raise chunk.error
            turn.release()
            yield chunk
            del chunk
    finally:
        done.set()
        turn.release()
        reader.join()


_END = object()


@dataclass
class _Failed:
    error: BaseException


class _TooWide(Exception):
    """The costs may outgrow 128-bit integers."""


@dataclass
class _Ids:
    """Small integer ids for texts, in order of appearance, by value: texts that mean the same
    value share an id, and a text whose value is None (a blank key, a bad price) gets none."""

    values: list[Any] = field(default_factory=list)
    ids: dict[Any, int] = field(default_factory=dict)
    texts: dict[str, int | None] = field(default_factory=dict)

    def of(self, text: str, value: Any) -> int | None:
        known = self.texts.get(text, -1)
        if known != -1:
            return known
        if value is None:
            self.texts[text] = None
            return None
        number = self.ids.get(value)
        if number is None:
            number = self.ids[value] = len(self.values)
            self.values.append(value)
        self.texts[text] = number
        return number


class _Texts:
    """The distinct texts of a column (or two) seen so far, as a polars Enum: each chunk's
    cells are cast to it (one hash a cell, no separate pass for the distinct texts) and only
    the texts it does not know yet go to Python. ``values``: what each text maps to."""

    LIMIT = 1 << 16  # past this many, start again from the chunk's own texts

    def __init__(self, pl: Any, value_of: Callable[[str], Any]) -> None:
        self.pl, self.value_of = pl, value_of
        self.texts: list[str] = []
        self.values: list[Any] = []
        self.enum: Any = None
        self.table: Any = None  # values as a Series, for the lookups; None when stale

    def codes(self, column: str) -> Any:
        """Each cell's position in ``texts``; null for an empty cell or a text not known."""
        pl = self.pl
        if self.enum is None:
            return pl.lit(None, dtype=pl.UInt32)
        return pl.col(column).cast(self.enum, strict=False).to_physical().cast(pl.UInt32)

    def learn(self, texts: list[str], everything: Callable[[], list[str]]) -> None:
        """Add texts not known yet (``everything``: all of the chunk's, for a fresh start)."""
        if len(self.texts) + len(texts) > self.LIMIT:
            self.texts, self.values, texts = [], [], everything()
        self.texts += texts
        self.values += [self.value_of(text) for text in texts]
        self.enum, self.table = self.pl.Enum(self.texts), None

    def lookup(self, column: str, dtype: Any, values: list[Any] | None = None) -> Any:
        """Each cell's value (null for an empty cell, or a text that maps to None)."""
        pl = self.pl
        if values is not None:
            table = pl.Series(values, dtype=dtype)
        else:
            if self.table is None:
                self.table = pl.Series(self.values, dtype=dtype)
            table = self.table
        return pl.lit(table).gather(pl.col(f"{column}#"))


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
        self.keys, self.models, self.prices = _Ids(), _Ids(), _Ids()
        self.texts = {
            "key_id": _Texts(pl, lambda text: self.keys.of(text, text.strip() or None)),
            "model": _Texts(pl, lambda text: self.models.of(text, text.strip() or None)),
            "input_price": _Texts(pl, self.price),
        }
        self.texts["output_price"] = self.texts["input_price"]  # one list of prices
        self.decimals_seen = 0  # the most of any valid price so far
        self.decimals = 0  # the costs' scale so far (10**-(6 + decimals) USD)
        self.top = 0  # the largest price multiplier so far
        self.tokens = 0.0  # an upper bound on the sum of all token counts
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
        return span[0] // _QUARTER

    def add(self, frame: Any) -> None:
        """Add a chunk (`_derived` of what `read_chunks` gave)."""
        pl = self.pl
        frame = frame.with_columns(
            **{f"{column}#": texts.codes(column) for column, texts in self.texts.items()}
        )
        distinct = self._distinct(frame)
        if distinct["unread"]:  # dates with a T, counts with spaces: read again, more slowly
            with_t = _seconds(pl, pl.col("date"), "T")
            frame = frame.with_columns(
                minute=pl.coalesce("minute", pl.when("plain").then(with_t)),
                input_tokens=pl.coalesce("input_tokens", _tokens(pl, "input")),
                output_tokens=pl.coalesce("output_tokens", _tokens(pl, "output")),
            )
            distinct = self._distinct(frame)
        if relearnt := self._learn(frame, distinct):
            frame = frame.with_columns(
                **{f"{column}#": self.texts[column].codes(column) for column in relearnt}
            )
        self.tokens += distinct["tokens"] or 0
        token_type = pl.Int64 if self.tokens < _INT64_SAFE else pl.Int128

        quarters = {}
        for quarter in distinct["quarters"]:
            if quarter not in self.buckets:
                try:
                    instant = datetime.fromtimestamp(quarter * _QUARTER, UTC)
                except (OverflowError, ValueError):  # year 0 (polars reads it; Python not)
                    self.buckets[quarter] = None
                else:
                    self.buckets[quarter] = self.bucket_of(instant)
            quarters[quarter] = self.buckets[quarter]
        bucket = _lookup(pl, pl.col("minute") // _QUARTER, quarters, pl.Int32)
        stamp = pl.lit(None, dtype=pl.Float64)
        others = {}
        for date in distinct["others"]:
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
            bucket = pl.coalesce(bucket, _by_text(pl, "date", on_quarter, pl.Int32))
            stamp = _by_text(pl, "date", {d: o[1] for d, o in others.items()}, pl.Float64)
        buckets = [b for b in quarters.values() if b is not None]
        buckets += [other[0] for other in others.values()]
        prices = self.texts["input_price"]
        if self.exact:
            pairs = zip(prices.texts, prices.values, strict=True)
            price_type, factors = pl.UInt32, [self.prices.of(t, v) for t, v in pairs]
        else:
            price_type = self._units_type(prices.values)
            factors = [None if v is None else _scaled(v, self.decimals) for v in prices.values]
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
            partial = self._narrowed(self._grouped(good, sums, buckets))
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
            span = (distinct["first"], distinct["last"], min(stamps, default=None))
            span += (max(stamps, default=None),)
        for stamp_s in span:
            if stamp_s is not None:
                when = datetime.fromtimestamp(stamp_s, UTC)
                self.first = when if self.first is None else min(self.first, when)
                self.last = when if self.last is None else max(self.last, when)
        self._name(good, good.select("key", "key_name").filter(pl.col("key").is_last_distinct()))
        if flagged.height:
            self._flag(flagged)

    def _learn(self, frame: Any, distinct: dict[str, Any]) -> list[str]:
        """Learn the chunk's new keys, models and prices; return the columns to cast again."""
        pl = self.pl
        relearnt = []
        for texts in {id(t): t for t in self.texts.values()}.values():
            columns = [column for column, known in self.texts.items() if known is texts]
            new = list(dict.fromkeys(text for column in columns for text in distinct[column]))
            if new:

                def everything(columns: list[str] = columns) -> list[str]:
                    lists = [pl.col(column).drop_nulls().unique().implode() for column in columns]
                    return list(frame.select(pl.concat_list(lists).list.unique()).item())

                texts.learn(new, everything)
                relearnt += columns
        return relearnt

    def price(self, text: str) -> Decimal | None:
        """A price text's value (None: not a price), noting its decimals."""
        value = parse_price(text)
        if value is not None:  # 2.50 and 2.5000 are one price, with four decimals
            self.decimals_seen = max(self.decimals_seen, _decimals(value))
        return value

    def _distinct(self, frame: Any) -> dict[str, Any]:
        """What Python maps (each distinct quarter hour and other date; the keys, models and
        prices not known yet), a bound on the token counts' sum, and whether a cell was left
        unread by the fast path."""
        pl = self.pl
        return dict(
            frame.select(
                quarters=(pl.col("minute") // _QUARTER).drop_nulls().unique().implode(),
                others=pl.col("date").filter(~pl.col("plain")).drop_nulls().unique().implode(),
                **{  # the texts not known yet
                    column: pl.col(column)
                    .filter(pl.col(f"{column}#").is_null() & pl.col(column).is_not_null())
                    .unique()
                    .implode()
                    for column in self.texts
                },
                first=pl.col("minute").min(),
                last=pl.col("minute").max(),
                tokens=pl.col("input_tokens").cast(pl.Float64).abs().sum()
                + pl.col("output_tokens").cast(pl.Float64).abs().sum(),
                unread=pl.any_horizontal(
                    (pl.col("plain") & pl.col("minute").is_null()).any(),
                    (pl.col("input_tokens").is_null() & pl.col("input").is_not_null()).any(),
                    (pl.col("output_tokens").is_null() & pl.col("output").is_not_null()).any(),
                ),
            ).row(0, named=True)
        )

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

    def _units_type(self, values: list[Decimal | None]) -> Any:
        """The integer type a chunk's costs are summed in, after scaling the earlier chunks' up
        if one of its prices has more decimals than any so far."""
        pl = self.pl
        factor: int = 10 ** (self.decimals_seen - self.decimals)
        self.decimals, self.top = self.decimals_seen, self.top * factor
        prices = [value for value in values if value is not None]
        self.top = max([self.top] + [_scaled(price, self.decimals) for price in prices])
        units_type = self._bounded()
        if factor > 1 and self.partials:
            if factor >= _INT128_SAFE:
                raise _TooWide
            # (the factor itself must fit too, even where the costs so far are all 0)
            wide = units_type if factor < _INT64_SAFE else pl.Int128
            scaled = pl.col("units").cast(wide) * pl.lit(factor, dtype=wide)
            self.partials = [partial.with_columns(scaled) for partial in self.partials]
        return units_type

    def _bounded(self) -> Any:
        bound = max(self.tokens, 1) * self.top  # the sums, and the multipliers themselves
        if bound >= _INT128_SAFE:
            raise _TooWide
        return self.pl.Int64 if bound < _INT64_SAFE else self.pl.Int128

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
        decimals = self.decimals_seen
        result = ImportResult(scale=6 + decimals, rows=self.rows, skipped=self.skipped)
        result.errors = self.errors
        if not self.rows:
            return result
        if self.exact:
            multipliers = [_scaled(price, decimals) for price in self.prices.values]
            groups = _priced_in_python(pl, self.partials, multipliers)
        else:
            groups = self._merged()
        result.groups = groups.rename({"model_id": "model"})
        result.keys, result.models = self.keys.values, self.models.values
        result.names = {self.keys.values[key]: name for key, name in self.names.items()}
        result.first, result.last = self.first, self.last
        return result

    def _narrowed(self, partial: Any) -> Any:
        """The partial groups with their sums in 32 bits where they fit (most do): the groups
        so far are what the import holds in memory."""
        pl = self.pl
        sums = ("input", "output", "units")
        fits = partial.select(pl.col(sums).max() < 2**31).row(0, named=True)
        return partial.cast({name: pl.Int32 for name, fit in fits.items() if fit})

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
            tokens = pl.Int64 if self.tokens < _INT64_SAFE else pl.Int128
            wide = {"input": tokens, "output": tokens, "units": self._bounded()}
            merged = pl.concat([part.cast(wide) for part in together])
            del together
            sums = pl.col("calls", "input", "output", "units").sum()
            apart.append(self._narrowed(merged.group_by("bucket", "key", "model_id").agg(sums)))
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


def _priced_in_python(pl: Any, partials: list[Any], multipliers: list[int]) -> Any:
    """The groups priced and merged with Python's integers, the cost as decimal digits."""
    merged: dict[tuple[int, int, int], list[int]] = {}
    for partial in partials:
        for bucket, key, model, input_id, output_id, calls, inp, out in partial.select(
            "bucket", "key", "model_id", "input_id", "output_id", "calls", "input", "output"
        ).iter_rows():
            group = merged.setdefault((bucket, key, model), [0, 0, 0, 0])
            group[0] += calls
            group[1] += inp
            group[2] += out
            group[3] += inp * multipliers[input_id] + out * multipliers[output_id]
    return pl.DataFrame(
        [(*k, calls, inp, out, str(units)) for k, (calls, inp, out, units) in merged.items()],
        schema={
            "bucket": pl.Int32,
            "key": pl.UInt32,
            "model_id": pl.UInt32,
            "calls": pl.Int64,
            "input": pl.Int128,
            "output": pl.Int128,
            "units": pl.String,
        },
        orient="row",
    )


def _decimals(price: Decimal) -> int:
    return max(0, -int(price.as_tuple().exponent))


def _scaled(price: Decimal, decimals: int) -> int:
    """``price * 10**decimals``, exactly (``decimals`` is at least the price's own)."""
    _sign, digits, exponent = price.as_tuple()
    assert isinstance(exponent, int)
    power: int = 10 ** (exponent + decimals)
    return int("".join(map(str, digits))) * power


def _tokens(pl: Any, column: str) -> Any:
    """A token count: an empty cell counts as 0, anything not an integer as missing (bad).
    (Only for chunks with a count the plain cast did not read: spaces, an empty quoted cell.)"""
    text = pl.col(column).str.strip_chars()
    return (
        pl.when(text == "")
        .then(pl.lit(0, dtype=pl.Int64))
        .otherwise(text.cast(pl.Int64, strict=False))
    )


def _seconds(pl: Any, date: Any, separator: str) -> Any:
    """A plain date's unix seconds, cut at the minute."""
    return (
        date.str.slice(0, 16)
        .str.strptime(pl.Datetime("us"), f"%Y-%m-%d{separator}%H:%M", strict=False)
        .dt.epoch("s")
    )


def _by_text(pl: Any, column: str, mapping: dict[str, Any], dtype: Any) -> Any:
    """The value of each cell's text in ``mapping`` (null when it has none): the text cast to
    an enum of the mapping's texts, its index picking the value."""
    texts = list(mapping)
    values = pl.Series([mapping[t] for t in texts], dtype=dtype)
    return pl.lit(values).gather(pl.col(column).cast(pl.Enum(texts), strict=False).to_physical())


def _lookup(pl: Any, number: Any, mapping: dict[int, int | None], dtype: Any) -> Any:
    """The value of each integer in ``mapping`` (null when it has none): a table indexed by
    the integer when the integers are close together, else polars' replace."""
    if not mapping:
        return pl.lit(None, dtype=dtype)
    low, high = min(mapping), max(mapping)
    if high - low > 4 * len(mapping) + 4096:
        return number.replace_strict(mapping, default=None, return_dtype=dtype)
    values = pl.Series([mapping.get(n) for n in range(low, high + 1)], dtype=dtype)
    return pl.lit(values).gather(number - low)
