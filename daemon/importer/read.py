"""Reading the per-call CSV (the web UI's Settings > API > Export) into polars frames of its
cells, a few megabytes of the file at a time (`read_ahead`: on another thread, while the chunk
before is grouped), and saying what is wrong where a row or the file can't be read.

polars is loaded here, by `load_polars`, only when a file is read: the daemon and the other
commands never pay for it.
"""

from __future__ import annotations

import csv
import io
import os
import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

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
_ALLOCATOR = "_RJEM_MALLOC_CONF"  # polars' jemalloc reads its options from this
# about 25,000 calls a chunk: a few ms of polars work each, so the per-chunk overhead stays
# small, while a piece, its frame and the groups so far stay well under half of pandas' peak
# for the same file (bench/import_bench.py: 4 MB chunks peaked about 15 MB higher, 1 MB ones
# no lower and slower)
CHUNK_BYTES = 2 << 20
_REQUIRED = ("date", "key_id", "model", "input", "output", "input_price", "output_price")
# "2026-11-20 10:15:00", "2026-11-20T10:15:00.123Z": UTC wall time, cut at the minute by
# polars; anything else (offsets, odd spacing) is parsed in Python, once per distinct text
PLAIN_UTC = r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?Z?$"


class ImportFileError(ValueError):
    """The file can't be imported (missing columns, or a bad row under --strict)."""


def load_polars() -> Any:
    """polars, loaded here only: the daemon and the other commands never pay for it.

    Loaded first here, its allocator (jemalloc) gets one arena for all of polars' threads
    instead of one per thread (unless ``_RJEM_MALLOC_CONF`` is set already): memory a thread
    frees is then reused by the others rather than kept apart, about 20 MB less at the peak of
    a million-row import and no slower (bench/import_bench.py)."""
    first = "polars" not in sys.modules
    if first and _ALLOCATOR not in os.environ:
        os.environ[_ALLOCATOR] = "narenas:1"
    else:
        first = False
    try:
        import polars
    except ImportError:
        raise ImportFileError(
            "polars, the CSV engine of `import` and a dependency of langdock-budget, is not"
            " installed: reinstall langdock-budget, or pip install 'polars>=2.0'"
        ) from None
    finally:
        if first:  # read once, as the library loads; not passed on to other programs
            del os.environ[_ALLOCATOR]
    return polars


def read_header(source: Source) -> list[str]:
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


def normalize_header(name: str) -> str:
    """As `daemon.langdock.csv.normalize_header` (tested): not imported from there, as that
    package loads the HTTP client, which reading a file does not need."""
    return name.strip().lstrip("\ufeff").strip().lower().replace(" ", "_").replace("-", "_")


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


def parse_date(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_price(text: str) -> Decimal | None:
    """A price per million tokens (an empty cell is 0), or None when it is not a finite,
    non-negative number."""
    try:
        price = Decimal(text.strip() or "0")
    except InvalidOperation:
        return None
    return price if price.is_finite() and price >= 0 else None


def row_problem(row: dict[str, Any], labels: dict[str, str]) -> str:
    """Why a row flagged bad is bad, naming the column as the file's header spells it (only
    for the few rows shown to the user)."""

    def cell(name: str) -> tuple[str, str]:
        return f"column {labels[name]!r}", (row[name] or "").strip()

    column, date = cell("date")
    if not date:
        return f"{column} is empty"
    try:
        parse_date(date)
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
        if parse_price(text) is None:
            return f"{column}: {text[:40]!r} is not a price (a number >= 0, USD per 1M tokens)"
    return "unreadable row"


def locate_unreadable(source: Source, header: list[str]) -> str | None:
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


@dataclass(frozen=True)
class Layout:
    """Which of the file's columns the import reads: their indices (in file order), the names
    used here for them, and each one's label as the file's header spells it."""

    header: list[str]
    indices: list[int]
    names: list[str]
    labels: dict[str, str]


def read_layout(source: Source) -> Layout:
    header = read_header(source)
    wanted = _header_map(header)
    labels = {name: header[index].strip().lstrip("\ufeff") for name, index in wanted.items()}
    names = sorted(wanted, key=wanted.__getitem__)
    return Layout(header, [wanted[name] for name in names], names, labels)


def read_chunks(source: Source, layout: Layout, chunk_bytes: int = 0) -> Generator[Any, None, None]:
    """The file's calls, some thousands of records at a time (about ``chunk_bytes`` of the
    file, `CHUNK_BYTES` by default): polars frames of the selected cells as text, with each
    record's ``line`` number (``key_name`` null when the file has no such column).

    Each piece of the file is parsed as the whole file would be: after the header line, and
    from the second piece on after the first record too (polars takes the width of a record
    from the first one; that record is dropped again), so ragged rows, blank lines and line
    numbers come out as they would in one read, while only a piece is in memory at a time."""
    pl = load_polars()
    line = 2  # of the next record; the header is line 1
    with _open(source) as handle:
        head = handle.readline()
        prefix = head
        for number, parts in enumerate(_pieces(handle, chunk_bytes or CHUNK_BYTES)):
            data = b"".join([prefix, *parts])
            del parts
            try:
                raw = pl.read_csv(
                    data,
                    has_header=False,
                    skip_rows=1,
                    columns=layout.indices,
                    infer_schema=False,
                    truncate_ragged_lines=True,
                    encoding="utf8",
                )
            except Exception as exc:  # polars' own error types: not UTF-8, broken quoting, ...
                raise _unreadable(source, layout.header, exc) from None
            if number:
                raw = raw.slice(1)  # the first record, there for its width only
            else:
                prefix = head + data[len(head) : len(head) + _record_end(data, len(head))]
            del data
            raw.columns = layout.names  # selected, in file order
            if "key_name" not in layout.names:
                raw = raw.with_columns(key_name=pl.lit(None, dtype=pl.String))
            raw = raw.with_row_index("line", offset=line)
            line += raw.height
            yield raw


def read_ahead(chunks: Generator[Any, None, None], prepare: Callable[[Any], Any]) -> Iterator[Any]:
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


def _open(source: Source) -> BinaryIO:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _pieces(handle: BinaryIO, size: int) -> Iterator[list[bytes | memoryview]]:
    """The rest of the file in pieces of about ``size`` bytes (as lists of parts to join),
    each ending where a record does: at a newline outside quotes (after an even number of
    double quotes, as quoted cells hold theirs doubled). A piece with none grows until one
    comes; a file polars would not read fails on the piece that holds the bad record. At least
    one piece, maybe empty: the header alone is parsed (and refused) as a whole file would be."""
    pending, pending_quotes, given = b"", 0, False
    while block := handle.read(size):
        quoted = b'"' in block  # (most exports quote nothing: then nothing to count)
        total = pending_quotes + (block.count(b'"') if quoted else 0)
        newline, before = _last_record_end(block, total, quoted)
        if newline < 0:
            pending, pending_quotes = pending + block, total
            continue
        piece: list[list[bytes | memoryview]] = [[pending, memoryview(block)[: newline + 1]]]
        pending, pending_quotes, given = block[newline + 1 :], total - before, True
        del block  # the caller's join is its last use: freed then, not after parsing
        yield piece.pop()
    if pending or not given:
        yield [pending]


def _last_record_end(block: bytes, quotes: int, quoted: bool) -> tuple[int, int]:
    """The last newline in ``block`` outside quotes, given the number of double quotes up to
    its end (``quoted``: whether the block has any), and the number before that newline;
    (-1, quotes) when there is none."""
    if not quoted:
        return (-1 if quotes % 2 else block.rfind(b"\n")), quotes
    end = len(block)
    while (newline := block.rfind(b"\n", 0, end)) >= 0:
        quotes -= block.count(b'"', newline + 1, end)
        if not quotes % 2:
            return newline, quotes
        end = newline
    return -1, quotes


def _record_end(data: bytes, start: int) -> int:
    """How many bytes of ``data`` from ``start`` the record that starts there takes."""
    quotes, at = 0, start
    while (newline := data.find(b"\n", at)) >= 0:
        quotes += data.count(b'"', at, newline)
        if not quotes % 2:
            return newline + 1 - start
        at = newline + 1
    return len(data) - start


def _unreadable(source: Source, header: list[str], exc: Exception) -> ImportFileError:
    where = locate_unreadable(source, header)
    if where is not None:
        return ImportFileError(f"per-call CSV: unreadable: {where}")
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return ImportFileError(f"per-call CSV: unreadable ({first_line})")
