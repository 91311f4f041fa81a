"""Reading the per-call CSV (the web UI's Settings > API > Export) into a polars frame of its
cells, and saying what is wrong where a row or the file can't be read.

polars is loaded here, by `load_polars`, only when a file is read: the daemon and the other
commands never pay for it.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from daemon.langdock.csv import normalize_header

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


class ImportFileError(ValueError):
    """The file can't be imported (missing columns, or a bad row under --strict)."""


def load_polars() -> Any:
    """polars, loaded here only: the daemon and the other commands never pay for it."""
    try:
        import polars
    except ImportError:
        raise ImportFileError(
            "polars, the CSV engine of `import` and a dependency of langdock-budget, is not"
            " installed: reinstall langdock-budget, or pip install 'polars>=1.20'"
        ) from None
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


def read_frame(source: Source) -> tuple[Any, dict[str, str]]:
    """The file's calls, one row per record: its ``line`` number, the cells as text, and the
    columns derived from them (``minute`` for a plain UTC date, ``key``, ``model``, ``name``,
    ``input_tokens``, ``output_tokens``, ``blank``); with each column's label as the file's
    header spells it."""
    pl = load_polars()
    header = read_header(source)
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
        where = locate_unreadable(source, header)
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
    return frame, labels


def _tokens(pl: Any, raw: Any) -> Any:
    """A token count: an empty cell counts as 0, anything not an integer as missing (bad)."""
    text = raw.str.strip_chars()
    return (
        pl.when(text == "")
        .then(pl.lit(0, dtype=pl.Int64))
        .otherwise(text.cast(pl.Int64, strict=False))
    )
