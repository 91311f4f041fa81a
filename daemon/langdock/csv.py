"""Parsing Langdock's export CSVs into typed, checked rows (docs/DESIGN.md "Money").

Columns are found by header name through an alias table, so extra, reordered or renamed
columns do not break parsing; only the identity columns are required. Money is `Decimal`
from the first byte on. Input is any iterable of text lines *with* their line endings (an
open file works), so quoted fields may span lines; rows are yielded as they are read, and
`sum_key_usage` / `sum_model_usage` fold them per (key, model) / (model, provider, BYOK), so
memory follows the number of distinct keys and models, not the size of the file.

Every cell is checked (`daemon.langdock.checks`): a damaged record (a row cut short, a stray
quote, text where a number belongs) raises `MalformedFileError`, and the file is not used;
a poisoned value (negative, NaN, past the documented bounds) leaves its row out, counted and
named on the `Tally`, and the rest of the file is used.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any, NamedTuple

from daemon.langdock.checks import (
    COST_PLACES,
    MAX_COST_USD,
    MAX_COUNT,
    REASONS,
    Cells,
    ExportFormatError,
    MalformedFileError,
    Rejected,
    Rejection,
    Tally,
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

csv.field_size_limit(1 << 20)
# wide enough that every sum of bounded costs is exact (< 1e23 with 60 places: 83 digits)
_EXACT = Context(prec=200)

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


def _unreadable(what: str, reader: Any, exc: csv.Error) -> MalformedFileError:
    return MalformedFileError(f"{what} export: line {reader.line_num}: unreadable CSV ({exc})")


def _blank(record: list[str]) -> bool:
    return not record or all(not cell.strip() for cell in record)


def _tokens(row: Cells) -> dict[str, int | None]:
    return {name: row.integer(name) for name in TOKEN_FIELDS}


def _counts_ok(*values: int | None) -> bool:
    return all(value is None or 0 <= value <= MAX_COUNT for value in values)


def parse_key_usage(
    lines: Iterable[str], *, grouped: bool, tally: Tally | None = None
) -> Iterator[KeyUsage]:
    """Rows of an ``/export/api-keys`` CSV; ``grouped`` requires the model column. Rejected
    rows are left out and recorded on ``tally``.

    Well-formed records take a fast path (plain `int` / `Decimal` on the cells, column
    positions resolved once, bounds checked); anything unusual (blank cells with spaces,
    "12.0", "$1.50", exponents, a value out of bounds, a damaged record) falls back to the
    careful per-cell parser, which also produces the line-numbered errors and rejections.
    """
    tally = tally if tally is not None else Tally()
    required = ("api_key_id", "model") if grouped else ("api_key_id",)
    reader, header, cols = _open(lines, KEY_ALIASES, required, "api-keys")
    i_key = cols["api_key_id"]
    i_name, i_req, i_cost = cols.get("api_key_name"), cols.get("requests"), cols.get("cost_usd")
    i_model = cols["model"] if grouped else None
    t0, t1, t2, t3, t4 = (cols.get(name) for name in TOKEN_FIELDS)
    width = len(header)
    # one string object per distinct id, name and model (a key repeats for every model)
    seen: dict[str, str] = {}
    same = seen.setdefault
    try:
        for record in reader:
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
                        same(model := record[i_model].strip(), model)
                        if i_model is not None
                        else "",
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
                yield _careful_key_usage(record, cols, header, reader.line_num, grouped)
            except Rejected as rejected:
                tally.reject(rejected.rejection)
    except csv.Error as exc:
        raise _unreadable("api-keys", reader, exc) from None


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
        raise _unreadable("models", reader, exc) from None


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


def _add(a: Any, b: Any) -> Any:
    """a + b where a missing value (None) is no value, not zero; money sums are exact."""
    if a is None or b is None:
        return b if a is None else a
    return _EXACT.add(a, b) if isinstance(a, Decimal) else a + b


def sum_key_usage(rows: Iterable[KeyUsage]) -> list[KeyUsage]:
    """One row per (key, model), summed as the rows come, in first-seen order; every row of
    a key carries the name its last row had. The store keeps exactly what it keeps of the
    unsummed rows (it adds duplicates up), but memory holds only the distinct pairs."""
    totals: dict[tuple[str, str], KeyUsage] = {}
    names: dict[str, str] = {}
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
    return [
        row
        if row.api_key_name == (name := names[row.api_key_id])
        else row._replace(api_key_name=name)
        for row in totals.values()
    ]


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
