"""Langdock's Usage Export API: what a request looks like, what its answers mean, and the
exceptions of the client (`daemon.langdock.client`), whose ``reason`` is a metric label and
whose message says what to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # the answers come from the client (`daemon.langdock.client`), which loads it
    import httpx

ExportKind = Literal["api-keys", "models"]
_URL_QUERY = re.compile(r"(https?://[^\s?#]+)[?#]\S*")


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


class TooLarge(Exception):
    pass


class RetryExport(Exception):
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
class ExportInfo:
    download_url: str
    record_count: int | None


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


def one_line(text: str) -> str:
    """``text`` on one line, every URL without its query (a signed URL's query is its
    signature): for error messages built from what a server or a file said."""
    return _URL_QUERY.sub(r"\1", " ".join(text.split()))


def export_endpoint(base_url: str, kind: ExportKind) -> str:
    return f"{base_url.rstrip('/')}/export/{kind}"


def error_text(response: httpx.Response, secret: str = "") -> str:
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


def export_info(kind: ExportKind, response: httpx.Response, secret: str = "") -> ExportInfo:
    """The ``downloadUrl`` and ``recordCount`` of a 200 answer to an export POST."""
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
        detail = error_text(response, secret)
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
    return ExportInfo(
        url, int(count) if isinstance(count, int | str) and str(count).isdigit() else None
    )
