"""The export client against the loopback simulator, over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from daemon.langdock import (
    AuthError,
    BadRequestError,
    DataError,
    LangdockClient,
    TokenBucket,
    TransientError,
    export_body,
)
from daemon.simulator import Fault, Simulator
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


async def test_truncated_download_is_a_failed_fetch(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append("truncate")
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "truncated"
    assert "announced" in str(err.value)


async def test_garbage_download_is_a_parse_failure(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append("garbage")
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert err.value.reason == "parse"


async def test_signed_url_query_is_not_in_errors(
    client: LangdockClient, simulator: Simulator
) -> None:
    simulator.download_faults.append("500")
    with pytest.raises(DataError) as err:
        await client.key_usage(*HOUR)
    assert "signature=" not in str(err.value) and "/download/" in str(err.value)


async def test_token_bucket_paces_requests() -> None:
    clock = FakeClock()
    bucket = TokenBucket(30, burst=3, clock=clock.mono, sleep=clock.sleep)
    for _ in range(9):
        await bucket.acquire()
    # 3 immediately, then one every 2 s (30 a minute)
    assert clock.sleeps == pytest.approx([2.0] * 6)
    assert clock.monotonic - 1000.0 == pytest.approx(12.0)


async def test_client_paces_against_the_simulator(simulator: Simulator, clock: FakeClock) -> None:
    async with LangdockClient(
        simulator.base_url, API_KEY, max_requests_per_minute=30, sleep=clock.sleep, clock=clock.mono
    ) as c:
        for _ in range(5):
            await c.model_usage(*HOUR)
    assert sum(clock.sleeps) == pytest.approx(4.0)
