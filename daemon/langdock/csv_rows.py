"""The rows of Langdock's export CSVs, read one record at a time (docs/DESIGN.md "Money").

The row types (`KeyUsage`, `ModelUsage`), header normalisation and the alias table that maps
headers to columns, so extra, reordered or renamed columns do not break parsing (only the
identity columns are required), and the per-row parsers: the api-keys row path (`_key_rows`:
plain `int` / `Decimal` on well-formed records, the careful per-cell parser for anything
else) and the careful parser of a models row. Money is `Decimal` from the first byte on.

Every cell is checked (`daemon.langdock.checks`): a damaged record (a row cut short, a stray
quote, text where a number belongs) raises `MalformedFileError`, and the file is not used;
a poisoned value (negative, NaN, past the documented bounds) leaves its row out, counted and
named on the `Tally`, and the rest of the file is used.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from daemon.langdock.checks import (
    COST_PLACES,
    MAX_COST_USD,
    MAX_COUNT,
    Cells,
    ExportFormatError,
    MalformedFileError,
    Rejected,
    Tally,
)

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


def _open(
    lines: Iterable[str],
    aliases: Mapping[str, tuple[str, ...]],
    required: tuple[str, ...],
    what: str,
) -> tuple[Any, list[str], dict[str, int]]:
    """A CSV reader positioned after the header, the header, and its column positions."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ExportFormatError(f"{what} export: the file is empty (no header row)") from None
    except csv.Error as exc:
        raise MalformedFileError(f"{what} export: line 1: unreadable CSV ({exc})") from None
    return reader, header, _columns(header, aliases, required, what)


def _unreadable(what: str, line: int, exc: csv.Error) -> MalformedFileError:
    return MalformedFileError(f"{what} export: line {line}: unreadable CSV ({exc})")


def _blank(record: list[str]) -> bool:
    return not record or all(not cell.strip() for cell in record)


def _tokens(row: Cells) -> dict[str, int | None]:
    return {name: row.integer(name) for name in TOKEN_FIELDS}


def _counts_ok(*values: int | None) -> bool:
    return all(value is None or 0 <= value <= MAX_COUNT for value in values)


def _read_key_rows(lines: Iterable[str], grouped: bool, tally: Tally) -> Iterator[KeyUsage]:
    required = ("api_key_id", "model") if grouped else ("api_key_id",)
    reader, header, cols = _open(lines, KEY_ALIASES, required, "api-keys")
    numbered = ((record, reader.line_num) for record in reader)
    try:
        yield from _key_rows(numbered, header, cols, grouped, tally, {})
    except csv.Error as exc:
        raise _unreadable("api-keys", reader.line_num, exc) from None


def _key_rows(
    records: Iterable[tuple[list[str], int]],
    header: list[str],
    cols: dict[str, int],
    grouped: bool,
    tally: Tally,
    seen: dict[str, str],
) -> Iterator[KeyUsage]:
    """The row path: each record with the line it ends on. ``seen`` keeps one string object
    per distinct id, name and model (a key repeats for every model)."""
    i_key = cols["api_key_id"]
    i_name, i_req, i_cost = cols.get("api_key_name"), cols.get("requests"), cols.get("cost_usd")
    i_model = cols["model"] if grouped else None
    t0, t1, t2, t3, t4 = (cols.get(name) for name in TOKEN_FIELDS)
    width = len(header)
    same = seen.setdefault
    for record, line in records:
        if len(record) == width:
            try:
                key_id = same(key := record[i_key].strip(), key)
                raw = record[i_cost] if i_cost is not None else ""
                cost = Decimal(raw) if raw else _ZERO
                row = KeyUsage(
                    key_id,
                    same(name := record[i_name].strip(), name)
                    if i_name is not None and record[i_name].strip()
                    else key_id,
                    same(model := record[i_model].strip(), model) if i_model is not None else "",
                    int(record[i_req]) if i_req is not None and record[i_req] else 0,
                    cost,
                    int(record[t0]) if t0 is not None and record[t0] else None,
                    int(record[t1]) if t1 is not None and record[t1] else None,
                    int(record[t2]) if t2 is not None and record[t2] else None,
                    int(record[t3]) if t3 is not None and record[t3] else None,
                    int(record[t4]) if t4 is not None and record[t4] else None,
                )
                if (
                    key_id
                    and cost.is_finite()
                    and _ZERO <= cost <= MAX_COST_USD
                    and len(raw) <= COST_PLACES
                    and "e" not in raw
                    and "E" not in raw
                    and _counts_ok(*row[3:4], *row[5:])
                ):
                    tally.records += 1
                    yield row
                    continue
            except (ValueError, InvalidOperation):
                pass
        if _blank(record):
            continue
        tally.records += 1
        try:
            yield _careful_key_usage(record, cols, header, line, grouped)
        except Rejected as rejected:
            tally.reject(rejected.rejection)


def _careful_key_usage(
    record: list[str], cols: dict[str, int], header: list[str], line: int, grouped: bool
) -> KeyUsage:
    row = Cells(record, cols, header, line, "api-keys")
    key_id = row.identity("api_key_id")
    return KeyUsage(
        api_key_id=key_id,
        api_key_name=row.text("api_key_name") or key_id,
        model=row.text("model") if grouped else "",
        requests=row.integer("requests") or 0,
        cost_usd=row.cost("cost_usd") or Decimal(0),
        **_tokens(row),
    )


_ZERO = Decimal(0)
_TRUE = {"true", "1", "yes", "y", "t"}


def _careful_model_usage(row: Cells) -> ModelUsage:
    model = row.identity("model")
    requests = row.integer("requests") or 0
    errors = row.number("errors")
    rate = row.number("error_rate")
    if errors is None and rate is not None:
        # A rate above 1 can only be a percentage ("2.5" meaning 2.5 %).
        errors = (rate / 100 if rate > 1 else rate) * requests
    return ModelUsage(
        model=model,
        provider=row.text("provider"),
        byok=row.text("byok").lower() in _TRUE,
        requests=requests,
        cost_usd=row.cost("cost_usd"),
        errors=errors,
        response_time_ms=row.number("response_time_ms"),
        **_tokens(row),
    )
