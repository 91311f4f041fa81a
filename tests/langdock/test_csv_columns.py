"""The column-wise read of an api-keys file (`sum_key_usage(parse_key_usage(...))`, what the
client does with every download) against the reference: the row path, folded row by row.

Same rows (exact `Decimal` text, not only equal values), same names, same tally (records,
rejections, examples with their line numbers), same error (type and message), for files
with every quirk the row path has a rule for: blank lines, CR / LF / CRLF, quoted cells with
commas, quotes and line breaks, damaged records, poisoned and unusual values, duplicates,
token columns present, absent or partly empty; and with chunks of a few records, so chunk
boundaries, and the switch from plain lines to the csv module, fall anywhere."""

from __future__ import annotations

import csv
import gc
import io
import tempfile
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daemon.langdock.csv as csv_module
from daemon.langdock.csv import KeyUsage, Tally, parse_key_usage, sum_key_usage
from daemon.langdock.download import _parse
from tests.properties import examples

COLUMNS = [
    "api_key_id",
    "api_key_name",
    "model",
    "requests",
    "total_cost_usd",
    "sum_prompt_tokens",
    "sum_completion_tokens",
    "cached_prompt_tokens",
    "cache_creation_tokens",
    "no_cache_tokens",
    "period_start",
]
REQUIRED = ["api_key_id", "model"]

ids = st.sampled_from(["k1", "k2", "k3", " k1", "k2 ", "", "key,x", 'k"q'])
texts = st.sampled_from(
    ["alpha", "beta", "", "  ", "team, a", 'say "hi"', "two\nlines", "cr\rlf", "ü名", "x\x00y"]
)
models = st.sampled_from(["m1", "m2", " m1", "", "gpt-4o"])
counts = st.one_of(
    st.integers(0, 10**12).map(str),
    st.sampled_from(
        ["", " ", " 3", "3 ", "2.5", "-1", "-0", "1e3", "1_000", "+4", "nan", "x", "10" * 7]
    ),
    st.integers(10**12 + 1, 10**15).map(str),
)
costs = st.one_of(
    st.decimals(min_value=0, max_value=10**7, places=9, allow_nan=False).map(str),
    st.decimals(min_value=0, max_value=10**7, places=20, allow_nan=False).map(str),
    st.sampled_from(
        [
            "",
            " 0.5",
            "0.50",
            "-0",
            "-0.5",
            "1E-5",
            "1e2",
            "$1.50",
            "NaN",
            "Infinity",
            "0." + "0" * 59 + "1",
            "0." + "0" * 60 + "1",
            "0.5" + "0" * 70,
            "10000000.000001",
            "abc",
            "1_0.5",
        ]
    ),
)
CELLS = {
    "api_key_id": ids,
    "api_key_name": texts,
    "model": models,
    "total_cost_usd": costs,
    "period_start": st.just("2026-11-20T09:00:00Z"),
}


@st.composite
def files(draw: st.DrawFn) -> tuple[str, bool]:
    grouped = draw(st.booleans())
    extra = draw(st.lists(st.sampled_from(COLUMNS), unique=True))
    header = list(dict.fromkeys([*REQUIRED, *extra]))
    header = draw(st.permutations(header))
    if not grouped and draw(st.booleans()):
        header.remove("model")
    plain = draw(st.booleans())  # the common case: nothing unusual, many rows
    rows = []
    for _ in range(draw(st.integers(0, 25))):
        if plain:
            row = [
                draw(st.sampled_from(["k1", "k2", "k3", "k4"]))
                if name == "api_key_id"
                else draw(st.sampled_from(["m1", "m2"]))
                if name == "model"
                else draw(st.sampled_from(["a", "b", ""]))
                if name == "api_key_name"
                else str(draw(st.decimals(0, 100, places=6, allow_nan=False)))
                if name == "total_cost_usd"
                else draw(st.sampled_from(["1", "20", "", "300"]))
                for name in header
            ]
        else:
            row = [draw(CELLS.get(name, counts)) for name in header]
            damage = draw(st.sampled_from(["none"] * 6 + ["short", "long", "blank", "spaces"]))
            if damage == "short":
                row = row[: draw(st.integers(0, max(len(row) - 1, 0)))]
            elif damage == "long":
                row = [*row, "extra"]
            elif damage == "blank":
                row = []
            elif damage == "spaces":
                row = ["  "] * len(row)
        rows.append(row)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    how = draw(st.sampled_from(["join", "minimal", "all"]))
    buffer = io.StringIO(newline="")
    if how == "join":  # no quoting: a comma or line break in a cell damages the record
        buffer.write("".join(",".join(row) + newline for row in [header, *rows]))
    else:
        quoting = csv.QUOTE_ALL if how == "all" else csv.QUOTE_MINIMAL
        csv.writer(buffer, lineterminator=newline, quoting=quoting).writerows([header, *rows])
    text = buffer.getvalue()
    if draw(st.booleans()):
        text = text.removesuffix(newline)  # no line break after the last record
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', "\n", ",", "\r\n", "\x00", ""])) + text[at:]
    return text, grouped


def reference(lines: Iterable[str], grouped: bool) -> tuple[Any, Tally]:
    """The row path, folded row by row: what the client did before the column-wise read."""
    tally = Tally()
    try:
        rows: Any = sum_key_usage(list(parse_key_usage(lines, grouped=grouped, tally=tally)))
    except Exception as exc:
        rows = (type(exc), str(exc))
    return rows, tally


def column_wise(lines: Iterable[str], grouped: bool) -> tuple[Any, Tally]:
    tally = Tally()
    try:
        rows: Any = sum_key_usage(parse_key_usage(lines, grouped=grouped, tally=tally))
    except Exception as exc:
        rows = (type(exc), str(exc))
    return rows, tally


def exact(result: tuple[Any, Tally]) -> tuple[str, Tally]:
    """Rows as their repr: ``Decimal('0.50')`` is not ``Decimal('0.5')`` here."""
    rows, tally = result
    return repr(rows), tally


# the chunk size is patched once for all examples of a test (nothing to reset between them)
SLOW_AND_PATCHED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@pytest.fixture(params=[1, 3, 2048])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(csv_module, "_CHUNK", request.param)
    return int(request.param)


@pytest.mark.long
@settings(max_examples=examples(60), deadline=None, suppress_health_check=SLOW_AND_PATCHED)
@given(files())
def test_column_wise_read_equals_the_row_path(chunk: int, file: tuple[str, bool]) -> None:
    text, grouped = file
    expected = exact(reference(io.StringIO(text, newline=""), grouped))
    assert exact(column_wise(io.StringIO(text, newline=""), grouped)) == expected
    # any iterable of lines, even pieces that are not whole lines
    pieces = text.splitlines(keepends=True)
    assert exact(column_wise(pieces, grouped)) == exact(reference(pieces, grouped))
    assert gc.isenabled()


@settings(max_examples=examples(100), deadline=None, suppress_health_check=SLOW_AND_PATCHED)
@given(st.text(st.sampled_from('ab1,."\r\n 0-e$'), max_size=120), st.booleans())
def test_column_wise_read_equals_the_row_path_on_any_text(
    chunk: int, body: str, grouped: bool
) -> None:
    text = "api_key_id,model,requests,total_cost_usd,sum_prompt_tokens\n" + body
    expected = exact(reference(io.StringIO(text, newline=""), grouped))
    assert exact(column_wise(io.StringIO(text, newline=""), grouped)) == expected


def test_a_large_file_read_column_wise_through_the_download_path() -> None:
    """The shape of the scale benchmark's export (10,000 keys x 10 models), spooled and
    decoded as `download_file` does, with a duplicate pair and a renamed key at the end."""
    lines = ["api_key_id,api_key_name,model,requests,total_cost_usd,sum_prompt_tokens"]
    lines += [
        f"key_{k:05d},team-{k % 97},model-{m},{k % 50 + 1},{(k * 10 + m + 1) / 7919:.9f},{k}"
        for k in range(2_000)
        for m in range(10)
    ]
    lines += ["key_00007,renamed,model-3,1,0.000000001,5"]
    data = ("\r\n".join(lines) + "\r\n").encode()

    def parse(column_wise: bool) -> tuple[list[KeyUsage], Tally]:
        tally = Tally()
        with tempfile.SpooledTemporaryFile() as spool:
            spool.write(data)
            spool.seek(0)
            rows = _parse(
                spool,
                "api-keys",
                lambda stream, t: sum_key_usage(
                    parse_key_usage(stream, grouped=True, tally=t)
                    if column_wise
                    else list(parse_key_usage(stream, grouped=True, tally=t))
                ),
                tally,
                "https://storage.example/f.csv",
                "",
            )
        return rows, tally

    rows, tally = parse(column_wise=True)
    expected_rows, expected_tally = parse(column_wise=False)
    assert (repr(rows), tally) == (repr(expected_rows), expected_tally)
    assert tally.records == 20_001 and len(rows) == 20_000
    cost = Decimal(f"{74 / 7919:.9f}") + Decimal("0.000000001")
    assert rows[73] == KeyUsage("key_00007", "renamed", "model-3", 9, cost, 12)
    assert all(row.api_key_name == "renamed" for row in rows[70:80])
    assert gc.isenabled()


def test_the_collector_is_on_again_after_a_damaged_file() -> None:
    text = "api_key_id,model,requests\nk1,m,1\nk2,m\n"
    with pytest.raises(csv_module.MalformedFileError, match="line 3: 2 cells"):
        sum_key_usage(parse_key_usage(io.StringIO(text, newline=""), grouped=True))
    assert gc.isenabled()
    gc.disable()
    try:  # off before: stays off
        sum_key_usage(parse_key_usage(io.StringIO(text[:-5], newline=""), grouped=True))
        assert not gc.isenabled()
    finally:
        gc.enable()


BIG = "x" * ((1 << 20) + 1)  # one character past the csv module's field limit (1 MiB)


@pytest.mark.parametrize(
    "lines",
    [
        ["api_key_id,model\n", "k1,m\n", f"k2,{BIG}\n", "k3,m\n"],  # field too large
        ["api_key_id,model\n", "k1,m\n", "k1\rx,m\n"],  # a line break inside an unquoted cell
        ["api_key_id,model\n", "k1,m\n", b"k2,m\n"],  # not text
        ["api_key_id,model\n", "k1\n", "k1\rx,m\n"],  # a damaged record first: its error
        ["api_key_id,model\n", "k1,m\n", "k2,m\n", '"k3\n', "k4,m\n"],  # quote to the end
    ],
)
def test_what_the_csv_module_refuses_is_refused_alike(chunk: int, lines: list[Any]) -> None:
    expected = exact(reference(lines, grouped=True))
    assert expected[0].startswith("(<class 'daemon.langdock.checks.MalformedFileError'>")
    assert exact(column_wise(lines, grouped=True)) == expected


def test_rows_already_iterated_are_not_read_again() -> None:
    text = "api_key_id,model,requests\nk1,m,1\nk2,m,2\nk1,m,3\n"
    rows = parse_key_usage(io.StringIO(text, newline=""), grouped=True)
    assert next(rows) == KeyUsage("k1", "k1", "m", 1, Decimal(0))
    assert sum_key_usage(rows) == [
        KeyUsage("k2", "k2", "m", 2, Decimal(0)),
        KeyUsage("k1", "k1", "m", 3, Decimal(0)),
    ]


def failing_after(lines: list[str], exc: Exception) -> Iterable[str]:
    yield from lines
    raise exc


@pytest.mark.parametrize(
    "body",
    [
        ["k1,m,1\n", "k2,m,2\n"],  # plain lines, then the failure
        ["k1,m,1\n", '"k2",m,2\n'],  # quoted: the csv module reads them
        ["k1,m,1\n", "k2,m\n", "k3,m,3\n"],  # a damaged record before the failure: its error
        ["k1,m,1\n", '"k2\n'],  # a quote still open when the lines fail
    ],
)
def test_a_failing_source_fails_alike_after_the_records_before_it(
    chunk: int, body: list[str]
) -> None:
    lines = ["api_key_id,model,requests\n", *body]

    def source() -> Iterable[str]:
        return failing_after(lines, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"))

    assert exact(column_wise(source(), grouped=True)) == exact(reference(source(), grouped=True))


def test_a_file_that_is_not_utf8_fails_alike() -> None:
    good = "".join(f"k{i},m,{i}\r\n" for i in range(5_000)).encode()
    for body in (good + b"\xff,m,1\r\n", b"k1,m\r\n" + good + b"\xff,m,1\r\n"):
        data = b"api_key_id,model,requests\r\n" + body
        results = [
            exact(read(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""), True))
            for read in (reference, column_wise)
        ]
        assert results[0] == results[1]
        assert results[0][0].startswith(
            "(<class 'UnicodeDecodeError'>"
            if body.startswith(b"k0")
            else "(<class 'daemon.langdock.checks.MalformedFileError'>"
        )
