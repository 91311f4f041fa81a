"""The import read a few megabytes at a time (`read.read_chunks`), priced in 64- or 128-bit
integers or, past that, Python's: the same exact result as a row-by-row reference, wherever the
chunks are cut, for hostile values (many decimals, huge counts and prices, empty cells)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon.importer import read_calls
from daemon.importer.read import normalize_header
from daemon.rules.windows import bucket_start
from tests.properties import examples

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "Date,API Key ID,API Key Name,Provider,Model,Input Tokens,Output Tokens,"
    "Completion Time (ms),Input Token Price (USD/1M tokens),Output Token Price (USD/1M tokens)\n"
)
BASE = datetime(2026, 10, 24, 12, tzinfo=UTC)  # Berlin and Lord Howe change clocks
BAD = None

# A cell as written in the file, and what the import makes of it (the existing rules): an
# empty unquoted cell is missing (the row is bad), an empty quoted cell or spaces count as 0.
tokens = st.one_of(
    st.integers(0, 10**15).map(lambda n: (str(n), n)),
    st.sampled_from([("", BAD), ('""', 0), ("  ", 0), (" 7 ", 7), ("-1", BAD), ("x", BAD)]),
)
prices = st.one_of(
    st.builds(  # up to a million dollars, up to 20 decimals
        lambda whole, decimals: f"{whole}.{decimals}",
        st.integers(0, 10**6),
        st.text("0123456789", min_size=1, max_size=20),
    ).map(lambda text: (text, Decimal(text))),
    st.sampled_from(
        [
            ("2.50", Decimal("2.50")),
            ("0.000000000000000000001", Decimal("1E-21")),
            ("3.141592653589793238462643", Decimal("3.141592653589793238462643")),
            ("1E+5", Decimal("1E+5")),
            (" 15 ", Decimal(15)),
            ("", BAD),
            ('""', Decimal(0)),
            (" ", Decimal(0)),
            ("-1", BAD),
            ("NaN", BAD),
            ("ten", BAD),
        ]
    ),
)
calls = st.lists(
    st.tuples(
        st.integers(0, 3 * 24 * 60 - 1),  # minute of a three-day span
        st.sampled_from(["plain", "T", "offset"]),
        st.sampled_from(["k1", "k2", '"key, with comma"', '"multi\nline"', "", " "]),
        st.sampled_from(['"a ""quoted"" name"', "", "plain name"]),
        st.sampled_from(["gpt-4o", "claude", " claude "]),
        tokens,
        tokens,
        prices,
        prices,
    ),
    min_size=1,
    max_size=30,
)


def date(minute: int, style: str) -> str:
    when = BASE + timedelta(minutes=minute, seconds=17)
    if style == "plain":
        return f"{when:%Y-%m-%d %H:%M:%S}"
    if style == "T":
        return f"{when:%Y-%m-%dT%H:%M:%S}.250Z"
    return when.astimezone(ZoneInfo("America/St_Johns")).isoformat()


def unquoted(cell: str) -> str:
    return cell[1:-1].replace('""', '"') if cell.startswith('"') else cell


@pytest.mark.long
@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls,
    st.sampled_from(["UTC", "Asia/Kolkata", "Europe/Berlin", "Australia/Lord_Howe"]),
    st.sampled_from([1, 40, 300, 0]),  # bytes a chunk (0: the default, one chunk here)
)
# always: a date in another form than the usual, again in a later chunk
@example(
    [(0, "offset", "k1", "", "m", ("1", 1), ("1", 1), ("2", Decimal(2)), ("2", Decimal(2)))] * 2,
    "UTC",
    1,
)
def test_chunked_import_equals_an_exact_row_by_row_reference(
    rows: list[tuple[int, str, str, str, str, tuple, tuple, tuple, tuple]],
    zone: str,
    chunk_bytes: int,
) -> None:
    tz = ZoneInfo(zone)
    text = HEADER
    expected: dict[tuple[datetime, str, str], list] = {}
    good = bad = 0
    with localcontext(prec=200):  # the reference itself must not round
        for minute, style, key, name, model, (inp, i), (outp, o), (pin, pi), (pout, po) in rows:
            text += f"{date(minute, style)},{key},{name},p,{model},{inp},{outp},1,{pin},{pout}\n"
            key_id = unquoted(key).strip()
            if not key_id or BAD in (i, o, pi, po):
                bad += 1
                continue
            when = BASE + timedelta(minutes=minute, seconds=17)
            group = expected.setdefault(
                (bucket_start(when, tz), key_id, model.strip()), [Decimal(0), 0, 0, 0]
            )
            group[0] += (i * pi + o * po) / 1_000_000
            group[1] += 1
            group[2] += i
            group[3] += o
            good += 1
    result = read_calls(text.encode(), tz, chunk_bytes=chunk_bytes)
    assert (result.rows, result.skipped) == (good, bad)
    assert result.buckets == {k: tuple(v) for k, v in expected.items()}
    assert result.group_count == len(expected)


def csv_of(*rows: str) -> bytes:
    return (HEADER + "".join(row + "\n" for row in rows)).encode()


ROW = "2026-11-20 10:{:02d}:00,k{},name {},p,gpt-4o,1000,2000,1,2.50,10.00"


def test_bad_rows_are_named_by_line_across_chunks_and_names_are_the_last_given() -> None:
    rows = [ROW.format(i % 60, i % 3, i) for i in range(200)]
    rows[57] = rows[57].replace(",1000,", ",lots,")
    rows[150] = rows[150].replace("2.50", "two")
    rows[151] = ",,,,,,,,,"  # blank: skipped without a word, as the csv module would
    rows[120] = rows[120].replace("name 120", '"name, 120\n(two lines)"')
    whole = read_calls(csv_of(*rows), ZoneInfo("UTC"))
    for chunk_bytes in (1, 100, 1000, 5000):
        result = read_calls(csv_of(*rows), ZoneInfo("UTC"), chunk_bytes=chunk_bytes)
        assert result.errors == [
            "line 59: column 'Input Tokens': 'lots' is not a whole number",
            "line 152: column 'Input Token Price (USD/1M tokens)': 'two' is not a price"
            " (a number >= 0, USD per 1M tokens)",
        ]
        assert (result.rows, result.skipped) == (197, 2)
        assert result.buckets == whole.buckets and result.group_count == 3
        assert result.names == {"k0": "name 198", "k1": "name 199", "k2": "name 197"}
        assert result.first == datetime(2026, 11, 20, 10, tzinfo=UTC)
        assert result.last == datetime(2026, 11, 20, 10, 59, tzinfo=UTC)


def test_a_price_with_more_decimals_later_rescales_what_came_before() -> None:
    rows = [ROW.format(i, 1, i) for i in range(50)]
    rows.append(ROW.format(50, 1, 50).replace("2.50", "0.0000000000001"))
    result = read_calls(csv_of(*rows), ZoneInfo("UTC"), chunk_bytes=64)
    (cost, calls, inp, out), *_ = result.buckets.values()
    assert (calls, inp, out) == (51, 51_000, 102_000)
    assert cost == (50 * 1000 * Decimal("2.50") + Decimal("1E-10") + 51 * 2000 * 10) / 10**6
    assert result.scale == 6 + 13


def test_costs_past_128_bits_are_priced_in_python_exactly() -> None:
    price = "0." + "0" * 30 + "1"  # 31 decimals: multipliers of 10**31 for whole prices
    rows = [
        ROW.format(0, 1, 0).replace(",1000,2000,", f",{10**18},{10**18},"),
        ROW.format(1, 1, 1).replace("2.50", price),
    ]
    result = read_calls(csv_of(*rows), ZoneInfo("UTC"), chunk_bytes=1)
    ((cost, calls, inp, out),) = result.buckets.values()
    assert (calls, inp, out) == (2, 10**18 + 1000, 10**18 + 2000)
    with localcontext(prec=100):
        exact = (10**18 * Decimal("2.5") + 10**18 * 10 + 1000 * Decimal(price) + 2000 * 10) / 10**6
    assert cost == exact


def test_a_first_row_shorter_than_the_header_fails_as_it_always_did() -> None:
    data = csv_of("2026-11-20 10:15:00,k1,prod,openai,gpt-4o,500", ROW.format(1, 1, 1))
    with pytest.raises(ValueError, match=r"unreadable \(cannot get the \d+-th column"):
        read_calls(data, ZoneInfo("UTC"), chunk_bytes=10)


def test_headers_are_normalized_as_the_api_exports_are() -> None:
    from daemon.langdock.csv import normalize_header as api_normalize

    for header in ["\ufeffDate", " API Key ID ", "Input Token Price (USD/1M tokens)", "a-b c"]:
        assert normalize_header(header) == api_normalize(header)


def test_loading_polars_sets_its_allocator_option_for_itself_only() -> None:
    probe = (
        "import os, sys\n"
        "from daemon.importer.read import load_polars\n"
        "load_polars()\n"
        "assert 'polars' in sys.modules\n"
        "print(os.environ.get('_RJEM_MALLOC_CONF'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert done.stdout.strip() == "None"  # set while polars loaded, then removed again


def test_a_lookup_that_outgrows_its_limit_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.importer import group

    rows = [ROW.format(i % 60, i, i).replace("2.50", f"2.{i:02d}") for i in range(100)]
    whole = read_calls(csv_of(*rows), ZoneInfo("UTC"))
    monkeypatch.setattr(group._Texts, "LIMIT", 5)  # keys and input prices: 100 each
    small = read_calls(csv_of(*rows), ZoneInfo("UTC"), chunk_bytes=300)
    assert small.buckets == whole.buckets and small.names == whole.names
    assert small.group_count == whole.group_count == 100


def test_stopping_early_or_failing_late_leaves_no_reader_behind() -> None:
    import threading

    rows = [ROW.format(i % 60, 1, i) for i in range(100)]
    strict_bad = [*rows[:80], rows[80].replace(",1000,", ",lots,"), *rows[81:]]
    with pytest.raises(ValueError, match=r"line 82: column 'Input Tokens': 'lots' is not"):
        read_calls(csv_of(*strict_bad), ZoneInfo("UTC"), strict=True, chunk_bytes=200)
    late = csv_of(*rows[:90]) + b"2026-11-20 10:15:00,k1,n\xff,p,gpt-4o,1,2,1,2.50,10.00\n"
    with pytest.raises(ValueError, match=r"unreadable: line 92: column 'API Key Name': b'n\\xff'"):
        read_calls(late, ZoneInfo("UTC"), chunk_bytes=200)
    assert not [t for t in threading.enumerate() if t.name == "import-reader"]


def test_sums_kept_in_32_bits_widen_where_chunks_add_up_past_them() -> None:
    near = 2**31 - 10  # fits 32 bits alone; twice it does not
    rows = [
        ROW.format(0, 1, 0).replace(",1000,2000,", f",{near},0,"),
        ROW.format(1, 1, 1).replace(",1000,2000,", f",{near},0,"),  # same group, next chunk
        ROW.format(2, 2, 2),  # small: 32 bits throughout
        ROW.format(3, 3, 3).replace(",1000,2000,", f",0,{2**40},"),  # 64 bits in its chunk
    ]
    result = read_calls(csv_of(*rows), ZoneInfo("UTC"), chunk_bytes=1)
    assert {k[1]: v for k, v in result.buckets.items()} == {
        "k1": (2 * near * Decimal("2.5") / 10**6, 2, 2 * near, 0),
        "k2": ((1000 * Decimal("2.5") + 2000 * 10) / 10**6, 1, 1000, 2000),
        "k3": (2**40 * Decimal(10) / 10**6, 1, 0, 2**40),
    }


def test_free_calls_before_a_price_with_many_decimals_stay_free() -> None:
    free = ROW.format(1, 1, 1).replace(",2.50,10.00", ',"",""')  # prices 0: costs 0 so far
    free = free.replace(" 10:", " 09:")  # an hour of its own
    tiny = ROW.format(2, 1, 2).replace("10.00", "0.000000000000000000001")  # 21 decimals
    result = read_calls(csv_of(free, tiny), ZoneInfo("UTC"), chunk_bytes=1)
    assert sorted(result.buckets.values()) == [
        (Decimal(0), 1, 1000, 2000),  # scaled up by 10**21 when the tiny price came: still 0
        ((1000 * Decimal("2.50") + 2000 * Decimal("1E-21")) / 10**6, 1, 1000, 2000),
    ]
