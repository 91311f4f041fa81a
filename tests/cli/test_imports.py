"""`import FILE.csv`: exact pricing, bad rows, buckets, and reconciliation with the API."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.cli.app import main
from daemon.importer import read_calls
from daemon.langdock.simulator import Simulator
from daemon.store import Store
from tests.conftest import API_KEY
from tests.properties import examples

HEADER = [
    "Date",
    "API Key ID",
    "API Key Name",
    "Provider",
    "Model",
    "Input Tokens",
    "Output Tokens",
    "Completion Time (ms)",
    "Input Token Price (USD/1M tokens)",
    "Output Token Price (USD/1M tokens)",
]
START = datetime(2026, 11, 18, tzinfo=UTC)
END = datetime(2026, 11, 20, 10, tzinfo=UTC)


def test_spec_example_is_priced_exactly() -> None:
    text = (
        ",".join(HEADER) + "\n2026-11-20 10:15:00,k1,prod,openai,gpt-4o,500,1200,900,2.50,10.00\n"
    )
    result = read_calls(text.encode(), ZoneInfo("UTC"))
    (((start, key, model), (cost, calls, inp, out)),) = result.buckets.items()
    assert (start, key, model) == (datetime(2026, 11, 20, 10, tzinfo=UTC), "k1", "gpt-4o")
    assert cost == Decimal("0.01325") and (calls, inp, out) == (1, 500, 1200)


def test_bad_rows_are_skipped_with_line_numbers_or_stop_with_strict(tmp_path: Path) -> None:
    text = (
        ",".join(HEADER) + "\n"
        "2026-11-20T10:00:00Z,k1,a,p,m,10,20,5,1,2\n"
        "not a date,k1,a,p,m,10,20,5,1,2\n"
        "2026-11-20T10:05:00Z,k1,a,p,m,ten,20,5,1,2\n"
    )
    result = read_calls(text.encode(), ZoneInfo("UTC"))
    assert result.rows == 1 and result.skipped == 2
    assert result.errors[0].startswith("line 3: column 'Date': 'not a date' is not a date")
    assert result.errors[1] == "line 4: column 'Input Tokens': 'ten' is not a whole number"
    path = tmp_path / "calls.csv"
    path.write_text(text)
    (tmp_path / "c.yaml").write_text("langdock: {api_key: x}\nstate: {path: s.db}\n")
    assert main(["import", "--config", str(tmp_path / "c.yaml"), "--strict", str(path)]) == 2
    path.write_text("Date,Model\n2026-11-20,m\n")
    assert main(["import", "--config", str(tmp_path / "c.yaml"), str(path)]) == 2


def per_call_csv(sim: Simulator, path: Path, tamper: bool = False) -> None:
    """One row per (key, model, hour) carrying that hour's tokens: the simulator's costs."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        hour = START
        while hour < END:
            for ki, key in enumerate(sim.keys):
                for mi, model in enumerate(sim.models):
                    use = sim.pair_usage(ki, mi, hour, hour + timedelta(hours=1))
                    if not use["requests"]:
                        continue
                    prompt = use["prompt"] + (
                        1_000_000
                        if tamper and ki == 0 and hour.day == 19 and hour.hour == 12
                        else 0
                    )
                    writer.writerow(
                        [
                            (hour + timedelta(minutes=7)).isoformat(),
                            key.id,
                            key.name,
                            model.provider,
                            model.name,
                            prompt,
                            use["completion"],
                            model.latency_ms,
                            model.input_price,
                            model.output_price,
                        ]
                    )
            hour += timedelta(hours=1)


def test_import_and_reconcile(
    tmp_path: Path, simulator: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"langdock: {{base_url: '{simulator.base_url}', api_key: '{API_KEY}',"
        " max_requests_per_minute: 250}\ntimezone: UTC\nstate: {path: s.db}\n"
    )
    path = tmp_path / "calls.csv"
    per_call_csv(simulator, path)
    assert main(["import", "--config", str(config), "--reconcile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "58 hourly buckets written" in out
    assert "reconciling 3 days" in out and "0 difference(s) above 0.01 USD" in out
    store = Store.open(tmp_path / "s.db")
    day = store.key_model_totals(
        datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    )
    assert sum(t.cost_usd for t in day) > 0
    assert store.fetched_segments("api-keys", START) == {}  # the poller still fetches these
    store.close()
    per_call_csv(simulator, path, tamper=True)
    assert main(["import", "--config", str(config), "--reconcile", str(path)]) == 1
    out = capsys.readouterr().out
    # 1M extra input tokens on each of the four models: $2.50 + $3.00 + $2.00 + $0.02
    assert "2026-11-19 key_4f1a9c: file $" in out and "difference $7.52" in out
    assert "1 difference(s) above 0.01 USD" in out


def reference(rows: list[list[str]], tz: ZoneInfo) -> dict[tuple[datetime, str, str], tuple]:
    """The per-call pricing rule, row by row in plain Python (what read_calls must equal)."""
    from daemon.rules.windows import bucket_start

    out: dict[tuple[datetime, str, str], list] = {}
    for date, key, _name, _provider, model, inp, outp, _lat, pin, pout in rows:
        when = datetime.fromisoformat(date.replace("Z", "+00:00"))
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        cost = (int(inp) * Decimal(pin) + int(outp) * Decimal(pout)) / 1_000_000
        group = out.setdefault((bucket_start(when, tz), key, model), [Decimal(0), 0, 0, 0])
        group[0] += cost
        group[1] += 1
        group[2] += int(inp)
        group[3] += int(outp)
    return {k: tuple(v) for k, v in out.items()}


def as_csv(rows: list[list[str]]) -> bytes:
    handle = io.StringIO()
    csv.writer(handle).writerows([HEADER, *rows])
    return handle.getvalue().encode()


@settings(max_examples=examples(40), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * 24 * 60 - 1),  # minute of a three-day span
            st.sampled_from(["plain", "T", "Z", "offset"]),
            st.sampled_from(["k1", "k2", "key, with comma"]),
            st.sampled_from(["gpt-4o", "claude"]),
            st.integers(0, 10**9),
            st.integers(0, 10**6),
            st.sampled_from(["2.50", "0.0000001", "15", "0", "3.141592653589793"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(["UTC", "Asia/Kolkata", "Europe/Berlin", "Australia/Lord_Howe"]),
)
def test_grouping_and_pricing_equal_a_row_by_row_reference(
    calls: list[tuple[int, str, str, str, int, int, str]], zone: str
) -> None:
    tz = ZoneInfo(zone)
    base = datetime(2026, 10, 24, 12, tzinfo=UTC)  # Berlin and Lord Howe change clocks
    rows = []
    for minute, style, key, model, inp, outp, price in calls:
        when = base + timedelta(minutes=minute, seconds=17)
        date = {
            "plain": f"{when:%Y-%m-%d %H:%M:%S}",
            "T": f"{when:%Y-%m-%dT%H:%M:%S}.250",
            "Z": f"{when:%Y-%m-%dT%H:%M:%S}Z",
            "offset": when.astimezone(ZoneInfo("America/St_Johns")).isoformat(),
        }[style]
        rows.append([date, key, "n", "p", model, str(inp), str(outp), "1", price, "10.00"])
    result = read_calls(as_csv(rows), tz)
    assert result.rows == len(rows) and result.skipped == 0
    assert result.buckets == reference(rows, tz)
    instants = [base + timedelta(minutes=m, seconds=17) for m, *_ in calls]
    assert result.first is not None and result.last is not None
    assert result.first <= min(instants) < result.first + timedelta(minutes=1)
    assert result.last <= max(instants) < result.last + timedelta(minutes=1)


def test_names_blank_lines_and_kolkata_half_hours() -> None:
    text = (
        ",".join(HEADER) + "\n"
        "2026-11-20 10:15:00,k1,old name,p,m,1,0,1,1,0\n"
        "\n"
        ",,,,,,,,,\n"
        '2026-11-20 10:45:00,k1,"new, name",p,m,1,0,1,1,0\n'
        "2026-11-20 10:50:00,k1,,p,m,1,0,1,1,0\n"
    )
    result = read_calls(text.encode(), ZoneInfo("Asia/Kolkata"))
    assert result.rows == 3 and result.skipped == 0
    assert result.names == {"k1": "new, name"}
    # local 15:45 and 16:15/16:20 are different local hours: buckets at 09:30 and 10:30 UTC
    assert sorted(
        (start.hour, start.minute, v[1]) for (start, _, _), v in result.buckets.items()
    ) == [
        (9, 30, 1),
        (10, 30, 2),
    ]


def test_without_polars_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from daemon.importer import ImportFileError

    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ImportFileError, match=r"reinstall langdock-budget, or pip install 'polars"):
        read_calls(b"Date\n", ZoneInfo("UTC"))


ROW = "2026-11-20 10:15:00,k1,prod,openai,gpt-4o,500,1200,900,2.50,10.00\n"


@pytest.mark.parametrize(
    ("third_line", "message"),
    [
        (
            b"2026-11-20 10:15:00,k1,prod,openai,gpt\xff-4o,500,1200,900,2.50,10.00\n",
            "line 3: column 'Model': b'gpt\\xff-4o' is not UTF-8; save the file as UTF-8",
        ),
        (  # a column the import does not even read
            b"2026-11-20 10:15:00,k1,prod,open\xc3ai,gpt-4o,500,1200,900,2.50,10.00\n",
            "line 3: column 'Provider': b'open\\xc3ai' is not UTF-8",
        ),
        (
            b'2026-11-20 10:15:00,k1,pr"od,openai,gpt-4o,500,1200,900,2.50,10.00\n',
            "line 3: column 'API Key Name': a stray double quote in 'pr\"od'",
        ),
        (
            b'2026-11-20 10:15:00,k1,prod,openai,gpt-4o,500,1200,900,"2.50,10.00\n' + ROW.encode(),
            "line 3: column 'Input Token Price (USD/1M tokens)': unexpected end of data",
        ),
        (
            b'2026-11-20 10:15:00,k1,"prod"x,openai,gpt-4o,500,1200,900,2.50,10.00\n',
            "line 3: column 'API Key Name': ',' expected after '\"'",
        ),
    ],
)
def test_an_unreadable_cell_names_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], third_line: bytes, message: str
) -> None:
    from daemon.importer import ImportFileError

    data = (",".join(HEADER) + "\n" + ROW).encode() + third_line
    with pytest.raises(ImportFileError, match="unreadable: " + re.escape(message)):
        read_calls(data, ZoneInfo("UTC"))
    path = tmp_path / "calls.csv"
    path.write_bytes(data)
    (tmp_path / "c.yaml").write_text("langdock: {api_key: x}\nstate: {path: s.db}\n")
    assert main(["import", "--config", str(tmp_path / "c.yaml"), str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_cell_in_a_readable_file_names_its_column() -> None:
    text = ",".join(HEADER) + "\n" + ROW + ROW.replace(",10.00", ",ten").replace(",k1,", ",,")
    result = read_calls(text.encode(), ZoneInfo("UTC"))
    assert result.errors == ["line 3: column 'API Key ID' is empty"]
    text = ",".join(HEADER) + "\n" + ROW + ROW.replace(",10.00", ",ten")
    (error,) = read_calls(text.encode(), ZoneInfo("UTC")).errors
    assert error.startswith("line 3: column 'Output Token Price (USD/1M tokens)': 'ten' is not")
    text = ",".join(HEADER) + "\n" + ROW + ROW.replace(",500,", ",-5,")
    (error,) = read_calls(text.encode(), ZoneInfo("UTC")).errors
    assert error == "line 3: column 'Input Tokens': '-5' is negative"
    bad_header = b"Date,API Key \xffID\n"
    with pytest.raises(ValueError, match=r"line 1 \(the header\) is not UTF-8"):
        read_calls(bad_header, ZoneInfo("UTC"))
