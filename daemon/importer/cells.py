"""What a chunk's cells mean, in polars: the columns the reading thread derives (a plain UTC
date's minute, the token counts), and the tables that map a column's texts (keys, models,
prices) and numbers (quarter hours) onto the ids and values Python decides once per distinct
one; `distinct` says which a chunk has that Python has not mapped yet. `group` uses them to
check and group the calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.importer.read import PLAIN_UTC

QUARTER = 900  # seconds: every bucket starts and ends on a UTC quarter hour (rules.windows)


def derived(pl: Any, raw: Any) -> Any:
    """What each chunk needs that no earlier chunk decides (on the reading thread): whether a
    date is plain UTC and its minute, the token counts the fast path reads."""
    # a plain UTC date's unix seconds, cut at the minute ("2026-11-20 10:15", or with a T)
    return raw.with_columns(
        plain=pl.col("date").str.contains(PLAIN_UTC),
        input_tokens=pl.col("input").cast(pl.Int64, strict=False),
        output_tokens=pl.col("output").cast(pl.Int64, strict=False),
    ).with_columns(minute=pl.when("plain").then(seconds(pl, pl.col("date"), " ")))


@dataclass
class Ids:
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


class Texts:
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


def tokens(pl: Any, column: str) -> Any:
    """A token count: an empty cell counts as 0, anything not an integer as missing (bad).
    (Only for chunks with a count the plain cast did not read: spaces, an empty quoted cell.)"""
    text = pl.col(column).str.strip_chars()
    return (
        pl.when(text == "")
        .then(pl.lit(0, dtype=pl.Int64))
        .otherwise(text.cast(pl.Int64, strict=False))
    )


def seconds(pl: Any, date: Any, separator: str) -> Any:
    """A plain date's unix seconds, cut at the minute."""
    return (
        date.str.slice(0, 16)
        .str.strptime(pl.Datetime("us"), f"%Y-%m-%d{separator}%H:%M", strict=False)
        .dt.epoch("s")
    )


def by_text(pl: Any, column: str, mapping: dict[str, Any], dtype: Any) -> Any:
    """The value of each cell's text in ``mapping`` (null when it has none): the text cast to
    an enum of the mapping's texts, its index picking the value."""
    texts = list(mapping)
    values = pl.Series([mapping[t] for t in texts], dtype=dtype)
    return pl.lit(values).gather(pl.col(column).cast(pl.Enum(texts), strict=False).to_physical())


def lookup(pl: Any, number: Any, mapping: dict[int, int | None], dtype: Any) -> Any:
    """The value of each integer in ``mapping`` (null when it has none): a table indexed by
    the integer when the integers are close together, else polars' replace."""
    if not mapping:
        return pl.lit(None, dtype=dtype)
    low, high = min(mapping), max(mapping)
    if high - low > 4 * len(mapping) + 4096:
        return number.replace_strict(mapping, default=None, return_dtype=dtype)
    values = pl.Series([mapping.get(n) for n in range(low, high + 1)], dtype=dtype)
    return pl.lit(values).gather(number - low)


def distinct(pl: Any, frame: Any, columns: list[str]) -> dict[str, Any]:
    """What Python maps (each distinct quarter hour and other date; the texts of ``columns``
    not known yet), a bound on the token counts' sum, and whether a cell was left unread by
    the fast path."""
    return dict(
        frame.select(
            quarters=(pl.col("minute") // QUARTER).drop_nulls().unique().implode(),
            others=pl.col("date").filter(~pl.col("plain")).drop_nulls().unique().implode(),
            **{  # the texts not known yet
                column: pl.col(column)
                .filter(pl.col(f"{column}#").is_null() & pl.col(column).is_not_null())
                .unique()
                .implode()
                for column in columns
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


def learn(pl: Any, frame: Any, found: dict[str, Any], known: dict[str, Texts]) -> list[str]:
    """Learn the chunk's new texts (``found``: its `distinct`) into ``known`` (by column;
    columns may share one `Texts`); return the columns to cast again."""
    relearnt = []
    for texts in {id(t): t for t in known.values()}.values():
        columns = [column for column, of in known.items() if of is texts]
        new = list(dict.fromkeys(text for column in columns for text in found[column]))
        if new:

            def everything(columns: list[str] = columns) -> list[str]:
                lists = [pl.col(column).drop_nulls().unique().implode() for column in columns]
                return list(frame.select(pl.concat_list(lists).list.unique()).item())

            texts.learn(new, everything)
            relearnt += columns
    return relearnt
