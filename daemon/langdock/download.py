"""Downloading one export's file and reading it as a stream, in bounded memory.

The signed ``downloadUrl`` is fetched by an HTTP client that never carries the API key and
follows no redirect. The body is streamed to a spooled temporary file (in memory up to
8 MiB, on disk beyond) and refused past ``max_bytes`` (``langdock.max_download_bytes``,
announced ``Content-Length`` or counted as it arrives). The file is then parsed as a stream:
the parser folds rows per (key, model) / (model, provider, BYOK) as it reads them, so memory
follows the number of distinct keys and models, not the size of the file. Records are counted
as they are read and checked against ``recordCount``.

Every failure is a `DownloadError` saying whether a fresh export may help (``retry``): the
client (`daemon.langdock.client`) owns the retries.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Generic, TypeVar
from urllib.parse import urlsplit

import httpx

from daemon.langdock.csv import ExportFormatError, MalformedFileError, Tally
from daemon.langdock.protocol import one_line

T = TypeVar("T")
Parse = Callable[[IO[str], Tally], list[T]]

DEFAULT_MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
DEFAULT_DOWNLOAD_DEADLINE = 300.0  # seconds for one whole download (langdock.download_timeout)
_SPOOL_BYTES = 8 * 1024 * 1024
_MAX_RETRY_AFTER = 300.0
_NEXT_POLL = "nothing stored, the next poll retries"


class DownloadError(Exception):
    """One download, or the file it brought, failed.

    ``problem`` says what failed and where (one line, no secrets), ``fix`` what happens or
    what to do. ``retry``: a fresh export may fix it (``wait`` overrides the backoff);
    ``storage``: the storage behind the URL is failing (when no retry is left the poll stops,
    as when Langdock is down), else only the bucket fails.
    """

    def __init__(
        self,
        reason: str,
        problem: str,
        fix: str,
        *,
        retry: bool = False,
        storage: bool = False,
        wait: float | None = None,
    ) -> None:
        super().__init__(f"{problem}; {fix}")
        self.reason, self.problem, self.fix = reason, problem, fix
        self.retry, self.storage, self.wait = retry, storage, wait


@dataclass(frozen=True)
class ExportFile(Generic[T]):
    """What a file held: the parser's rows, and what it counted and rejected."""

    rows: list[T]
    tally: Tally


async def download_file(
    http: httpx.AsyncClient,
    url: str,
    kind: str,
    parse: Parse[T],
    *,
    record_count: int | None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    deadline: float = DEFAULT_DOWNLOAD_DEADLINE,
    secret: str = "",
) -> ExportFile[T]:
    """Fetch the file behind the signed ``url`` and parse it; raises `DownloadError`.

    The whole download has ``deadline`` seconds (the HTTP timeout only bounds the wait
    between two reads: a file that drips a byte a second would never time out); a stalled
    download is abandoned and the export retried. The parse runs in a worker thread, so a
    large file does not stop the event loop (the scheduler, the metrics snapshot)."""
    where = safe_url(url)
    with _Spool(_SPOOL_BYTES) as spool:
        try:
            async with asyncio.timeout(deadline):
                await _fetch(http, url, where, spool, max_bytes)
        except TimeoutError:
            raise DownloadError(
                "download_stalled",
                f"the download from {where} took longer than langdock.download_timeout"
                f" ({deadline:g} s)",
                "abandoned; a fresh export is tried (raise langdock.download_timeout if"
                " this workspace's files are that slow to fetch)",
                retry=True,
                storage=True,
            ) from None
        tally = Tally()
        rows = await asyncio.to_thread(_parse, spool.rewound(), kind, parse, tally, where, secret)
    if record_count is not None and tally.records < record_count:
        raise DownloadError(
            "truncated",
            f"the file from {where} has {tally.records} rows but Langdock announced"
            f" {record_count} (truncated download)",
            _NEXT_POLL,
            retry=True,
        )
    if record_count is not None and tally.records > record_count:
        raise DownloadError(
            "count_mismatch",
            f"the file from {where} has {tally.records} rows but Langdock announced only"
            f" {record_count}",
            "nothing stored; report it if it persists",
        )
    return ExportFile(rows, tally)


class _Spool:
    """The downloaded bytes: in memory up to ``limit``, past it in an anonymous temporary
    file. Unlike `tempfile.SpooledTemporaryFile` it hands the parse the file object itself
    (`rewound`), not a Python wrapper whose ``closed`` the text layer asks for every line
    (5 ms of a 100,000-line file)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.file: IO[bytes] = io.BytesIO()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit and isinstance(self.file, io.BytesIO):
            disk = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
            disk.write(self.file.getvalue())
            self.file.close()
            self.file = disk
        self.file.write(chunk)

    def rewound(self) -> IO[bytes]:
        self.file.seek(0)
        return self.file

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


async def _fetch(
    http: httpx.AsyncClient, url: str, where: str, spool: _Spool, max_bytes: int
) -> None:
    """The body behind ``url`` into ``spool``, at most ``max_bytes`` of it."""
    storage_fix = (
        "the storage behind Langdock's downloadUrl is failing; nothing stored, the next"
        " poll retries"
    )
    try:
        async with http.stream("GET", url) as response:
            status = response.status_code
            if status in (401, 403, 410) or (
                status == 400 and b"expired" in await response.aread()
            ):
                raise DownloadError(
                    "download_expired",
                    f"the signed download URL {where} was refused (HTTP {status}: expired or"
                    " forbidden)",
                    "check the machine clock (NTP); nothing stored, the next poll retries",
                    retry=True,
                    wait=0.0,
                )
            if status == 429 or status >= 500:
                raise DownloadError(
                    "download",
                    f"download from {where} answered HTTP {status}",
                    storage_fix,
                    retry=True,
                    storage=True,
                    wait=retry_after(response),
                )
            if status != 200:
                what = " (a redirect; not followed)" if 300 <= status < 400 else ""
                raise DownloadError(
                    "download",
                    f"download from {where} answered HTTP {status}{what}",
                    "nothing stored, the next poll retries; the signed URL must be fetched"
                    " directly, check proxies between the daemon and storage",
                )
            announced = response.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise _too_large(where, max_bytes, f"it announces {int(announced):,} bytes")
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(where, max_bytes, "counted while downloading")
                spool.write(chunk)
    except httpx.HTTPError as exc:
        raise DownloadError(
            "download",
            f"download from {where} broke off ({type(exc).__name__})",
            storage_fix,
            retry=True,
            storage=True,
        ) from None


def _too_large(where: str, max_bytes: int, how: str) -> DownloadError:
    return DownloadError(
        "download_too_large",
        f"the file from {where} is larger than langdock.max_download_bytes"
        f" ({max_bytes:,} bytes; {how})",
        "nothing stored; if this workspace's exports really are that large, raise"
        " langdock.max_download_bytes in the config (the file goes to a temporary file on"
        " disk, not to memory)",
    )


def _parse(
    spool: IO[bytes], kind: str, parse: Parse[T], tally: Tally, where: str, secret: str
) -> list[T]:
    text = io.TextIOWrapper(spool, encoding="utf-8-sig", newline="")
    try:
        return parse(text, tally)
    except MalformedFileError as exc:
        detail = clean(str(exc), secret).removeprefix(f"{kind} export: ")
        raise DownloadError(
            "malformed", f"{detail} in the file from {where}", _NEXT_POLL, retry=True
        ) from None
    except ExportFormatError as exc:
        detail = clean(str(exc), secret).removeprefix(f"{kind} export: ")
        raise DownloadError(
            "parse",
            f"{detail} (file from {where})",
            "nothing stored; Langdock's export format changed or the file is damaged,"
            " report it if it persists",
        ) from None
    except UnicodeDecodeError:
        raise DownloadError(
            "parse",
            f"the file from {where} is not UTF-8 text",
            "nothing stored; report it if it persists",
        ) from None
    finally:
        text.detach()


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date), at most 5 min."""
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


def clean(text: str, secret: str) -> str:
    """Server or file text for an error message: one line, no URL query, no ``secret``."""
    text = one_line(text)
    return text.replace(secret, "[redacted]") if secret else text


def safe_url(url: str) -> str:
    """A signed URL without its query (the signature is a credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
