"""Forms from the page, read within bounds and checked before anything is stored.

A form body is read only up to `MAX_FORM_BYTES` (also when it comes chunked) and only as
``application/x-www-form-urlencoded``: Starlette's own parser would accept about a gigabyte
of fields, or files of any size, before the handler could refuse the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl

from starlette.requests import Request

from daemon.rules.durations import parse_duration

MAX_FORM_BYTES = 16 * 1024
MIN_SILENCE, MAX_SILENCE = timedelta(minutes=1), timedelta(days=90)
LIMITS = {"member": 200, "comment": 500, "by": 100, "rule": 200, "for": 20}


class FormError(Exception):
    """Why a form was refused, for the user (one line), with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("", "application/x-www-form-urlencoded"):
        raise FormError("send the form urlencoded (application/x-www-form-urlencoded)", 415)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise FormError(f"the form is larger than {MAX_FORM_BYTES // 1024} KiB", 413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(f"the form is larger than {MAX_FORM_BYTES // 1024} KiB", 413)
    try:
        fields = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form could not be read") from None
    return {name: value for name, value in fields}


@dataclass(frozen=True)
class SilenceForm:
    rule: str
    member: str | None
    duration: timedelta
    comment: str
    by: str


def silence_form(fields: dict[str, str], rules: set[str]) -> SilenceForm:
    """The silence the form asks for, or a `FormError` saying what to fix."""
    values = {k: fields.get(k, "").strip() for k in ("rule", "member", "for", "comment", "by")}
    for name, limit in LIMITS.items():
        if len(values[name]) > limit:
            raise FormError(f"{name}: at most {limit} characters")
    if values["rule"] not in rules:
        raise FormError("no such rule: pick one from the list")
    try:
        duration = parse_duration(values["for"])
    except ValueError as exc:
        raise FormError(f"for: {exc}") from None
    if not MIN_SILENCE <= duration <= MAX_SILENCE:
        raise FormError("for: between 1 minute and 90 days, e.g. 2h")
    if not values["comment"] or not values["by"]:
        raise FormError("say who you are and why (both are shown with the silence)")
    return SilenceForm(
        values["rule"], values["member"] or None, duration, values["comment"], values["by"]
    )
