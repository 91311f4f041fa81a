"""Parsing Langdock's export CSVs into typed, checked rows, summed per key and model
(docs/DESIGN.md "Money"): the public entry of the parser.

Input is any iterable of text lines *with* their line endings (an open file works), so
quoted fields may span lines; rows are yielded as they are read (`parse_key_usage`,
`parse_model_usage`), and `sum_key_usage` / `sum_model_usage` fold them per (key, model) /
(model, provider, BYOK), so memory follows the number of distinct keys and models, not the
size of the file.

The rows, their columns and the per-row parsers are `daemon.langdock.csv_rows`;
`sum_key_usage(parse_key_usage(...))`, what the client does with every api-keys download,
reads the file column-wise instead (`daemon.langdock.csv_columns`), with the same result.
The names of both that callers use are re-exported here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from decimal import Context, Decimal
from operator import itemgetter
from typing import Any

from daemon.langdock.checks import (
    REASONS,
    Cells,
    ExportFormatError,
    MalformedFileError,
    Rejected,
    Rejection,
    Tally,
)
from daemon.langdock.csv_columns import _Chunks, _gc_paused, _KeyColumns
from daemon.langdock.csv_rows import (
    KEY_ALIASES,
    MODEL_ALIASES,
    TOKEN_FIELDS,
    KeyUsage,
    ModelUsage,
    _blank,
    _careful_model_usage,
    _key_rows,
    _open,
    _read_key_rows,
    _unreadable,
    normalize_header,
)

__all__ = [
    "KEY_ALIASES",
    "MODEL_ALIASES",
    "REASONS",
    "TOKEN_FIELDS",
    "ExportFormatError",
    "KeyUsage",
    "MalformedFileError",
    "ModelUsage",
    "Rejection",
    "Tally",
    "normalize_header",
    "parse_key_usage",
    "parse_model_usage",
    "sum_key_usage",
    "sum_model_usage",
]

# wide enough that every sum of bounded costs is exact (< 1e23 with 60 places: 83 digits)
_EXACT = Context(prec=200)


def parse_key_usage(
    lines: Iterable[str], *, grouped: bool, tally: Tally | None = None
) -> Iterator[KeyUsage]:
    """Rows of an ``/export/api-keys`` CSV; ``grouped`` requires the model column. Rejected
    rows are left out and recorded on ``tally``.

    Well-formed records take a fast path (plain `int` / `Decimal` on the cells, column
    positions resolved once, bounds checked); anything unusual (blank cells with spaces,
    "12.0", "$1.50", exponents, a value out of bounds, a damaged record) falls back to the
    careful per-cell parser, which also produces the line-numbered errors and rejections.

    The rows are read as they are iterated; `sum_key_usage` given this iterator untouched
    reads the file column-wise instead (`KeyRows.summed`), with the same result.
    """
    return KeyRows(lines, grouped, tally if tally is not None else Tally())


class KeyRows(Iterator[KeyUsage]):
    """The rows of one api-keys file (`parse_key_usage`), read one by one as iterated, or
    all at once, column-wise and folded, by `summed` (what `sum_key_usage` calls)."""

    def __init__(self, lines: Iterable[str], grouped: bool, tally: Tally) -> None:
        self._lines, self._grouped, self._tally = lines, grouped, tally
        self._rows: Iterator[KeyUsage] | None = None

    def __iter__(self) -> KeyRows:
        return self

    def __next__(self) -> KeyUsage:
        if self._rows is None:
            self._rows = _read_key_rows(self._lines, self._grouped, self._tally)
        return next(self._rows)

    def summed(self) -> list[KeyUsage]:
        """`sum_key_usage` of the rows: the whole file column-wise (`_KeyColumns`), a chunk
        of records at a time; a chunk with anything unusual in it goes through the row
        path (`_key_rows`) instead. Rows already iterated are not read again."""
        if self._rows is not None:
            return _fold(self._rows)
        self._rows = iter(())
        return _sum_key_file(self._lines, self._grouped, self._tally)


# records read and converted at a time by the column-wise path: large enough that the
# per-chunk calls are nothing, small enough that a chunk's cells take about a megabyte
_CHUNK = 2048


def _sum_key_file(lines: Iterable[str], grouped: bool, tally: Tally) -> list[KeyUsage]:
    """`sum_key_usage(parse_key_usage(lines))`, a chunk of records at a time: a chunk whose
    every record the row path would take its fast path for is converted column by column
    (`_KeyColumns`: C loops, no Python code per cell); any other chunk goes through the row
    path (`_key_rows`) with its line numbers, so errors, rejections and rows are the same."""
    required = ("api_key_id", "model") if grouped else ("api_key_id",)
    source = iter(lines)
    reader, header, cols = _open(source, KEY_ALIASES, required, "api-keys")
    chunks = _Chunks(source, reader, len(header), _CHUNK)
    columns = _KeyColumns(header, cols, grouped)
    totals = _KeyTotals()
    while True:
        with _gc_paused():
            chunk = chunks.next()
            rows = columns.convert(chunk)
            if rows is not None:
                tally.records += len(rows)
                totals.add_columns(rows)
        if rows is None:
            numbered = zip(chunk.records(), chunk.ends, strict=True)
            totals.add(_key_rows(numbered, header, cols, grouped, tally, columns.seen))
        if chunks.broken is not None:  # after the records before it, as in the row path
            raise chunks.broken
        if chunks.done:
            return totals.rows()


def parse_model_usage(lines: Iterable[str], *, tally: Tally | None = None) -> Iterator[ModelUsage]:
    """Rows of an ``/export/models`` CSV, with error and latency columns where present;
    rejected rows are left out and recorded on ``tally``."""
    tally = tally if tally is not None else Tally()
    reader, header, cols = _open(lines, MODEL_ALIASES, ("model",), "models")
    try:
        for record in reader:
            if _blank(record):
                continue
            tally.records += 1
            try:
                yield _careful_model_usage(Cells(record, cols, header, reader.line_num, "models"))
            except Rejected as rejected:
                tally.reject(rejected.rejection)
    except csv.Error as exc:
        raise _unreadable("models", reader.line_num, exc) from None


def _add(a: Any, b: Any) -> Any:
    """a + b where a missing value (None) is no value, not zero; money sums are exact."""
    if a is None or b is None:
        return b if a is None else a
    return _EXACT.add(a, b) if isinstance(a, Decimal) else a + b


def sum_key_usage(rows: Iterable[KeyUsage]) -> list[KeyUsage]:
    """One row per (key, model), summed as the rows come, in first-seen order; every row of
    a key carries the name its last row had. The store keeps exactly what it keeps of the
    unsummed rows (it adds duplicates up), but memory holds only the distinct pairs.

    Given `parse_key_usage`'s iterator, the file is read column-wise (`KeyRows.summed`)."""
    if isinstance(rows, KeyRows):
        return rows.summed()
    return _fold(rows)


def _fold(rows: Iterable[KeyUsage]) -> list[KeyUsage]:
    totals = _KeyTotals()
    totals.add(rows)
    return totals.rows()


class _KeyTotals:
    """The fold of `sum_key_usage`: rows per (key, model) and the last name per key."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], KeyUsage] = {}
        self.names: dict[str, str] = {}

    def add(self, rows: Iterable[KeyUsage]) -> None:
        totals, names = self.totals, self.names
        for row in rows:
            names[row.api_key_id] = row.api_key_name
            pair = (row.api_key_id, row.model)
            before = totals.get(pair)
            totals[pair] = (
                row
                if before is None
                else KeyUsage(
                    *before[:3],
                    before.requests + row.requests,
                    _EXACT.add(before.cost_usd, row.cost_usd),
                    *map(_add, before[5:], row[5:]),
                )
            )

    def add_columns(self, rows: list[KeyUsage]) -> None:
        """`add`, for a chunk whose pairs are new (the common case) without Python code per
        row; else row by row."""
        keys = list(map(_FIRST, rows))
        chunk = dict(zip(zip(keys, map(_THIRD, rows), strict=True), rows, strict=True))
        if len(chunk) < len(rows) or not self.totals.keys().isdisjoint(chunk):
            self.add(rows)
            return
        self.totals.update(chunk)
        self.names.update(zip(keys, map(_SECOND, rows), strict=True))

    def rows(self) -> list[KeyUsage]:
        rows = list(self.totals.values())
        names = self.names
        if list(map(_SECOND, rows)) == list(map(names.__getitem__, map(_FIRST, rows))):
            return rows  # every key kept one name
        return [
            row
            if row.api_key_name == (name := names[row.api_key_id])
            else row._replace(api_key_name=name)
            for row in rows
        ]


_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


def _model_values(row: ModelUsage) -> list[Any]:
    weighted = None if row.response_time_ms is None else row.response_time_ms * row.requests
    tokens = [getattr(row, name) for name in TOKEN_FIELDS]
    return [row.requests, row.cost_usd, *tokens, row.errors, weighted]


def sum_model_usage(rows: Iterable[ModelUsage]) -> list[ModelUsage]:
    """One row per (model, provider, BYOK), in first-seen order, summed as the store sums
    them (the mean response time weighted by requests); a single row is kept as it is."""
    firsts: dict[tuple[str, str, bool], ModelUsage] = {}
    sums: dict[tuple[str, str, bool], list[Any]] = {}
    for row in rows:
        group = (row.model, row.provider, row.byok)
        if group not in firsts:
            firsts[group] = row
            continue
        before = sums.get(group) or _model_values(firsts[group])
        sums[group] = list(map(_add, before, _model_values(row)))
    result = []
    for group, first in firsts.items():
        if group not in sums:
            result.append(first)
            continue
        requests, cost, *tokens, errors, weighted = sums[group]
        mean = weighted / requests if weighted is not None and requests else None
        model, provider, byok = group
        result.append(
            ModelUsage(
                model,
                provider,
                byok,
                requests,
                cost,
                **dict(zip(TOKEN_FIELDS, tokens, strict=True)),
                errors=errors,
                response_time_ms=mean,
            )
        )
    return result
