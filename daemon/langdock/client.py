"""Async client for Langdock's Usage Export API (docs/DESIGN.md "The export request's time
zone", "Failure handling in a poll").

One export = ``POST {base}/export/{type}`` (bearer auth, JSON body with wall-clock dates and
their zone) answered with a signed ``downloadUrl``; the CSV behind it is fetched by a second
HTTP client that never carries the API key, under a size limit, and read as a stream into
sums per key and model, checked against ``recordCount`` (`daemon.langdock.download`). The
caller gets all rows of a range or an exception: never a partial result. Rows whose values no
real export holds are left out, logged, and counted (`LangdockClient.rejected`); the rest is
kept.

Retries (tenacity, ``docs/DESIGN.md`` "Retries"): one export may be tried
``max_retries + 1`` times in all. An attempt is a POST and its download; a 429, a 5xx, a
timeout or a broken connection on either, a file shorter than ``recordCount`` or with a
damaged record (a row cut short, a stray quote), fails the attempt, and the next one starts
with a fresh export (new POST, new ``downloadUrl``) after a backoff (``Retry-After`` when
given, else exponential with jitter). An expired signed URL gets one fresh export at once.
Auth errors, bad requests, files past the size limit and files that do not parse (missing
column, not UTF-8) are not retried. Every POST passes the shared ``Pacer``; downloads go to
storage, not to the API, and do not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, TypeVar
from zoneinfo import ZoneInfo

import certifi
import httpx
import structlog
import tenacity

from daemon import __version__
from daemon.langdock.csv import (
    KeyUsage,
    ModelUsage,
    Tally,
    parse_key_usage,
    parse_model_usage,
    sum_key_usage,
    sum_model_usage,
)
from daemon.langdock.download import (
    DEFAULT_DOWNLOAD_DEADLINE,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DownloadError,
    ExportFile,
    Parse,
    clean,
    download_file,
    retry_after,
)
from daemon.langdock.pacing import Clock, Pacer, Sleep
from daemon.langdock.protocol import (
    AuthError,
    BadRequestError,
    DataError,
    ExportInfo,
    ExportKind,
    RetryExport,
    TooLarge,
    TransientError,
    error_text,
    export_body,
    export_endpoint,
    export_info,
)

__all__ = ["LangdockClient", "default_sleep"]

T = TypeVar("T")

_UTC_ZONE = ZoneInfo("UTC")
_MAX_BACKOFF = 120.0
_KEEP_REJECTIONS = 100  # lines kept for `take_rejections`
log = structlog.get_logger("langdock_budget.langdock")


async def default_sleep(seconds: float) -> None:
    """The client's sleep when none is given; looked up when a client is made, so a test
    that runs the real command line can replace it (``monkeypatch.setattr``)."""
    await asyncio.sleep(seconds)


@dataclass
class _Attempts:
    """What the attempts of one export have seen so far."""

    expired: int = 0


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
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        download_deadline: float = DEFAULT_DOWNLOAD_DEADLINE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_zone = request_zone
        self.max_retries = max_retries
        self.reserve = reserve
        self.max_download_bytes = max_download_bytes
        self.download_deadline = download_deadline
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
        # Rows left out for a value no real export holds (see `daemon.langdock.checks`), per
        # (export, reason), since this client was made; and a line for each (the last 100).
        self.rejected: dict[tuple[str, str], int] = {}
        self.rejections: deque[str] = deque(maxlen=_KEEP_REJECTIONS)

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

        def parse(stream: IO[str], tally: Tally) -> list[KeyUsage]:
            return sum_key_usage(parse_key_usage(stream, grouped=True, tally=tally))

        return await self._export("api-keys", start, end, parse, group_by="model")

    async def model_usage(self, start: datetime, end: datetime) -> list[ModelUsage]:
        """Per model usage over [start, end): ``/export/models``."""

        def parse(stream: IO[str], tally: Tally) -> list[ModelUsage]:
            return sum_model_usage(parse_model_usage(stream, tally=tally))

        return await self._export("models", start, end, parse)

    def take_rejections(self) -> list[str]:
        """One line per row left out since the last call (export, range, line, column,
        value, why), and a summary line per file with more than ten; then forgets them."""
        lines = list(self.rejections)
        self.rejections.clear()
        return lines

    # ------------------------------------------------------------------ internals

    def _clean(self, text: str) -> str:
        """Server or file text for an error message: one line, no URL query, no API key."""
        return clean(text, self._api_key)

    async def _export(
        self,
        kind: ExportKind,
        start: datetime,
        end: datetime,
        parse: Parse[T],
        **extra: str,
    ) -> list[T]:
        try:
            return await self._export_once(kind, start, end, parse, extra)
        except TooLarge:
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
        parse: Parse[T],
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
            retry=tenacity.retry_if_exception_type(RetryExport),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            file: ExportFile[T] | None = await retrying(self._attempt, kind, body, parse, seen)
        except RetryExport as exc:
            raise exc.final(
                f"{kind} export: {exc.problem} after {attempts} attempts; {exc.fix}",
                reason=exc.reason,
            ) from None
        if file is None:
            return []
        self._note_rejected(kind, start, end, file.tally)
        return file.rows

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: what the server asked for (``Retry-After``,
        capped at 5 minutes), else exponential (1, 2, 4 ... 120 s) times a jitter of 0.5-1.5."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryExport) and exc.wait is not None:
            return exc.wait
        return min(_MAX_BACKOFF, 2.0 ** (state.attempt_number - 1)) * self._rng.uniform(0.5, 1.5)

    async def _attempt(
        self,
        kind: ExportKind,
        body: dict[str, object],
        parse: Parse[T],
        seen: _Attempts,
    ) -> ExportFile[T] | None:
        info = await self._request_export(kind, body)
        if info is None:
            return None
        try:
            return await download_file(
                self._download,
                info.download_url,
                kind,
                parse,
                record_count=info.record_count,
                max_bytes=self.max_download_bytes,
                deadline=self.download_deadline,
                secret=self._api_key,
            )
        except DownloadError as exc:
            raise self._download_failed(kind, exc, seen) from None

    def _download_failed(self, kind: ExportKind, exc: DownloadError, seen: _Attempts) -> Exception:
        """What a failed download means for the export: a retry (`RetryExport`) or its end."""
        if exc.reason == "download_expired":
            seen.expired += 1
            if seen.expired > 1:  # a fresh URL did not help: not a passing glitch
                return DataError(
                    f"{kind} export: {exc.problem} twice, the second time right after a fresh"
                    f" export; {exc.fix}",
                    exc.reason,
                )
        if exc.retry:
            final = TransientError if exc.storage else DataError
            return RetryExport(exc.reason, exc.problem, exc.fix, final=final, wait=exc.wait)
        return DataError(f"{kind} export: {exc.problem}; {exc.fix}", exc.reason)

    def _note_rejected(
        self, kind: ExportKind, start: datetime, end: datetime, tally: Tally
    ) -> None:
        """Count, log and keep a line for the rows a file's parse left out."""
        if not tally.rejected:
            return
        span = f"{start.isoformat()}/{end.isoformat()}"
        for reason, rows in tally.rejected.items():
            self.rejected[(kind, reason)] = self.rejected.get((kind, reason), 0) + rows
        for rejection in tally.examples:
            value = self._clean(rejection.value)[:40]
            log.warning(
                "export_row_rejected",
                export=kind,
                range=span,
                line=rejection.line,
                column=rejection.column,
                value=value,
                reason=rejection.reason,
                allowed=rejection.allowed,
            )
            shown = dataclasses.replace(rejection, value=value)
            self.rejections.append(f"{kind} export {span}: {shown}; row left out")
        more = sum(tally.rejected.values()) - len(tally.examples)
        if more:
            log.warning(
                "export_rows_rejected", export=kind, range=span, more=more, **tally.rejected
            )
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(tally.rejected.items()))
            self.rejections.append(f"{kind} export {span}: {more} more rows left out ({counts})")

    async def _request_export(self, kind: ExportKind, body: dict[str, object]) -> ExportInfo | None:
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
            raise RetryExport("timeout", f"POST {url} timed out", fix) from None
        except httpx.TransportError as exc:
            raise RetryExport(
                "connect", f"POST {url} failed to connect ({type(exc).__name__})", fix
            ) from None
        status = response.status_code
        if status == 200:
            return export_info(kind, response, self._api_key)
        text = error_text(response, self._api_key)
        if status == 404 and "no data" in text.lower():
            return None
        if status == 400 and "too large" in text.lower():
            raise TooLarge(text)
        if status in (401, 403):
            raise AuthError(
                f"{kind} export: POST {url} answered HTTP {status} ({text}): the Langdock API"
                " key is wrong or lacks the USAGE_EXPORT_API scope; create one as a workspace"
                " admin"
            )
        if status == 429 or status >= 500:
            raise RetryExport(
                "rate_limited" if status == 429 else "server",
                f"POST {url} answered HTTP {status} ({text})",
                fix,
                wait=retry_after(response),
            )
        hint = (
            "check langdock.base_url (a dedicated deployment ends in /api/public)"
            if status == 404
            else "this is a bug or an API change; please report it"
        )
        raise BadRequestError(f"{kind} export: POST {url} answered HTTP {status} ({text}); {hint}")
