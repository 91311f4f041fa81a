"""What every response of the page gets, whatever route answers: security headers, a Host
check, and errors turned into one logged line and a plain page (never a traceback).

- Headers: the Content-Security-Policy (no script, nothing from elsewhere), no MIME sniffing,
  no referrer to other sites, no caching of pages (they carry CSRF marks), no framing.
- Host: when the listener is on loopback, only loopback names are served, so a DNS-rebinding
  page cannot read an operator's tunnelled status page; `web.allowed_hosts` widens it.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("langdock_budget.web")

CSP = (
    "default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" would make Origin "null"
    (b"x-frame-options", b"DENY"),
]
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
ERROR_PAGE = (
    b"<!doctype html><title>error</title><p>The status page hit an error; the daemon log"
    b" has one line about it. Alerts and /metrics are not affected.</p>"
)


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    if "*" in allowed:
        return True
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return host.lower() in allowed


class Guard:
    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.allowed):
            await _plain(send, 400, b"unknown host: set web.allowed_hosts to serve this name")
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                message["headers"] = [*kept, *HEADERS, (b"cache-control", b"no-store")]
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception as exc:  # a page's bug must not reach uvicorn's own logging
            log.error(
                "page_failed",
                path=scope.get("path", ""),
                error=f"{type(exc).__name__}: {exc}",
                fix="a bug in the status page; the daemon goes on",
            )
            if not started:
                await _plain(send, 500, ERROR_PAGE, b"text/html; charset=utf-8")


async def _plain(send: Send, status: int, body: bytes, kind: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), *HEADERS, (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})
