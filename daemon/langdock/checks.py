"""Checking the cells of Langdock's export CSVs: bounds, damaged records, poisoned values.

`Cells` gives typed access to one record and decides what is wrong with it, if anything:

- a **damaged record** raises `MalformedFileError`: more or fewer cells than the header (a row
  cut short, a stray quote), an empty key id or model name, text where a number belongs. Such
  a file is not data; the client fetches a fresh export.
- a **poisoned value** raises `Rejected`: a number no real export holds (negative, NaN or
  Infinity, a fraction of a count, past the bounds below). Its row is left out, the `Tally`
  counts and names it, and the rest of the file is used.

The bounds are documented in docs/DESIGN.md ("Parsing: damaged files and poisoned values").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation

# Bounds no real row reaches (a row is one key and model over at most a local day), chosen so
# that the store's sums of integer nano-dollars stay far from SQLite's 2^63 - 1 (9.2e18).
MAX_COST_USD = Decimal(10_000_000)  # per row: 1e16 nano-dollars
COST_PLACES = 60  # decimal places of a cost; finer amounts are rejected
MAX_COUNT = 10**12  # requests, tokens, errors per row
MAX_RESPONSE_MS = Decimal(100_000_000)  # an average response time (about 28 hours)
REASONS = ("negative", "out_of_range", "not_a_number", "not_an_integer")
_WHY = {
    "negative": "is negative",
    "out_of_range": "is out of range",
    "not_a_number": "is not a number",
    "not_an_integer": "is not a whole number",
}
_FINEST = Decimal(1).scaleb(-COST_PLACES)
_WIDE = Context(prec=300)  # quantizing any bounded cost to _FINEST is exact in it
_COUNT = (Decimal(MAX_COUNT), f"a whole number from 0 to {MAX_COUNT:,}")
# per canonical column: the largest value allowed, and the allowed range as logs print it
BOUNDS: dict[str, tuple[Decimal, str]] = {
    "cost_usd": (MAX_COST_USD, f"0 to {MAX_COST_USD:,} USD, at most {COST_PLACES} decimals"),
    "requests": _COUNT,
    "prompt_tokens": _COUNT,
    "completion_tokens": _COUNT,
    "cached_prompt_tokens": _COUNT,
    "cache_creation_tokens": _COUNT,
    "no_cache_tokens": _COUNT,
    "errors": (Decimal(MAX_COUNT), f"0 to {MAX_COUNT:,}"),
    "error_rate": (Decimal(100), "0 to 1, or a percentage up to 100"),
    "response_time_ms": (MAX_RESPONSE_MS, f"0 to {MAX_RESPONSE_MS:,} ms"),
}


class ExportFormatError(ValueError):
    """The CSV does not have the shape we need (empty, missing column, unreadable)."""


class MalformedFileError(ExportFormatError):
    """A record is damaged (wrong cell count, empty identity, text for a number): the file
    was cut or mangled on its way; a fresh export may be whole."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One row left out: where, which cell, what it held (at most 200 characters)."""

    line: int
    column: str
    value: str
    reason: str  # one of REASONS
    allowed: str

    def __str__(self) -> str:
        return (
            f"line {self.line}, column {self.column}: {self.value[:40]!r}"
            f" {_WHY[self.reason]} (allowed: {self.allowed})"
        )


@dataclass
class Tally:
    """What a parse saw besides the rows it yielded: records read (rejected ones included,
    blank lines not: what ``recordCount`` counts), rows rejected per reason, and the first
    ``keep`` rejections in full."""

    records: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    examples: list[Rejection] = field(default_factory=list)
    keep: int = 10

    def reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.reason] = self.rejected.get(rejection.reason, 0) + 1
        if len(self.examples) < self.keep:
            self.examples.append(rejection)


class Rejected(Exception):
    """A poisoned value: its row is left out (see `Tally.reject`)."""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection


class Cells:
    """Checked, typed access to one CSV record, with line numbers in every error."""

    __slots__ = ("cols", "header", "line", "record", "what")

    def __init__(
        self, record: list[str], cols: dict[str, int], header: list[str], line: int, what: str
    ) -> None:
        if len(record) != len(header):
            raise MalformedFileError(
                f"{what} export: line {line}: {len(record)} cells where the header has"
                f" {len(header)} (a row cut short or a stray quote)"
            )
        self.record, self.cols, self.header, self.line, self.what = record, cols, header, line, what

    def text(self, name: str, default: str = "") -> str:
        index = self.cols.get(name)
        return default if index is None else self.record[index].strip()

    def identity(self, name: str) -> str:
        value = self.text(name)
        if not value:
            raise MalformedFileError(f"{self.what} export: line {self.line}: empty {name}")
        return value

    def number(self, name: str) -> Decimal | None:
        """The cell as a number within `BOUNDS`; None when empty."""
        value = self.text(name).replace("$", "")
        if not value:
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise MalformedFileError(
                f"{self.what} export: line {self.line}: column {self._header(name)}:"
                f" {value[:40]!r} is not a number (shifted or damaged cells)"
            ) from None
        if not number.is_finite():
            raise self._reject(name, "not_a_number")
        if number < 0:
            raise self._reject(name, "negative")
        if number > BOUNDS[name][0]:
            raise self._reject(name, "out_of_range")
        return number

    def cost(self, name: str) -> Decimal | None:
        number = self.number(name)
        if (
            number is not None
            and int(number.as_tuple().exponent) < -COST_PLACES
            and number != number.quantize(_FINEST, context=_WIDE)  # not only trailing zeros
        ):
            raise self._reject(name, "out_of_range")
        return number

    def integer(self, name: str) -> int | None:
        number = self.number(name)
        if number is None:
            return None
        if number != number.to_integral_value():
            raise self._reject(name, "not_an_integer")
        return int(number)

    def _reject(self, name: str, reason: str) -> Rejected:
        value = self.text(name)[:200]
        return Rejected(Rejection(self.line, self._header(name), value, reason, BOUNDS[name][1]))

    def _header(self, name: str) -> str:
        return self.header[self.cols[name]].strip().lstrip("\ufeff") or name
