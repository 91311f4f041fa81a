"""Async client for Langdock's Usage Export API (SPEC §1).

One export = ``POST {base}/export/{type}`` (bearer auth, JSON body with wall-clock dates and
their zone) answered with a signed ``downloadUrl``; the CSV behind it is fetched by a second
HTTP client that never carries the API key, streamed to a spooled temporary file, parsed, and
checked against ``recordCount`` before anything is returned. The caller gets all rows of a
range or an exception: never a partial result.

Retries (tenacity, ``docs/DESIGN.md`` "Retries"): one export may be tried
``max_retries + 1`` times in all. An attempt is a POST and its download; a 429, a 5xx, a
timeout or a broken connection on either, or a file shorter than ``recordCount``, fails the
attempt, and the next one starts with a fresh export (new POST, new ``downloadUrl``) after a
backoff (``Retry-After`` when given, else exponential with jitter). An expired signed URL gets
one fresh export at once. Auth errors, bad requests and files that do not parse are not
retried. Every POST passes the shared ``Pacer``; downloads go to storage, not to the API, and
do not.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import random
import re
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import IO, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import certifi
import httpx
import structlog
import tenacity

from daemon import __version__
from daemon.exports import (
    ExportFormatError,
    KeyUsage,
    ModelUsage,
    parse_key_usage,
    parse_model_usage,
)
from daemon.pacing import Clock, Pacer, Sleep

__all__ = [
    "AuthError",
    "BadRequestError",
    "Clock",
    "DataError",
    "ExportKind",
    "LangdockClient",
    "LangdockError",
    "Pacer",
    "Sleep",
    "TransientError",
    "export_body",
    "export_endpoint",
    "wall_clock",
]

ExportKind = Literal["api-keys", "models"]
T = TypeVar("T")

_UTC_ZONE = ZoneInfo("UTC")
_MAX_BACKOFF = 120.0
_MAX_RETRY_AFTER = 300.0
_SPOOL_BYTES = 8 * 1024 * 1024
_URL_QUERY = re.compile(r"(https?://[^\s?#]+)[?#]\S*")
log = structlog.get_logger("langdock_budget.langdock")


async def default_sleep(seconds: float) -> None:
    """The client's sleep when none is given; looked up when a client is made, so a test
    that runs the real command line can replace it (``monkeypatch.setattr``)."""
    await asyncio.sleep(seconds)


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
    """Retries were exhausted on 429, 5xx, timeouts or broken connections (of the export
    POST or of the download): Langdock or its storage is unavailable; the poll stops."""


class DataError(LangdockError):
    """The export answered, but its file is unusable (malformed, short after every retry)."""


class _TooLarge(Exception):
    pass


class _Retry(Exception):
    """One attempt failed in a way a fresh export may fix (internal: tenacity retries it).

    ``problem`` says what failed and where (no secrets), ``fix`` what happens or what to do
    when no attempt is left; ``final`` is the error raised then. ``wait`` overrides the
    backoff (``Retry-After``; 0 for an expired URL).
    """

    def __init__(
        self,
        reason: str,
        problem: str,
        fix: str,
        *,
        final: type[LangdockError] = TransientError,
        wait: float | None = None,
    ) -> None:
        super().__init__(problem)
        self.reason, self.problem, self.fix = reason, problem, fix
        self.final, self.wait = final, wait


@dataclass(frozen=True)
class _ExportInfo:
    download_url: str
    record_count: int | None


@dataclass
class _Attempts:
    """What the attempts of one export have seen so far."""

    expired: int = 0


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


def one_line(text: str) -> str:
    """``text`` on one line, every URL without its query (a signed URL's query is its
    signature): for error messages built from what a server or a file said."""
    return _URL_QUERY.sub(r"\1", " ".join(text.split()))


def _error_text(response: httpx.Response, secret: str = "") -> str:
    """What an error answer says, on one line, short, without ``secret`` or URL queries (the
    secret is removed before anything is cut, so no part of it can be left)."""
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raw, limit = response.text, 200
    else:
        raw, limit = str(payload), 200
        if isinstance(payload, dict):
            for key in ("error", "message", "detail"):
                if payload.get(key):
                    raw, limit = str(payload[key]), 300
                    break
    if secret:
        raw = raw.replace(secret, "[redacted]")
    return one_line(raw)[:limit]


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
    """Fetches exports with pacing, bounded retries, splitting and download checks.

    ``pacer`` may be shared by several clients (a foreground poll and a background backfill);
    ``reserve`` is passed to each of this client's ``Pacer.acquire`` calls. Without a pacer
    the client makes its own, ``max_requests_per_minute`` calls in any 60 s.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_requests_per_minute: int = 30,
        max_retries: int = 5,
        request_zone: ZoneInfo = _UTC_ZONE,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        pacer: Pacer | None = None,
        reserve: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_zone = request_zone
        self.max_retries = max_retries
        self.reserve = reserve
        self._sleep: Sleep = sleep if sleep is not None else default_sleep
        self._rng = rng or random.Random()
        self.pacer = (
            pacer
            if pacer is not None
            else Pacer(max(1, int(max_requests_per_minute)), clock=clock, sleep=self._sleep)
        )
        self._api_key = api_key
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
        self.requests_sent = 0  # export POSTs, retries included (downloads are not counted)

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

    def _clean(self, text: str) -> str:
        """Server or file text for an error message: one line, no URL query, no API key."""
        text = one_line(text)
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

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
        """One export of [start, end), tried up to ``max_retries + 1`` times (POST failures
        and download failures share that budget), each try with a fresh ``downloadUrl``."""
        body = export_body(start, end, self.request_zone, **extra)
        attempts = self.max_retries + 1
        seen = _Attempts()

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.info(
                "export_retry",
                export=kind,
                attempt=state.attempt_number,
                attempts=attempts,
                reason=getattr(exc, "reason", "error"),
                error=str(exc),
                wait_s=round(state.upcoming_sleep, 3),
            )

        retrying = tenacity.AsyncRetrying(
            sleep=self._sleep,
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._backoff,
            retry=tenacity.retry_if_exception_type(_Retry),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            rows: list[T] = await retrying(self._attempt, kind, body, parse, seen)
        except _Retry as exc:
            raise exc.final(
                f"{kind} export: {exc.problem} after {attempts} attempts; {exc.fix}",
                reason=exc.reason,
            ) from None
        return rows

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: what the server asked for (``Retry-After``,
        capped at 5 minutes), else exponential (1, 2, 4 ... 120 s) times a jitter of 0.5-1.5."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retry) and exc.wait is not None:
            return exc.wait
        return min(_MAX_BACKOFF, 2.0 ** (state.attempt_number - 1)) * self._rng.uniform(0.5, 1.5)

    async def _attempt(
        self,
        kind: ExportKind,
        body: dict[str, object],
        parse: Callable[[IO[str]], list[T]],
        seen: _Attempts,
    ) -> list[T]:
        info = await self._request_export(kind, body)
        if info is None:
            return []
        return await self._download_rows(kind, info, parse, seen)

    async def _request_export(
        self, kind: ExportKind, body: dict[str, object]
    ) -> _ExportInfo | None:
        """One paced POST: the download info, None for "No data found", or an exception."""
        url = export_endpoint(self.base_url, kind)
        fix = (
            "Langdock is unavailable or rate-limiting this workspace; nothing stored, the next"
            " poll retries (langdock.max_retries sets the attempts)"
        )
        await self.pacer.acquire(self.reserve)
        self.requests_sent += 1
        try:
            response = await self._api.post(url, json=body)
        except httpx.TimeoutException:
            raise _Retry("timeout", f"POST {url} timed out", fix) from None
        except httpx.TransportError as exc:
            raise _Retry(
                "connect", f"POST {url} failed to connect ({type(exc).__name__})", fix
            ) from None
        status = response.status_code
        if status == 200:
            return self._parse_info(kind, response)
        text = _error_text(response, self._api_key)
        if status == 404 and "no data" in text.lower():
            return None
        if status == 400 and "too large" in text.lower():
            raise _TooLarge(text)
        if status in (401, 403):
            raise AuthError(
                f"{kind} export: POST {url} answered HTTP {status} ({text}): the Langdock API"
                " key is wrong or lacks the USAGE_EXPORT_API scope; create one as a workspace"
                " admin"
            )
        if status == 429 or status >= 500:
            raise _Retry(
                "rate_limited" if status == 429 else "server",
                f"POST {url} answered HTTP {status} ({text})",
                fix,
                wait=_retry_after(response),
            )
        hint = (
            "check langdock.base_url (a dedicated deployment ends in /api/public)"
            if status == 404
            else "this is a bug or an API change; please report it"
        )
        raise BadRequestError(f"{kind} export: POST {url} answered HTTP {status} ({text}); {hint}")

    def _parse_info(self, kind: ExportKind, response: httpx.Response) -> _ExportInfo:
        where = str(response.request.url)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(
                f"{kind} export: POST {where} answered HTTP 200 but the body is not JSON;"
                " a proxy may be answering instead of Langdock, check langdock.base_url",
                "bad_response",
            ) from None
        if not isinstance(payload, dict) or payload.get("success") is not True:
            detail = _error_text(response, self._api_key)
            raise DataError(
                f"{kind} export: Langdock answered success=false ({detail}) to POST {where};"
                " nothing stored, the next poll retries",
                "unsuccessful",
            )
        data = payload.get("data") or {}
        url = data.get("downloadUrl") if isinstance(data, dict) else None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise DataError(
                f"{kind} export: the answer to POST {where} has no usable downloadUrl;"
                " this is a bug or an API change, please report it",
                "bad_response",
            )
        count = data.get("recordCount")
        return _ExportInfo(
            url, int(count) if isinstance(count, int | str) and str(count).isdigit() else None
        )

    async def _download_rows(
        self,
        kind: ExportKind,
        info: _ExportInfo,
        parse: Callable[[IO[str]], list[T]],
        seen: _Attempts,
    ) -> list[T]:
        where = _safe_url(info.download_url)
        retry_fix = (
            "the storage behind Langdock's downloadUrl is failing; nothing stored, the next"
            " poll retries"
        )
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            try:
                async with self._download.stream("GET", info.download_url) as response:
                    status = response.status_code
                    if status in (401, 403, 410) or (
                        status == 400 and b"expired" in await response.aread()
                    ):
                        seen.expired += 1
                        problem = (
                            f"the signed download URL {where} was refused (HTTP {status}:"
                            " expired or forbidden)"
                        )
                        fix = "check the machine clock (NTP); nothing stored, the next poll retries"
                        if seen.expired > 1:  # a fresh URL did not help: not a passing glitch
                            raise DataError(
                                f"{kind} export: {problem} twice, the second time right after"
                                f" a fresh export; {fix}",
                                "download_expired",
                            )
                        raise _Retry("download_expired", problem, fix, final=DataError, wait=0.0)
                    if status == 429 or status >= 500:
                        raise _Retry(
                            "download",
                            f"download from {where} answered HTTP {status}",
                            retry_fix,
                            wait=_retry_after(response),
                        )
                    if status != 200:
                        what = " (a redirect; not followed)" if 300 <= status < 400 else ""
                        raise DataError(
                            f"{kind} export: download from {where} answered HTTP {status}{what};"
                            " nothing stored, the next poll retries; the signed URL must be"
                            " fetched directly, check proxies between the daemon and storage",
                            "download",
                        )
                    async for chunk in response.aiter_bytes():
                        spool.write(chunk)
            except httpx.HTTPError as exc:
                raise _Retry(
                    "download",
                    f"download from {where} broke off ({type(exc).__name__})",
                    retry_fix,
                ) from None
            spool.seek(0)
            text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="")
            try:
                rows = parse(text)
            except ExportFormatError as exc:
                raise DataError(
                    f"{self._clean(str(exc))} (file from {where}); nothing stored; Langdock's"
                    " export format changed or the file is damaged, report it if it persists",
                    "parse",
                ) from None
            except UnicodeDecodeError:
                raise DataError(
                    f"{kind} export: the file from {where} is not UTF-8 text; nothing stored;"
                    " report it if it persists",
                    "parse",
                ) from None
            finally:
                text.detach()
        if info.record_count is not None and len(rows) < info.record_count:
            raise _Retry(
                "truncated",
                f"the file from {where} has {len(rows)} rows but Langdock announced"
                f" {info.record_count} (truncated download)",
                "nothing stored, the next poll retries",
                final=DataError,
            )
        if info.record_count is not None and len(rows) > info.record_count:
            raise DataError(
                f"{kind} export: the file from {where} has {len(rows)} rows but Langdock"
                f" announced only {info.record_count}; nothing stored; report it if it persists",
                "count_mismatch",
            )
        return rows
