"""The export client against the loopback simulator, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import IO
from zoneinfo import ZoneInfo

import pytest

from daemon.langdock import (
    AuthError,
    BadRequestError,
    DataError,
    LangdockClient,
    TransientError,
    export_body,
)
from daemon.langdock.csv import KeyUsage
from daemon.langdock.pacing import Pacer
from daemon.langdock.simulator import Fault, Simulator
from tests.conftest import API_KEY, NOW, FakeClock

HOUR = (NOW.replace(minute=0) - timedelta(hours=1), NOW.replace(minute=0))


def test_body_is_local_wall_clock_time_plus_zone() -> None:
    start = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 CET; 02:00 does not exist that day
    body = export_body(
        start, start + timedelta(hours=2), ZoneInfo("Europe/Berlin"), group_by="model"
    )
    assert body == {
        "from": {"date": "2026-03-29T01:00:00.000", "timezone": "Europe/Berlin"},
        "to": {"date": "2026-03-29T03:59:59.999", "timezone": "Europe/Berlin"},
        "group_by": "model",
    }


async def test_request_and_download_headers(client: LangdockClient, simulator: Simulator) -> None:
    rows = await client.key_usage(*HOUR)
    assert rows and all(r.model for r in rows)
    post, download = simulator.seen
    assert post.method == "POST" and post.path == "/export/api-keys"
    assert post.headers["authorization"] == f"Bearer {API_KEY}"
    assert post.headers["content-type"] == "application/json"
    assert "origin" not in post.headers
    assert post.body == {
        "from": {"date": "2026-11-20T09:00:00.000", "timezone": "UTC"},
        "to": {"date": "2026-11-20T09:59:59.999", "timezone": "UTC"},
        "group_by": "model",
    }
    assert download.method == "GET" and download.path.startswith("/download/")
    assert "authorization" not in download.headers, "the API key must never reach storage"


async def test_dedicated_deployment_base_url(simulator: Simulator, clock: FakeClock) -> None:
    async with LangdockClient(
        f"{simulator.base_url}/api/public", API_KEY, sleep=clock.sleep, clock=clock.mono
    ) as c:
        assert await c.model_usage(*HOUR)
    assert simulator.seen[0].path == "/api/public/export/models"


async def test_no_data_is_zero_rows(client: LangdockClient, simulator: Simulator) -> None:
    future = (NOW + timedelta(hours=2), NOW + timedelta(hours=3))
    assert await client.key_usage(*future) == []
    assert len(simulator.seen) == 1  # a 404 "No data found" needs no download


async def test_retry_after_is_honoured(
    client: LangdockClient, simulator: Simulator, clock: FakeClock
) -> None:
    simulator.faults.extend(
        [
            Fault(429, {"error": "Too many requests"}, {"Retry-After": "7"}),
            Fault(503, {"error": "busy"}),
        ]
    )
    assert await client.model_usage(*HOUR)
    assert clock.sleeps[0] == 7.0
    assert 1.0 <= clock.sleeps[1] <= 3.0  # exponential backoff (2 s) with jitter
    assert len(simulator.export_requests()) == 3


async def test_retries_are_bounded(client: LangdockClient, simulator: Simulator) -> None:
    simulator.faults.extend(Fault(500, {"error": "boom"}) for _ in range(10))
    with pytest.raises(TransientError) as err:
        await client.model_usage(*HOUR)
    assert err.value.reason == "server"
    assert "after 4 attempts" in str(err.value)
    assert len(simulator.export_requests()) == 4


async def test_a_hanging_request_times_out_and_is_retried(
    simulator: Simulator, clock: FakeClock
) -> None:
    simulator.faults.append(Fault(200, {}, delay=1.0))
    async with LangdockClient(
        simulator.base_url, API_KEY, timeout=0.2, max_retries=1, sleep=clock.sleep, clock=clock.mono
    ) as c:
        assert await c.model_usage(*HOUR)  # the retry gets the real answer
    assert len(simulator.export_requests()) == 2


async def test_bad_key_is_an_auth_error_without_the_key(
    simulator: Simulator, clock: FakeClock
) -> None:
    async with LangdockClient(
        simulator.base_url, "sk-wrong-key-123", sleep=clock.sleep, clock=clock.mono
    ) as c:
        with pytest.raises(AuthError) as err:
            await c.key_usage(*HOUR)
    assert "USAGE_EXPORT_API" in str(err.value)
    assert "sk-wrong-key-123" not in str(err.value)
    assert len(simulator.seen) == 1, "no retries on 401"


async def test_success_false_is_a_failure(client: LangdockClient, simulator: Simulator) -> None:
    simulator.faults.append(Fault(200, {"success": False, "error": "internal"}))
    with pytest.raises(DataError, match="success=false"):
        await client.key_usage(*HOUR)


async def test_other_400_is_not_retried(client: LangdockClient, simulator: Simulator) -> None:
    simulator.faults.append(Fault(400, {"error": "Unsupported source"}))
    with pytest.raises(BadRequestError, match="Unsupported source"):
        await client.model_usage(*HOUR)
    assert len(simulator.seen) == 1


async def test_export_too_large_is_split(client: LangdockClient, simulator: Simulator) -> None:
    day = (NOW - timedelta(days=1), NOW)
    whole = await client.key_usage(*day)
    simulator.seen.clear()
    too_large = {
        "error": "Export too large: 1500000 rows exceeds limit of 1000000. Please narrow"
        " the date range."
    }
    simulator.faults.extend([Fault(400, too_large), Fault(400, too_large)])
    parts = await client.key_usage(*day)
    bodies = [r.body for r in simulator.export_requests()]
    # whole day refused, first half refused, its two quarters, then the second half
    assert [b["from"]["date"] for b in bodies] == [
        "2026-11-19T10:30:00.000",
        "2026-11-19T10:30:00.000",
        "2026-11-19T10:30:00.000",
        "2026-11-19T16:30:00.000",
        "2026-11-19T22:30:00.000",
    ]
    assert bodies[-1]["to"]["date"] == "2026-11-20T10:29:59.999"
    summed: dict[tuple[str, str], int] = {}
    for row in parts:
        summed[(row.api_key_id, row.model)] = (
            summed.get((row.api_key_id, row.model), 0) + row.requests
        )
    assert summed == {(r.api_key_id, r.model): r.requests for r in whole}


async def test_expired_url_gets_one_fresh_export(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append("expire")
    assert await client.key_usage(*HOUR)
    assert len(simulator.export_requests()) == 2
    simulator.download_faults.extend(["expire", "expire"])
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "download_expired"


async def test_a_truncated_download_gets_a_fresh_export(
    client: LangdockClient, simulator: Simulator, clock: FakeClock
) -> None:
    simulator.download_faults.append("truncate")
    rows = await client.key_usage(*HOUR)
    assert len(rows) == 20  # 5 keys x 4 models, all of them
    posts = simulator.export_requests()
    downloads = [r.path for r in simulator.seen if r.method == "GET"]
    assert len(posts) == 2 and len(downloads) == 2 and downloads[0] != downloads[1]
    assert 0.5 <= clock.sleeps[0] <= 1.5  # backoff before the fresh export


async def test_a_download_truncated_every_time_fails_the_bucket_only(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.extend(["truncate"] * 4)
    with pytest.raises(DataError) as err:  # not TransientError: the poll goes on
        await client.key_usage(*HOUR)
    assert err.value.reason == "truncated"
    assert "announced" in str(err.value) and "after 4 attempts" in str(err.value)
    assert len(simulator.export_requests()) == 4


@pytest.mark.parametrize("fault", ["500", "drop", "429"])
async def test_a_failed_download_gets_a_fresh_export(
    fault: str, client: LangdockClient, simulator: Simulator, clock: FakeClock
) -> None:
    simulator.download_faults.append(fault)
    assert len(await client.model_usage(*HOUR)) == 4
    assert len(simulator.export_requests()) == 2
    if fault == "429":
        assert clock.sleeps == [3.0]  # the download's Retry-After
    else:
        assert len(clock.sleeps) == 1 and 0.5 <= clock.sleeps[0] <= 1.5


async def test_post_and_download_failures_share_one_retry_budget(
    client: LangdockClient, simulator: Simulator, clock: FakeClock
) -> None:
    # max_retries=3: four attempts in all, whichever step fails
    simulator.faults.extend([Fault(500, {"error": "boom"}), Fault(502, {"error": "bad gw"})])
    simulator.download_faults.append("500")
    assert await client.model_usage(*HOUR)
    assert len(simulator.export_requests()) == 4
    assert len(clock.sleeps) == 3 and 2.0 <= clock.sleeps[2] <= 6.0  # 4 s with jitter
    simulator.seen.clear()
    simulator.faults.extend([Fault(500, {"error": "boom"}), Fault(429, {"error": "slow"})])
    simulator.download_faults.extend(["drop", "500"])
    with pytest.raises(TransientError) as err:
        await client.model_usage(*HOUR)
    assert len(simulator.export_requests()) == 4
    assert err.value.reason == "download"
    assert "broke off" not in str(err.value) and "HTTP 500 after 4 attempts" in str(err.value)


@pytest.mark.parametrize("fault", ["garbage", "missing_column"])
async def test_a_file_that_does_not_parse_is_not_retried(
    fault: str, client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append(fault)
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "parse"
    assert len(simulator.export_requests()) == 1


async def test_a_redirecting_download_is_not_followed_nor_retried(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append("redirect")
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "download" and "not followed" in str(err.value)
    assert len(simulator.export_requests()) == 1
    assert not any("198.51.100.7" in r.path for r in simulator.seen)


async def test_errors_are_one_line_without_secrets(simulator: Simulator, clock: FakeClock) -> None:
    async with LangdockClient(
        simulator.base_url, API_KEY, max_retries=1, sleep=clock.sleep, clock=clock.mono
    ) as c:
        echo = f"upstream\nfailed for Bearer {API_KEY} at https://x.example/f.csv?signature=s3cr3t"
        simulator.faults.extend([Fault(503, {"error": echo}), Fault(503, {"error": echo})])
        with pytest.raises(TransientError) as err:
            await c.model_usage(*HOUR)
        message = str(err.value)
        assert "\n" not in message and API_KEY not in message and "s3cr3t" not in message
        assert "POST http://127.0.0.1:" in message and "/export/models" in message
        assert "https://x.example/f.csv" in message and "max_retries" in message
        simulator.download_faults.extend(["500", "500"])
        with pytest.raises(TransientError) as err:
            await c.model_usage(*HOUR)
        message = str(err.value)
        assert "\n" not in message and "signature=" not in message
        assert "/download/" in message and "storage" in message


async def test_every_post_is_paced_downloads_are_not(
    simulator: Simulator, clock: FakeClock
) -> None:
    async with LangdockClient(
        simulator.base_url, API_KEY, max_requests_per_minute=3, sleep=clock.sleep, clock=clock.mono
    ) as c:
        assert c.pacer.per_minute == 3
        simulator.faults.append(Fault(500, {"error": "boom"}))  # a retry: 2 POSTs, 1 download
        await c.model_usage(*HOUR)
        assert c.pacer.used() == 2 and c.pacer.waited == 0
        await c.model_usage(*HOUR)  # the third call of the minute
        before = clock.monotonic
        await c.model_usage(*HOUR)  # waits until the first POST is 60 s old
        assert clock.monotonic - before > 50.0
        assert c.pacer.waited == pytest.approx(clock.monotonic - before)


async def test_clients_share_one_pacer_and_keep_their_reserve(
    simulator: Simulator, clock: FakeClock
) -> None:
    pacer = Pacer(4, clock=clock.mono, sleep=clock.sleep)
    url = simulator.base_url
    async with (
        LangdockClient(url, API_KEY, pacer=pacer, sleep=clock.sleep) as poll,
        LangdockClient(url, API_KEY, pacer=pacer, reserve=2, sleep=clock.sleep) as backfill,
    ):
        assert poll.pacer is backfill.pacer is pacer
        await backfill.model_usage(*HOUR)
        await backfill.model_usage(*HOUR)
        assert clock.sleeps == []
        await poll.model_usage(*HOUR)
        await poll.model_usage(*HOUR)  # the reserve is the poll's
        assert clock.sleeps == [] and pacer.used() == 4
        await backfill.model_usage(*HOUR)  # room only when 3 calls have left the window
        assert clock.sleeps == [pytest.approx(60.0)]


# ------------------------------------------------- damaged files, poisoned values, size (#14)


@pytest.mark.parametrize("fault", ["short_row", "stray_quote"])
async def test_a_damaged_record_gets_a_fresh_export(
    fault: str, client: LangdockClient, simulator: Simulator, clock: FakeClock
) -> None:
    """The last row cut short or mangled by a stray quote: as many rows as `recordCount`
    says, but not data. A fresh export, after backoff, brings the whole file."""
    simulator.download_faults.append(fault)
    rows = await client.key_usage(*HOUR)
    assert len(rows) == 20 and all(r.cost_usd > 0 for r in rows)
    assert len(simulator.export_requests()) == 2 and len(clock.sleeps) == 1
    assert client.rejected == {}


async def test_a_file_damaged_every_time_fails_the_bucket_only(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.extend(["short_row"] * 4)
    with pytest.raises(DataError) as err:  # not TransientError: the poll goes on
        await client.model_usage(*HOUR)
    message = str(err.value)
    assert err.value.reason == "malformed" and "\n" not in message
    assert "line 5: 7 cells where the header has 15 (a row cut short or a stray quote)" in message
    assert "after 4 attempts" in message and "signature=" not in message
    assert len(simulator.export_requests()) == 4


async def test_a_poisoned_value_is_left_out_counted_and_named(
    client: LangdockClient, simulator: Simulator
) -> None:
    from structlog.testing import capture_logs

    simulator.download_faults.append("poison")  # the last row's cost: 1e20
    with capture_logs() as logs:
        rows = await client.key_usage(*HOUR)
    assert len(rows) == 19 and len(simulator.export_requests()) == 1  # counted, not short
    assert client.rejected == {("api-keys", "out_of_range"): 1}
    span = f"{HOUR[0].isoformat()}/{HOUR[1].isoformat()}"
    (event,) = [e for e in logs if e["event"] == "export_row_rejected"]
    assert {k: event[k] for k in ("export", "range", "line", "column", "value", "reason")} == {
        "export": "api-keys",
        "range": span,
        "line": 21,
        "column": "total_cost_usd",
        "value": "1e20",
        "reason": "out_of_range",
    }
    assert client.take_rejections() == [
        f"api-keys export {span}: line 21, column total_cost_usd: '1e20' is out of range"
        " (allowed: 0 to 10,000,000 USD, at most 60 decimals); row left out"
    ]
    assert client.take_rejections() == []
    simulator.download_faults.append("poison:error_count=-2")
    assert len(await client.model_usage(*HOUR)) == 3
    assert client.rejected[("models", "negative")] == 1


async def test_a_secret_in_a_damaged_cell_is_not_repeated(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.extend([f"poison:total_cost_usd={API_KEY}"] * 4)
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "malformed" and "is not a number" in str(err.value)
    assert API_KEY not in str(err.value) and "'[redacted]'" in str(err.value)


@pytest.mark.parametrize(
    ("fault", "how"),
    [("oversized", "it announces"), ("oversized_unannounced", "counted while downloading")],
)
async def test_a_file_past_the_size_limit_is_refused(
    fault: str, how: str, simulator: Simulator, clock: FakeClock
) -> None:
    async with LangdockClient(
        simulator.base_url, API_KEY, max_download_bytes=1 << 20, sleep=clock.sleep
    ) as c:
        assert await c.key_usage(*HOUR)  # a normal file is far below 1 MiB
        simulator.download_faults.append(fault)  # the same rows padded to over 2 MiB
        with pytest.raises(DataError) as err:
            await c.key_usage(*HOUR)
    message = str(err.value)
    assert err.value.reason == "download_too_large" and "\n" not in message
    assert "larger than langdock.max_download_bytes (1,048,576 bytes;" in message
    assert how in message and "raise langdock.max_download_bytes in the config" in message
    assert len(simulator.export_requests()) == 2  # not retried: a fresh export is as large


@pytest.mark.long
async def test_download_and_parse_keep_memory_flat_in_the_file_size() -> None:
    """A 21 MB export (50,000 rows of 2,100 keys and models, generated as it is sent) through
    the real download path: spooled to disk past 8 MiB, parsed as a stream, folded per key
    and model. The peak is the spool's 8 MiB and little more, whatever the file's size (the
    file held whole would pass 12 MiB, the rows as a list take about 15 MB more).

    The keys' names are long (about 250 characters, as a team's description of a key may
    be): tracing every allocation makes each row cost about 50 us, so the 21 MB come in half
    the rows of short names (the peak, a chunk of records in cells, stays under 11 MB)."""
    import tracemalloc

    import httpx

    from daemon.langdock.csv import Tally, parse_key_usage, sum_key_usage
    from daemon.langdock.download import download_file

    rows = 50_000
    header = (
        b"period_start,period_end,org_id,api_key_id,api_key_name,model,requests,total_cost_usd,"
        b"sum_prompt_tokens,sum_completion_tokens,cached_prompt_tokens,cache_creation_tokens,"
        b"no_cache_tokens\r\n"
    )
    name = b"%d team production integration key" + b" for the nightly batch jobs" * 8
    row = (
        b"2026-11-20T09:00:00.000Z,2026-11-20T09:59:59.999Z,9f8e7d6c-5b4a-4321-8fed-cba98765,"
        b"3c0ffee0-%04d-4abc-9def-0123456789ab," + name + b","
        b"claude-sonnet-4-%d,%d,0.%09d,%d,%d,0,0,%d\r\n"
    )

    sent: list[int] = []  # the size of each piece of the body, as it is sent

    async def body() -> AsyncIterator[bytes]:
        sent.append(len(header))
        yield header
        for start in range(0, rows, 1000):
            piece = b"".join(
                row % (i % 300, i % 300, i % 7, i % 50 + 1, i % 9973, i + 100, i % 300, i + 100)
                for i in range(start, start + 1000)
            )
            sent.append(len(piece))
            yield piece

    def parse(stream: IO[str], tally: Tally) -> list[KeyUsage]:
        return sum_key_usage(parse_key_usage(stream, grouped=True, tally=tally))

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        tracemalloc.start()
        try:
            file = await download_file(
                http, "https://storage.example/f.csv", "api-keys", parse, record_count=rows
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    size = sum(sent)
    assert size > 20_000_000 and file.tally.records == rows and len(file.rows) == 2100
    assert sum(r.requests for r in file.rows) == sum(i % 50 + 1 for i in range(rows))
    assert peak < 12 * 1024 * 1024, f"peak {peak:,} bytes for a {size:,}-byte file"
