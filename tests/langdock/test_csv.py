"""CSV parsing: header aliases, BOM, CRLF, quoting, empty cells, clear errors; damaged
records, poisoned values and their bounds; folding rows per key and model in flat memory."""

from __future__ import annotations

import csv
import io
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.langdock.csv import (
    ExportFormatError,
    KeyUsage,
    MalformedFileError,
    ModelUsage,
    Tally,
    parse_key_usage,
    parse_model_usage,
    sum_key_usage,
    sum_model_usage,
)
from daemon.store import Store
from tests.properties import examples


def lines(text: str) -> io.StringIO:
    return io.StringIO(text, newline="")


def test_documented_api_keys_columns() -> None:
    text = (
        "period_start,period_end,org_id,api_key_id,api_key_name,requests,total_cost_usd\n"
        "2026-11-01,2026-11-02,org1,k1,prod-web,12,3.141592653589793238\n"
    )
    (row,) = parse_key_usage(lines(text), grouped=False)
    assert row == KeyUsage("k1", "prod-web", "", 12, Decimal("3.141592653589793238"))


def test_bom_crlf_extra_columns_quoted_commas_and_newlines() -> None:
    text = (
        "\ufeffapi_key_id,Extra Column,API_KEY_NAME,model_name,requests,total_cost_usd,"
        "sum_prompt_tokens,sum_completion_tokens\r\n"
        'k1,x,"team, ""alpha""\r\nsecond line",gpt-4o,3,0.5,100,\r\n'
    )
    (row,) = parse_key_usage(lines(text), grouped=True)
    assert row.api_key_name == 'team, "alpha"\r\nsecond line'
    assert row.model == "gpt-4o"
    assert row.prompt_tokens == 100
    assert row.completion_tokens is None  # empty cell (embeddings have no output tokens)


@pytest.mark.parametrize("header", ["model", "model_name", "name"])
def test_grouped_model_column_aliases(header: str) -> None:
    text = f"api_key_id,{header},requests,total_cost_usd\nk1,m1,1,0.1\n"
    assert next(parse_key_usage(lines(text), grouped=True)).model == "m1"


def test_missing_required_column_names_the_headers_seen() -> None:
    text = "key,requests,total_cost_usd\nk1,1,0.1\n"
    with pytest.raises(ExportFormatError) as err:
        list(parse_key_usage(lines(text), grouped=False))
    assert "missing required column api_key_id" in str(err.value)
    assert "headers seen: key, requests, total_cost_usd" in str(err.value)


def test_grouped_export_requires_a_model_column() -> None:
    with pytest.raises(ExportFormatError, match="missing required column model"):
        list(parse_key_usage(lines("api_key_id,requests\nk1,1\n"), grouped=True))


def test_text_where_a_number_belongs_is_a_damaged_file() -> None:
    text = "api_key_id,requests,total_cost_usd\nk1,1,0.1\nk2,many,0.2\n"
    with pytest.raises(MalformedFileError, match="line 3: column requests: 'many' is not a number"):
        list(parse_key_usage(lines(text), grouped=False))


def test_empty_file_and_blank_lines() -> None:
    with pytest.raises(ExportFormatError, match="empty"):
        list(parse_key_usage(lines(""), grouped=False))
    text = "api_key_id,requests,total_cost_usd\n\nk1,,\n"
    (row,) = parse_key_usage(lines(text), grouped=False)
    assert (row.requests, row.cost_usd, row.api_key_name) == (0, Decimal(0), "k1")


def test_models_export_with_byok_errors_and_latency() -> None:
    text = (
        "period_start,period_end,org_id,name,provider,bring_your_keys,requests,"
        "sum_prompt_tokens,sum_completion_tokens,total_cost_usd,error_rate,avg_response_time_ms\n"
        "2026-11-01,2026-11-02,o,gpt-4o,openai,true,200,1000,500,1.25,2.5,1800.5\n"
        "2026-11-01,2026-11-02,o,mistral,mistral,false,10,,,,0.1,\n"
    )
    first, second = parse_model_usage(lines(text))
    assert first.byok and first.cost_usd == Decimal("1.25")
    assert first.errors == Decimal(5)  # 2.5 % of 200
    assert first.response_time_ms == Decimal("1800.5")
    assert not second.byok and second.cost_usd is None and second.errors == Decimal(1)


def test_documented_models_columns_without_byok() -> None:
    text = (
        "period_start,period_end,org_id,name,provider,bring_your_keys,requests\nx,y,o,m,p,false,7\n"
    )
    (row,) = parse_model_usage(lines(text))
    assert (row.model, row.provider, row.requests, row.cost_usd, row.errors) == (
        "m",
        "p",
        7,
        None,
        None,
    )


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
money = st.decimals(min_value=0, max_value=10**7, places=10, allow_nan=False, allow_infinity=False)


@given(
    st.lists(
        st.tuples(
            st.text("abcdef0123456789_", min_size=1, max_size=12),
            names,
            names.filter(lambda s: s.strip() == s and s != ""),
            st.integers(0, 10**12),
            money,
        ),
        max_size=20,
    ),
    st.booleans(),
)
def test_csv_round_trip(rows: list[tuple[str, str, str, int, Decimal]], crlf: bool) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["api_key_id", "api_key_name", "model", "requests", "total_cost_usd"])
    writer.writerows(rows)
    buffer.seek(0)
    parsed = list(parse_key_usage(buffer, grouped=True))
    assert [(r.api_key_id, r.model, r.requests, r.cost_usd) for r in parsed] == [
        (k, m, q, c) for k, _, m, q, c in rows
    ]
    assert [r.api_key_name for r in parsed] == [(n.strip() or k) for k, n, *_ in rows]


# ----------------------------------------------------------------- damaged records (issue #14.2)

KEYS_HEADER = "api_key_id,api_key_name,model,requests,total_cost_usd\n"


@pytest.mark.parametrize(
    ("last", "problem"),
    [
        ("k2,web,gpt-4o\n", "line 3: 3 cells where the header has 5"),  # cut short, newline kept
        ("k2,web,gpt-4o,3,0.5,7\n", "line 3: 6 cells where the header has 5"),
        ('k2,web,"gpt-4o,3,0.5\n', "line 3: 3 cells where the header has 5"),  # a stray quote
        ('k2,"web,gpt-4o",3,0.5\n', "line 3: 4 cells where the header has 5"),
        (",web,gpt-4o,3,0.5\n", "line 3: empty api_key_id"),
        ("k2,web,gpt-4o,3,0.5USD\n", "line 3: column total_cost_usd: '0.5USD' is not a number"),
    ],
)
def test_a_damaged_record_makes_the_file_malformed_not_zeros(last: str, problem: str) -> None:
    text = KEYS_HEADER + "k1,app,gpt-4o,12,1.25\n" + last
    with pytest.raises(MalformedFileError, match=problem):
        list(parse_key_usage(lines(text), grouped=True))
    with pytest.raises(MalformedFileError):  # the folding parse the client uses fails alike
        sum_key_usage(parse_key_usage(lines(text), grouped=True))


def test_a_damaged_models_record_makes_the_file_malformed() -> None:
    header = "name,provider,bring_your_keys,requests,error_count\n"
    with pytest.raises(MalformedFileError, match="line 2: 2 cells where the header has 5"):
        list(parse_model_usage(lines(header + "gpt-4o,openai\n")))
    with pytest.raises(MalformedFileError, match="line 2: empty model"):
        list(parse_model_usage(lines(header + ",openai,false,3,0\n")))


# ----------------------------------------------------------------- poisoned values (issue #14.3)


@pytest.mark.parametrize(
    ("requests", "cost", "reason", "column"),
    [
        ("3", "1e20", "out_of_range", "total_cost_usd"),
        ("3", "10000000.000001", "out_of_range", "total_cost_usd"),
        ("3", "0." + "0" * 60 + "1", "out_of_range", "total_cost_usd"),  # 61 decimals
        ("3", "1E-61", "out_of_range", "total_cost_usd"),
        ("3", "-0.5", "negative", "total_cost_usd"),
        ("3", "NaN", "not_a_number", "total_cost_usd"),
        ("3", "Infinity", "not_a_number", "total_cost_usd"),
        ("-1", "0.5", "negative", "requests"),
        ("1000000000001", "0.5", "out_of_range", "requests"),
        ("2.5", "0.5", "not_an_integer", "requests"),
        ("nan", "0.5", "not_a_number", "requests"),
    ],
)
def test_a_poisoned_value_leaves_its_row_out_and_the_rest_in(
    requests: str, cost: str, reason: str, column: str
) -> None:
    text = KEYS_HEADER + f"k1,app,gpt-4o,12,1.25\nk2,web,gpt-4o,{requests},{cost}\nk3,x,m,1,2\n"
    tally = Tally()
    rows = list(parse_key_usage(lines(text), grouped=True, tally=tally))
    assert [r.api_key_id for r in rows] == ["k1", "k3"]
    assert tally.records == 3 and tally.rejected == {reason: 1}
    (rejection,) = tally.examples
    assert (rejection.line, rejection.column, rejection.reason) == (3, column, reason)
    assert rejection.value == (cost if column == "total_cost_usd" else requests)
    assert str(rejection).startswith(f"line 3, column {column}: ")


def test_token_columns_are_bounded_too() -> None:
    text = (
        "api_key_id,model,requests,total_cost_usd,sum_prompt_tokens,sum_completion_tokens\n"
        "k1,m,1,0.1,-5,3\nk2,m,1,0.1,5,1e13\nk3,m,1,0.1,5,\n"
    )
    tally = Tally()
    assert [r.api_key_id for r in parse_key_usage(lines(text), grouped=True, tally=tally)] == ["k3"]
    assert tally.rejected == {"negative": 1, "out_of_range": 1}


def test_the_bounds_themselves_are_accepted() -> None:
    cost = "0." + "0" * 59 + "1"  # 60 decimals
    text = KEYS_HEADER + (
        f"k1,a,m,1000000000000,10000000\nk2,b,m,0,{cost}\nk3,c,m,1e3,1E-60\nk4,d,m,-0,$1.50\n"
        f"k5,e,m,1,0.5{'0' * 80}\n"  # trailing zeros past 60 places: still 0.5
    )
    tally = Tally()
    rows = list(parse_key_usage(lines(text), grouped=True, tally=tally))
    assert tally.rejected == {}
    assert [(r.requests, r.cost_usd) for r in rows] == [
        (10**12, Decimal(10_000_000)),
        (0, Decimal(cost)),
        (1000, Decimal("1E-60")),
        (0, Decimal("1.50")),
        (1, Decimal("0.5")),
    ]


def test_many_rejections_keep_ten_examples_and_count_all() -> None:
    text = KEYS_HEADER + "".join(f"k{i},n,m,1,-{i + 1}\n" for i in range(25)) + "ok,n,m,1,1\n"
    tally = Tally()
    assert len(list(parse_key_usage(lines(text), grouped=True, tally=tally))) == 1
    assert tally.records == 26 and tally.rejected == {"negative": 25}
    assert [r.line for r in tally.examples] == list(range(2, 12))


@pytest.mark.parametrize(
    ("cells", "reason", "column"),
    [
        ("150,1000", "out_of_range", "error_rate"),
        ("-0.1,1000", "negative", "error_rate"),
        ("0.1,NaN", "not_a_number", "avg_response_time_ms"),
        ("0.1,100000001", "out_of_range", "avg_response_time_ms"),
    ],
)
def test_models_export_bounds(cells: str, reason: str, column: str) -> None:
    text = (
        "name,provider,bring_your_keys,requests,error_rate,avg_response_time_ms\n"
        f"gpt-4o,openai,true,200,{cells}\nmistral,mistral,false,10,0.5,300\n"
    )
    tally = Tally()
    (row,) = parse_model_usage(lines(text), tally=tally)
    assert row.model == "mistral" and row.errors == Decimal(5)
    assert tally.rejected == {reason: 1} and tally.examples[0].column == column


# ----------------------------------------------------------------- folding rows (issue #14.5)


def test_sum_key_usage_folds_duplicates_exactly_with_the_last_name() -> None:
    rows = [
        KeyUsage("k1", "old", "m1", 1, Decimal("0.1"), 10, None),
        KeyUsage("k1", "old", "m2", 2, Decimal("0.2")),
        KeyUsage("k1", "new", "m1", 3, Decimal("1E-50"), 5, 7),
    ]
    exact = Decimal("0.10000000000000000000000000000000000000000000000001")  # not rounded
    assert sum_key_usage(rows) == [
        KeyUsage("k1", "new", "m1", 4, exact, 15, 7),
        KeyUsage("k1", "new", "m2", 2, Decimal("0.2")),
    ]


def test_sum_model_usage_weights_latency_by_requests() -> None:
    single = ModelUsage("b", "p", False, 3, None, response_time_ms=Decimal(7))
    rows = [
        ModelUsage(
            "a", "p", True, 100, Decimal(1), errors=Decimal(1), response_time_ms=Decimal(1000)
        ),
        single,
        ModelUsage("a", "p", True, 300, None, 5, errors=Decimal(2), response_time_ms=Decimal(2000)),
    ]
    merged, kept = sum_model_usage(rows)
    assert kept is single
    assert merged == ModelUsage(
        "a", "p", True, 400, Decimal(1), 5, errors=Decimal(3), response_time_ms=Decimal(1750)
    )


counts = st.none() | st.integers(0, 10**12)
key_rows = st.lists(
    st.tuples(
        st.sampled_from(["k1", "k2", "k3"]),
        st.sampled_from(["alpha", "beta"]),
        st.sampled_from(["m1", "m2", ""]),
        st.integers(0, 10**12),
        money,
        counts,
        counts,
        counts,
        counts,
        counts,
    ).map(lambda cells: KeyUsage(*cells)),
    max_size=30,
)


@settings(
    max_examples=examples(50), deadline=None
)  # two SQLite stores an example: 200 ms+ when busy
@given(key_rows)
def test_the_store_keeps_the_same_of_folded_and_unfolded_rows(rows: list[KeyUsage]) -> None:
    """What the client now hands the store (one row per key and model) stores exactly what
    the unfolded rows did: totals, tokens and key names."""
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    end = start + timedelta(hours=1)
    with tempfile.TemporaryDirectory() as tmp:
        stored = []
        for name, given_rows in (("raw", rows), ("folded", sum_key_usage(rows))):
            store = Store.open(Path(tmp) / f"{name}.db")
            try:
                store.replace_key_usage(start, end, given_rows, end)
                stored.append((store.key_model_totals(start, end), store.api_key_names()))
            finally:
                store.close()
    assert stored[0] == stored[1]
