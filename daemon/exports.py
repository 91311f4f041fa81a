"""Parsing Langdock's export CSVs (SPEC §1) into typed rows.

Columns are found by header name through an alias table, so extra, reordered or renamed
columns do not break parsing; only the identity columns are required. Money is `Decimal`
from the first byte on. Input is any iterable of text lines *with* their line endings (an
open file works), so quoted fields may span lines and memory stays bounded.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

csv.field_size_limit(1 << 20)

TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_creation_tokens",
    "no_cache_tokens",
)

_TOKEN_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("sum_prompt_tokens", "prompt_tokens", "input_tokens"),
    "completion_tokens": ("sum_completion_tokens", "completion_tokens", "output_tokens"),
    "cached_prompt_tokens": ("cached_prompt_tokens", "sum_cached_prompt_tokens"),
    "cache_creation_tokens": ("cache_creation_tokens", "sum_cache_creation_tokens"),
    "no_cache_tokens": ("no_cache_tokens", "sum_no_cache_tokens"),
}
_COMMON_ALIASES: dict[str, tuple[str, ...]] = {
    "org_id": ("org_id", "workspace_id"),
    "period_start": ("period_start",),
    "period_end": ("period_end",),
    "requests": ("requests", "request_count", "total_requests", "num_requests"),
    "cost_usd": ("total_cost_usd", "cost_usd", "cost"),
    **_TOKEN_ALIASES,
}
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "api_key_id": ("api_key_id", "key_id"),
    "api_key_name": ("api_key_name", "key_name"),
    "model": ("model", "model_name", "name"),
    **_COMMON_ALIASES,
}
MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("name", "model", "model_name"),
    "provider": ("provider",),
    "byok": ("bring_your_keys", "bring_your_own_keys", "byok"),
    "errors": ("error_count", "errors", "failed_requests"),
    "error_rate": ("error_rate",),
    "response_time_ms": (
        "avg_response_time_ms",
        "response_time_ms",
        "avg_completion_time_ms",
        "avg_latency_ms",
    ),
    **_COMMON_ALIASES,
}


class ExportFormatError(ValueError):
    """The CSV does not have the shape we need (missing column, bad number)."""


class KeyUsage(NamedTuple):
    """One row of ``/export/api-keys`` (per key, or per key and model when grouped).

    A named tuple, not a dataclass: a 10,000-key workspace sends 100,000 of these per bucket,
    and a tuple is built three times faster.
    """

    api_key_id: str
    api_key_name: str
    model: str
    requests: int
    cost_usd: Decimal
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    cache_creation_tokens: int | None = None
    no_cache_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """One row of ``/export/models``: per model, provider and BYOK state."""

    model: str
    provider: str
    byok: bool
    requests: int
    cost_usd: Decimal | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    cache_creation_tokens: int | None = None
    no_cache_tokens: int | None = None
    errors: Decimal | None = None
    response_time_ms: Decimal | None = None


def normalize_header(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower().replace(" ", "_").replace("-", "_")


def _columns(
    header: list[str], aliases: Mapping[str, tuple[str, ...]], required: tuple[str, ...], what: str
) -> dict[str, int]:
    position = {normalize_header(h): i for i, h in reversed(list(enumerate(header)))}
    found: dict[str, int] = {}
    for canonical, names in aliases.items():
        for alias in names:
            if alias in position and position[alias] not in found.values():
                found[canonical] = position[alias]
                break
    missing = [name for name in required if name not in found]
    if missing:
        seen = ", ".join(h.strip().lstrip("\ufeff") for h in header) or "(no header)"
        raise ExportFormatError(
            f"{what} export: missing required column {', '.join(missing)} (headers seen: {seen})"
        )
    return found


class _Row:
    """Typed access to one CSV record, with line numbers in every error."""

    __slots__ = ("cols", "line", "record", "what")

    def __init__(self, record: list[str], cols: dict[str, int], line: int, what: str) -> None:
        self.record, self.cols, self.line, self.what = record, cols, line, what

    def text(self, name: str, default: str = "") -> str:
        index = self.cols.get(name)
        if index is None or index >= len(self.record):
            return default
        return self.record[index].strip()

    def decimal(self, name: str) -> Decimal | None:
        value = self.text(name).replace("$", "")
        if not value:
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise self._bad(name, value) from None
        if not number.is_finite():
            raise self._bad(name, value)
        return number

    def integer(self, name: str) -> int | None:
        number = self.decimal(name)
        if number is None:
            return None
        if number != number.to_integral_value():
            raise self._bad(name, self.text(name))
        return int(number)

    def _bad(self, name: str, value: str) -> ExportFormatError:
        return ExportFormatError(
            f"{self.what} export: line {self.line}: column {name}: {value[:40]!r} is not a number"
        )


def _open(
    lines: Iterable[str],
    aliases: Mapping[str, tuple[str, ...]],
    required: tuple[str, ...],
    what: str,
) -> tuple[Any, dict[str, int]]:
    """A CSV reader positioned after the header, and the header's column positions."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ExportFormatError(f"{what} export: the file is empty (no header row)") from None
    except csv.Error as exc:
        raise ExportFormatError(f"{what} export: line 1: unreadable CSV ({exc})") from None
    return reader, _columns(header, aliases, required, what)


def _unreadable(what: str, reader: Any, exc: csv.Error) -> ExportFormatError:
    return ExportFormatError(f"{what} export: line {reader.line_num}: unreadable CSV ({exc})")


def _records(
    lines: Iterable[str],
    aliases: Mapping[str, tuple[str, ...]],
    required: tuple[str, ...],
    what: str,
) -> Iterator[_Row]:
    reader, cols = _open(lines, aliases, required, what)
    try:
        for record in reader:
            if _blank(record):
                continue
            yield _Row(record, cols, reader.line_num, what)
    except csv.Error as exc:
        raise _unreadable(what, reader, exc) from None


def _blank(record: list[str]) -> bool:
    return not record or all(not cell.strip() for cell in record)


def _tokens(row: _Row) -> dict[str, int | None]:
    return {name: row.integer(name) for name in TOKEN_FIELDS}


def parse_key_usage(lines: Iterable[str], *, grouped: bool) -> Iterator[KeyUsage]:
    """Rows of an ``/export/api-keys`` CSV; ``grouped`` requires the model column.

    Well-formed records take a fast path (plain `int` / `Decimal` on the cells, column
    positions resolved once); anything unusual (blank cells with spaces, "12.0", "$1.50",
    short records) falls back to the careful per-cell parser, which also produces the
    line-numbered errors.
    """
    required = ("api_key_id", "model") if grouped else ("api_key_id",)
    reader, cols = _open(lines, KEY_ALIASES, required, "api-keys")
    i_key = cols["api_key_id"]
    i_name, i_req, i_cost = cols.get("api_key_name"), cols.get("requests"), cols.get("cost_usd")
    i_model = cols["model"] if grouped else None
    t0, t1, t2, t3, t4 = (cols.get(name) for name in TOKEN_FIELDS)
    width = max(cols.values()) + 1
    # one string object per distinct id, name and model (a key repeats for every model)
    seen: dict[str, str] = {}
    same = seen.setdefault
    try:
        for record in reader:
            if len(record) >= width:
                try:
                    key_id = same(key := record[i_key].strip(), key)
                    raw = record[i_cost] if i_cost is not None else ""
                    cost = Decimal(raw) if raw else _ZERO
                    raw = record[i_req] if i_req is not None else ""
                    if key_id and cost.is_finite():
                        yield KeyUsage(
                            key_id,
                            same(name := record[i_name].strip(), name)
                            if i_name is not None and record[i_name].strip()
                            else key_id,
                            same(model := record[i_model].strip(), model)
                            if i_model is not None
                            else "",
                            int(raw) if raw else 0,
                            cost,
                            int(record[t0]) if t0 is not None and record[t0] else None,
                            int(record[t1]) if t1 is not None and record[t1] else None,
                            int(record[t2]) if t2 is not None and record[t2] else None,
                            int(record[t3]) if t3 is not None and record[t3] else None,
                            int(record[t4]) if t4 is not None and record[t4] else None,
                        )
                        continue
                except (ValueError, InvalidOperation):
                    pass
            if not _blank(record):
                yield _careful_key_usage(_Row(record, cols, reader.line_num, "api-keys"), grouped)
    except csv.Error as exc:
        raise _unreadable("api-keys", reader, exc) from None


def _careful_key_usage(row: _Row, grouped: bool) -> KeyUsage:
    key_id = row.text("api_key_id")
    if not key_id:
        raise ExportFormatError(f"api-keys export: line {row.line}: empty api_key_id")
    return KeyUsage(
        api_key_id=key_id,
        api_key_name=row.text("api_key_name") or key_id,
        model=row.text("model") if grouped else "",
        requests=row.integer("requests") or 0,
        cost_usd=row.decimal("cost_usd") or Decimal(0),
        **_tokens(row),
    )


_ZERO = Decimal(0)
_TRUE = {"true", "1", "yes", "y", "t"}


def parse_model_usage(lines: Iterable[str]) -> Iterator[ModelUsage]:
    """Rows of an ``/export/models`` CSV, with error and latency columns where present."""
    for row in _records(lines, MODEL_ALIASES, ("model",), "models"):
        model = row.text("model")
        if not model:
            raise ExportFormatError(f"models export: line {row.line}: empty model name")
        requests = row.integer("requests") or 0
        errors = row.decimal("errors")
        rate = row.decimal("error_rate")
        if errors is None and rate is not None:
            # A rate above 1 can only be a percentage ("2.5" meaning 2.5 %).
            errors = (rate / 100 if rate > 1 else rate) * requests
        yield ModelUsage(
            model=model,
            provider=row.text("provider"),
            byok=row.text("byok").lower() in _TRUE,
            requests=requests,
            cost_usd=row.decimal("cost_usd"),
            errors=errors,
            response_time_ms=row.decimal("response_time_ms"),
            **_tokens(row),
        )
