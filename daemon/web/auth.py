"""Who may read the status page and who may write (silences) from it.

- ``web.admin_token``: writes. A script sends ``Authorization: Bearer <token>``; a browser
  signs in once at ``/login`` and gets a session cookie (HttpOnly, SameSite=Strict, signed
  with the token itself, so a new token ends every session and replicas with the same token
  accept each other's cookies). Without an admin token every write is refused.
- ``web.read_token``: when set, reading needs it (or the admin token); else reading is open.
- CSRF: a form carries a mark derived from the session (HMAC with the admin token), checked
  with ``compare_digest``; a cross-site ``Origin`` is refused outright. A bearer header is
  not ambient, so API calls need no mark.

Nothing here logs or shows a token; a failed check says which token is missing, never what
was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request

Role = Literal["admin", "reader"]
COOKIE = "langdock_budget_session"
SESSION_SECONDS = 12 * 3600


def _sign(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


Tokens = Callable[[], tuple[str | None, str | None]]  # (admin, read) as configured now


class Auth:
    """``tokens`` is read on every request, so a reload (SIGHUP) that changes a token takes
    effect at once, and ends the sessions signed with the old one."""

    def __init__(self, tokens: Tokens, clock: Callable[[], float] = time.time) -> None:
        self._read_tokens = tokens
        self._clock = clock

    @classmethod
    def fixed(cls, admin: str | None, read: str | None = None) -> Auth:
        return cls(lambda: (admin, read))

    @property
    def _tokens(self) -> dict[Role, str | None]:
        admin, read = self._read_tokens()
        return {"admin": admin, "reader": read}

    @property
    def writes_enabled(self) -> bool:
        return self._tokens["admin"] is not None

    @property
    def reads_open(self) -> bool:
        return self._tokens["reader"] is None

    def role_of_token(self, token: str) -> Role | None:
        for role in ("admin", "reader"):
            expected = self._tokens[role]
            if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
                return role
        return None

    def session(self, role: Role) -> str:
        """A cookie value for ``role``: ``role.expiry.signature``."""
        key = self._tokens[role]
        assert key is not None, "a session only for a configured token"
        payload = f"{role}.{int(self._clock()) + SESSION_SECONDS}"
        return f"{payload}.{_sign(key, payload)}"

    def _session_role(self, value: str) -> Role | None:
        role, _, rest = value.partition(".")
        expiry, _, signature = rest.partition(".")
        if role not in ("admin", "reader") or not expiry.isdigit():
            return None
        key = self._tokens[role]  # type: ignore[index]
        if key is None or int(expiry) < self._clock():
            return None
        if not hmac.compare_digest(signature, _sign(key, f"{role}.{expiry}")):
            return None
        return role  # type: ignore[return-value]

    def role(self, request: Request) -> Role | None:
        """The caller's role from a bearer header, else from the session cookie."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            return self.role_of_token(token.strip())
        cookie = request.cookies.get(COOKIE)
        return self._session_role(cookie) if cookie else None

    def can_read(self, request: Request) -> bool:
        return self.reads_open or self.role(request) is not None

    def csrf(self, request: Request) -> str:
        """The mark a form of this session carries ("" without an admin session)."""
        key, cookie = self._tokens["admin"], request.cookies.get(COOKIE)
        if key is None or cookie is None or self._session_role(cookie) != "admin":
            return ""
        return _sign(key, f"csrf.{cookie}")

    def write_refusal(self, request: Request, mark: str | None) -> str | None:
        """Why this write is refused, or None when it may go ahead."""
        if not self.writes_enabled:
            return "writes from the page are off: set web.admin_token (or admin_token_file)"
        if not same_origin(request):
            return "refused: the form was sent from another site"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():  # a script: no cookie, no mark
            if self.role_of_token(token.strip()) == "admin":
                return None
            return "refused: the bearer token is not web.admin_token"
        if self.role(request) != "admin":
            return "sign in with web.admin_token first (/login)"
        expected = self.csrf(request)
        if not mark or not hmac.compare_digest(mark, expected):
            return "refused: the form's CSRF mark is missing or stale; reload the page"
        return None


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` (or ``Referer``) is this host (as the client named
    it, or as a reverse proxy forwarded it in ``X-Forwarded-Host``); a request with neither
    (a script, curl) passes. A page on another site cannot set ``X-Forwarded-Host`` without
    a CORS preflight, which this server never grants."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source != "null"
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
    return urlsplit(source).netloc in hosts - {""}
