"""Async client for Langdock's Usage Export API (SPEC §1).

One export = ``POST {base}/export/{type}`` (bearer auth, JSON body with wall-clock dates and
their zone) answered with a signed ``downloadUrl``; the CSV behind it is fetched by a second
HTTP client that never carries the API key, streamed to a spooled temporary file, parsed, and
checked against ``recordCount`` before anything is returned. The caller gets all rows of a
range or an exception: never a partial result.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import random
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import IO, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import certifi
import httpx

from daemon import __version__
from daemon.exports import (
    ExportFormatError,
    KeyUsage,
    ModelUsage,
    parse_key_usage,
    parse_model_usage,
)

ExportKind = Literal["api-keys", "models"]
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
T = TypeVar("T")

_UTC_ZONE = ZoneInfo("UTC")
_MAX_BACKOFF = 120.0
_MAX_RETRY_AFTER = 300.0
_SPOOL_BYTES = 8 * 1024 * 1024


class LangdockError(Exception):
    """A failed export; ``reason`` is a short metric label, the message says what to do."""

    reason = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthError(LangdockError):
    reason = "auth"


class BadRequestError(LangdockError):
    reason = "bad_request"


class TransientError(LangdockError):
    """Retries were exhausted on 429, 5xx, timeouts or connection errors."""


class DataError(LangdockError):
    """The export answered, but its file is unusable (truncated, malformed, short)."""


class _TooLarge(Exception):
    pass


class _UrlExpired(Exception):
    pass


@dataclass(frozen=True)
class _ExportInfo:
    download_url: str
    record_count: int | None


class TokenBucket:
    """Client-side pacing: at most ``per_minute`` requests a minute, ``burst`` at once."""

    def __init__(
        self,
        per_minute: float,
        burst: int = 3,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = asyncio.Lock()
        self.waited = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
                if self.tokens >= 1 - 1e-9:  # tolerate float rounding of the refill
                    self.tokens = max(0.0, self.tokens - 1)
                    return
                wait = (1 - self.tokens) / self.rate
                self.waited += wait
                await self._sleep(wait)


def wall_clock(instant: datetime, zone: ZoneInfo) -> str:
    """``instant`` as the wall-clock text Langdock reads in ``zone`` (no offset, no ``Z``)."""
    local = instant.astimezone(zone)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def export_body(start: datetime, end: datetime, zone: ZoneInfo, **extra: str) -> dict[str, object]:
    """The JSON body for [start, end): Langdock's ``to`` is inclusive, so send end - 1 ms."""
    last = end - timedelta(milliseconds=1)
    return {
        "from": {"date": wall_clock(start, zone), "timezone": zone.key},
        "to": {"date": wall_clock(last, zone), "timezone": zone.key},
        **extra,
    }


def export_endpoint(base_url: str, kind: ExportKind) -> str:
    return f"{base_url.rstrip('/')}/export/{kind}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), _MAX_RETRY_AFTER)


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200].strip()
    if isinstance(payload, dict):
        for key in ("error", "message", "detail"):
            if payload.get(key):
                return str(payload[key])[:300]
    return str(payload)[:200]


def _safe_url(url: str) -> str:
    """A signed URL without its query (the signature is a credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client of the process: loading the CA bundle
    takes tens of milliseconds, and the daemon makes a client per cycle."""
    return ssl.create_default_context(cafile=certifi.where())


class LangdockClient:
    """Fetches exports with pacing, bounded retries, splitting and download checks."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_requests_per_minute: float = 30.0,
        max_retries: int = 5,
        request_zone: ZoneInfo = _UTC_ZONE,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_zone = request_zone
        self.max_retries = max_retries
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.bucket = TokenBucket(max_requests_per_minute, clock=clock, sleep=sleep)
        headers = {"User-Agent": f"langdock-budget/{__version__}", "Accept": "application/json"}
        tls = _tls_context()
        self._api = httpx.AsyncClient(
            timeout=timeout,
            headers={**headers, "Authorization": f"Bearer {api_key}"},
            follow_redirects=False,
            verify=tls,
        )
        # The signed download URL must never see the API key: a separate client, no auth.
        self._download = httpx.AsyncClient(
            timeout=timeout,
            headers={"User-Agent": headers["User-Agent"]},
            follow_redirects=False,
            verify=tls,
        )
        self.requests_sent = 0

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._download.aclose()

    async def __aenter__(self) -> LangdockClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public API

    async def key_usage(self, start: datetime, end: datetime) -> list[KeyUsage]:
        """Per (API key, model) usage over [start, end): ``/export/api-keys``, grouped by model."""

        def parse(stream: IO[str]) -> list[KeyUsage]:
            return list(parse_key_usage(stream, grouped=True))

        return await self._export("api-keys", start, end, parse, group_by="model")

    async def model_usage(self, start: datetime, end: datetime) -> list[ModelUsage]:
        """Per model usage over [start, end): ``/export/models``."""

        def parse(stream: IO[str]) -> list[ModelUsage]:
            return list(parse_model_usage(stream))

        return await self._export("models", start, end, parse)

    # ------------------------------------------------------------------ internals

    async def _export(
        self,
        kind: ExportKind,
        start: datetime,
        end: datetime,
        parse: Callable[[IO[str]], list[T]],
        **extra: str,
    ) -> list[T]:
        try:
            return await self._export_once(kind, start, end, parse, extra)
        except _TooLarge:
            if end - start <= timedelta(minutes=1):
                raise BadRequestError(
                    f"{kind} export: Langdock says the export is too large even for one minute"
                    f" ({start.isoformat()}); nothing can be narrowed further",
                ) from None
            middle = start + (end - start) / 2
            middle = middle.replace(microsecond=(middle.microsecond // 1000) * 1000)
            first = await self._export(kind, start, middle, parse, **extra)
            return first + await self._export(kind, middle, end, parse, **extra)

    async def _export_once(
        self,
        kind: ExportKind,
        start: datetime,
        end: datetime,
        parse: Callable[[IO[str]], list[T]],
        extra: dict[str, str],
    ) -> list[T]:
        body = export_body(start, end, self.request_zone, **extra)
        for fresh_url_attempt in range(2):
            info = await self._request_export(kind, body)
            if info is None:
                return []
            try:
                return await self._download_rows(kind, info, parse)
            except _UrlExpired:
                if fresh_url_attempt == 1:
                    raise DataError(
                        f"{kind} export: the signed download URL was refused twice (expired or"
                        " forbidden); check the machine clock and retry next poll",
                        reason="download_expired",
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_export(
        self, kind: ExportKind, body: dict[str, object]
    ) -> _ExportInfo | None:
        url = export_endpoint(self.base_url, kind)
        last_problem = ""
        reason = "server"
        for attempt in range(self.max_retries + 1):
            await self.bucket.acquire()
            self.requests_sent += 1
            wait: float | None = None
            try:
                response = await self._api.post(url, json=body)
            except httpx.TimeoutException:
                reason, last_problem = "timeout", "timed out"
            except httpx.TransportError as exc:
                reason, last_problem = "connect", f"connection failed ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    return self._parse_info(kind, response)
                text = _error_text(response)
                if status == 404 and "no data" in text.lower():
                    return None
                if status == 400 and "too large" in text.lower():
                    raise _TooLarge(text)
                if status in (401, 403):
                    raise AuthError(
                        f"{kind} export: HTTP {status} ({text}): the Langdock API key is wrong or"
                        " lacks the USAGE_EXPORT_API scope; create one as a workspace admin"
                    )
                if status == 429 or status >= 500:
                    reason = "rate_limited" if status == 429 else "server"
                    last_problem = f"HTTP {status} ({text})"
                    wait = _retry_after(response)
                else:
                    hint = (
                        "check langdock.base_url (a dedicated deployment ends in /api/public)"
                        if status == 404
                        else "this is a bug or an API change; please report it"
                    )
                    raise BadRequestError(f"{kind} export: HTTP {status} ({text}); {hint}")
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = min(_MAX_BACKOFF, 2.0**attempt) * self._rng.uniform(0.5, 1.5)
            await self._sleep(wait)
        raise TransientError(
            f"{kind} export: {last_problem} after {self.max_retries + 1} attempts;"
            " will retry next poll",
            reason=reason,
        )

    def _parse_info(self, kind: ExportKind, response: httpx.Response) -> _ExportInfo:
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(
                f"{kind} export: HTTP 200 but the body is not JSON", "bad_response"
            ) from None
        if not isinstance(payload, dict) or payload.get("success") is not True:
            detail = _error_text(response)
            raise DataError(
                f"{kind} export: Langdock answered success=false ({detail})", "unsuccessful"
            )
        data = payload.get("data") or {}
        url = data.get("downloadUrl") if isinstance(data, dict) else None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise DataError(f"{kind} export: the answer has no usable downloadUrl", "bad_response")
        count = data.get("recordCount")
        return _ExportInfo(
            url, int(count) if isinstance(count, int | str) and str(count).isdigit() else None
        )

    async def _download_rows(
        self, kind: ExportKind, info: _ExportInfo, parse: Callable[[IO[str]], list[T]]
    ) -> list[T]:
        where = _safe_url(info.download_url)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            try:
                async with self._download.stream("GET", info.download_url) as response:
                    if response.status_code in (401, 403, 410) or (
                        response.status_code == 400 and b"expired" in await response.aread()
                    ):
                        raise _UrlExpired()
                    if response.status_code != 200:
                        raise DataError(
                            f"{kind} export: download from {where} failed with HTTP"
                            f" {response.status_code}; will retry next poll",
                            "download",
                        )
                    async for chunk in response.aiter_bytes():
                        spool.write(chunk)
            except httpx.HTTPError as exc:
                raise DataError(
                    f"{kind} export: download from {where} broke off ({type(exc).__name__});"
                    " nothing stored, will retry next poll",
                    "download",
                ) from None
            spool.seek(0)
            text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="")
            try:
                rows = parse(text)
            except ExportFormatError as exc:
                raise DataError(f"{exc}; nothing stored", "parse") from None
            except UnicodeDecodeError:
                raise DataError(
                    f"{kind} export: the file is not UTF-8 text; nothing stored", "parse"
                ) from None
            finally:
                text.detach()
        if info.record_count is not None and len(rows) != info.record_count:
            raise DataError(
                f"{kind} export: file has {len(rows)} rows but Langdock announced"
                f" {info.record_count} (truncated download); nothing stored, will retry",
                "truncated",
            )
        return rows
