"""The column-wise read of an api-keys file: what `sum_key_usage(parse_key_usage(...))`,
the client's fold of every api-keys download, reads the file with (`daemon.langdock.csv`).

A chunk of records at a time (`_Chunks`: plain lines split by `str.split`, the csv module
from the first line that is not plain), each column converted by C loops (`_KeyColumns`:
`int`, `Decimal`, `str.strip` mapped over it, bounds checked with `min` / `max`), the rows
made without Python code per row; a chunk with anything the per-row fast path
(`daemon.langdock.csv_rows`) would not take goes through the row path. The cyclic garbage
collector is paused while a chunk is converted (`_gc_paused`). The result is the same,
rejections, errors and line numbers included (tests/langdock/test_csv_columns.py); a
100,000-row export takes about half the time (0.25 s instead of 0.5 s on the 2-core VM of
docs/PERFORMANCE.md).
"""

from __future__ import annotations

import csv
import gc
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import chain, islice, repeat
from typing import Any

from daemon.langdock.checks import COST_PLACES, MAX_COST_USD, MAX_COUNT
from daemon.langdock.csv_rows import _ZERO, TOKEN_FIELDS, KeyUsage, _unreadable


@dataclass(slots=True)
class _Chunk:
    """Consecutive records: as one list of cells, when every record has ``width`` cells and
    none is blank, else as records; with the line each record ends on."""

    width: int
    cells: list[str] | None
    listed: list[list[str]] | None
    ends: Sequence[int]

    def records(self) -> list[list[str]]:
        if self.listed is not None:
            return self.listed
        cells, width = self.cells or [], self.width
        return [cells[i : i + width] for i in range(0, len(cells), width)]


class _Chunks:
    """The records after the header, a chunk at a time. While the lines are plain (no
    quote, no line break but the one that ends each line, no NUL, none longer than a field
    may be), each line is one record and its cells are what `str.split` gives, which is what
    the csv module gives for such a line; from the first chunk with a line that is not, the
    csv module reads the rest of the file. ``broken``: what reading failed on (the csv
    module's error as a `MalformedFileError`, or what the lines raised, such as a
    `UnicodeDecodeError`), to be raised after the records read before it, as the row path
    does. ``size``: the records in a chunk (`daemon.langdock.csv._CHUNK`)."""

    def __init__(self, source: Iterator[str], reader: Any, width: int, size: int) -> None:
        self.source, self.reader, self.width, self.size = source, reader, width, size
        self.read = reader.line_num  # lines read so far
        self.before = 0  # lines read before the csv module took over
        self.plain = True
        self.done = False
        self.broken: Exception | None = None
        self.limit = csv.field_size_limit()

    def next(self) -> _Chunk:
        if self.plain:
            lines: list[str] = []
            failed: Exception | None = None
            try:
                lines.extend(islice(self.source, self.size))  # keeps the lines before a failure
            except Exception as exc:
                failed = exc
            chunk = self._split(lines)
            if chunk is not None:
                self.broken = failed
                self.done = failed is not None or len(lines) < self.size
                return chunk
            self.plain = False
            self.before = self.read
            rest = self.source if failed is None else _failing(failed)
            self.reader = csv.reader(chain(lines, rest))
        reader, before = self.reader, self.before
        records: list[list[str]] = []
        ends: list[int] = []
        try:
            for record in islice(reader, self.size):
                records.append(record)
                ends.append(before + reader.line_num)
        except csv.Error as exc:
            self.broken = _unreadable("api-keys", before + reader.line_num, exc)
        except Exception as exc:
            self.broken = exc
        self.done = self.broken is not None or len(records) < self.size
        return _Chunk(self.width, None, records, ends)

    def _split(self, lines: list[str]) -> _Chunk | None:
        """The chunk's records if its lines are plain, else None."""
        try:
            stripped = list(map(str.rstrip, lines, repeat("\r\n")))
        except TypeError:  # not text: the csv module says what is wrong
            return None
        text = ",".join(stripped)
        if (
            '"' in text
            or "\r" in text
            or "\n" in text
            or "\0" in text
            or (stripped and max(map(len, stripped)) > self.limit)
        ):
            return None
        ends = range(self.read + 1, self.read + len(lines) + 1)
        self.read += len(lines)
        commas = self.width - 1
        if not lines:
            return _Chunk(self.width, [], None, ends)
        if all(stripped) and all(map(commas.__eq__, map(str.count, stripped, repeat(",")))):
            return _Chunk(self.width, text.split(","), None, ends)
        return _Chunk(
            self.width, None, [line.split(",") if line else [] for line in stripped], ends
        )


def _failing(exc: Exception) -> Iterator[str]:
    """Lines that end in ``exc``: what the source raised, where it raised it."""
    raise exc
    yield ""  # a generator


class _KeyColumns:
    """Converts a chunk of api-keys records column by column, exactly as `_key_rows` would
    (its fast path) record by record; None when any record would not take that fast path."""

    def __init__(self, header: list[str], cols: dict[str, int], grouped: bool) -> None:
        self.width = len(header)
        self.key = cols["api_key_id"]
        self.name, self.requests = cols.get("api_key_name"), cols.get("requests")
        self.cost = cols.get("cost_usd")
        self.model = cols["model"] if grouped else None
        self.tokens = [cols.get(name) for name in TOKEN_FIELDS]
        self.seen: dict[str, str] = {}

    def convert(self, chunk: _Chunk) -> list[KeyUsage] | None:
        width = self.width
        cells = chunk.cells
        if cells is None:
            records = chunk.records()
            if not all(records):  # blank lines: the row path skips them too
                records = list(filter(None, records))
            if not all(map(width.__eq__, map(len, records))):
                return None
            cells = list(chain.from_iterable(records))
        count = len(cells) // width
        if not count:
            return []
        same = self.seen.setdefault
        keys = list(map(str.strip, cells[self.key :: width]))
        if not all(keys):
            return None
        keys = list(map(same, keys, keys))
        if self.name is None:
            names = keys
        else:
            names = list(map(str.strip, cells[self.name :: width]))
            names = list(map(same, names, names))
            if not all(names):
                names = [name or key for name, key in zip(names, keys, strict=True)]
        if self.model is None:
            models: Iterable[str] = repeat("", count)
        else:
            models = list(map(str.strip, cells[self.model :: width]))
            models = list(map(same, models, models))
        costs = self._costs(cells, count)
        requests = self._counts(cells, self.requests, 0, count)
        tokens = [self._counts(cells, index, None, count) for index in self.tokens]
        if costs is None or requests is None or None in tokens:
            return None
        columns = zip(keys, names, models, requests, costs, *tokens, strict=True)
        return list(map(tuple.__new__, repeat(KeyUsage), columns))  # KeyUsage(*cells), in C

    def _costs(self, cells: list[str], count: int) -> list[Decimal] | None:
        if self.cost is None:
            return [_ZERO] * count
        raw = cells[self.cost :: self.width]
        try:
            costs = (
                list(map(Decimal, raw)) if all(raw) else [Decimal(c) if c else _ZERO for c in raw]
            )
        except (ValueError, InvalidOperation):
            return None
        text = "".join(raw)
        if (
            max(map(len, raw)) > COST_PLACES
            or "e" in text
            or "E" in text
            or not all(map(Decimal.is_finite, costs))
            or min(costs) < _ZERO
            or max(costs) > MAX_COST_USD
        ):
            return None
        return costs

    def _counts(
        self, cells: list[str], index: int | None, empty: int | None, count: int
    ) -> list[int | None] | None:
        """A count column (``empty`` for an empty cell); None when a cell is no plain
        integer or out of bounds."""
        if index is None:
            return [empty] * count
        raw = cells[index :: self.width]
        if not any(raw):
            return [empty] * count
        try:
            if all(raw):
                values: list[int | None] = list(map(int, raw))
                present: list[int] = values  # type: ignore[assignment]
            else:
                values = [int(c) if c else empty for c in raw]
                present = [v for v in values if v is not None]
        except ValueError:
            return None
        if present and (min(present) < 0 or max(present) > MAX_COUNT):
            return None
        return values


class _GcPause:
    """The cyclic garbage collector off while a chunk of records is converted (at most a
    few milliseconds), then on again if it was on before any thread paused it.

    A chunk makes thousands of rows that all survive (they are folded, then stored), and
    every 700 surviving containers start a collection of the young ones, every tenth of
    those of the older ones too, and now and then of all of memory, the rows of the file
    before included: 0.07-0.1 s of the 0.3-0.35 s a 100,000-row file took while the
    first cycle held the rows of another. Nothing a chunk makes is cyclic: only the timing
    of the collections changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pauses = 0
        self._was_on = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._pauses:
                self._was_on = gc.isenabled()
                gc.disable()
            self._pauses += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._pauses -= 1
            if not self._pauses and self._was_on:
                gc.enable()


_GC_PAUSE = _GcPause()


def _gc_paused() -> AbstractContextManager[None]:
    return _GC_PAUSE
