"""CSV parsing: header aliases, BOM, CRLF, quoting, empty cells, clear errors."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.exports import ExportFormatError, KeyUsage, parse_key_usage, parse_model_usage


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


def test_bad_number_names_line_and_column() -> None:
    text = "api_key_id,requests,total_cost_usd\nk1,1,0.1\nk2,many,0.2\n"
    with pytest.raises(ExportFormatError, match="line 3: column requests: 'many' is not a number"):
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
money = st.decimals(min_value=0, max_value=10**9, places=10, allow_nan=False, allow_infinity=False)


@given(
    st.lists(
        st.tuples(
            st.text("abcdef0123456789_", min_size=1, max_size=12),
            names,
            names.filter(lambda s: s.strip() == s and s != ""),
            st.integers(0, 10**9),
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
