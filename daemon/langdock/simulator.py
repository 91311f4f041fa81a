"""A loopback stand-in for Langdock's Usage Export API, for `demo` and the tests.

It speaks the same protocol as the real API (`daemon.langdock.protocol`): bearer auth,
wall-clock dates with a zone, ``/export/api-keys`` (optionally ``group_by: model``) and
``/export/models``, answers carrying a signed, expiring ``downloadUrl``, 404 "No data found",
and the "Export too large" 400. The usage it serves is the synthetic, deterministic usage of
a `SimWorkspace` (`daemon.langdock.sim_workspace`).

Tests can script faults (`Fault`, `download_faults`) and read every request the server saw.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from daemon.langdock.sim_workspace import (
    DEFAULT_KEYS,
    DEFAULT_MODELS,
    SimKey,
    SimModel,
    SimWorkspace,
)

__all__ = ["Fault", "SeenRequest", "Simulator"]


@dataclass
class Fault:
    """A scripted answer to the next export request (instead of the real one)."""

    status: int
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hang before answering (a stuck upstream)


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None = None  # the status answered, set before the answer is written


class Simulator(SimWorkspace):
    """The simulated workspace plus its HTTP server (`start` / `stop`)."""

    def __init__(
        self,
        *,
        api_key: str = "sim-key",
        keys: tuple[SimKey, ...] = DEFAULT_KEYS,
        models: tuple[SimModel, ...] = DEFAULT_MODELS,
        byok: bool = True,
        requests_per_hour: float = 1200.0,
        spike_start: datetime | None = None,
        spike_factor: float = 40.0,
        spike_duration: timedelta = timedelta(minutes=45),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        url_ttl: timedelta = timedelta(minutes=10),
        max_rows: int = 1_000_000,
        model_header: str = "model",
    ) -> None:
        super().__init__(
            keys=keys,
            models=models,
            byok=byok,
            requests_per_hour=requests_per_hour,
            spike_start=spike_start,
            spike_factor=spike_factor,
            spike_duration=spike_duration,
            clock=clock,
            model_header=model_header,
        )
        self.api_key = api_key
        self.url_ttl, self.max_rows = url_ttl, max_rows
        self.faults: deque[Fault] = deque()
        # "truncate", "garbage", "expire", "500", "429" (Retry-After: 3), "drop" (the
        # connection breaks off mid-file), "redirect", "missing_column", "bom_extra",
        # "short_row" (the last row loses its trailing cells), "stray_quote" (a quote opens a
        # cell of the last row and never closes), "poison" (the last row's total_cost_usd is
        # 1e20; "poison:<column>=<value>" for another), "oversized" (the file padded with
        # blank lines to over 2 MiB), "oversized_unannounced" (the same, no Content-Length)
        self.download_faults: deque[str] = deque()
        self.drip_interval = 1.0  # seconds between two bytes of a "drip" download
        self.seen: list[SeenRequest] = []
        self.request_seen = threading.Event()  # set on every request (tests wait on it)
        self._files: dict[str, bytes] = {}
        self._answering = threading.local()  # .record: the request a server thread answers
        self._secret = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- HTTP

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the simulator first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one response, no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def send_response(self, code: int, message: str | None = None) -> None:
                record = getattr(sim._answering, "record", None)  # None: a malformed request
                if record is not None:
                    record.status = code
                super().send_response(code, message)

            def do_POST(self) -> None:
                sim._handle(self, "POST")

            def do_GET(self) -> None:
                sim._handle(self, "GET")

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)
                # a client that went away mid-request (a stopped daemon): nothing to report

        self._server = Server((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="langdock-sim", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def export_requests(self) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.seen if r.method == "POST"]

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = SeenRequest(method, handler.path, headers, body)
        with self._lock:
            self.seen.append(record)
        self.request_seen.set()
        self._answering.record = record  # this server thread's request, while it answers it
        try:
            self._route(handler, method, headers, body)
        finally:
            self._answering.record = None

    def _route(
        self, handler: BaseHTTPRequestHandler, method: str, headers: dict[str, str], body: Any
    ) -> None:
        path = urlsplit(handler.path).path
        if method == "GET" and path.startswith("/download/"):
            self._download(handler, path.rsplit("/", 1)[1], headers)
            return
        if method == "POST" and "/export/" in path:
            self._export(handler, path, headers, body)
            return
        _send_json(handler, 404, {"error": "Not found"})

    def _export(
        self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str], body: Any
    ) -> None:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if isinstance(fault.body, str):
                _send(handler, fault.status, fault.body.encode(), "text/plain", fault.headers)
            else:
                _send_json(handler, fault.status, fault.body, fault.headers)
            return
        if headers.get("authorization") != f"Bearer {self.api_key}":
            _send_json(handler, 401, {"error": "Invalid API key"})
            return
        if "origin" in headers:
            _send_json(handler, 403, {"error": "Browser requests are not allowed"})
            return
        kind = path.split("/export/", 1)[1].removesuffix("/csv").strip("/")
        try:
            start = _parse_point(body["from"])
            end = _parse_point(body["to"]) + timedelta(milliseconds=1)
        except (KeyError, TypeError, ValueError) as exc:
            _send_json(handler, 400, {"error": f"Invalid date range: {exc}"})
            return
        group_by = body.get("group_by")
        if kind == "api-keys":
            if group_by not in (None, "model"):
                _send_json(handler, 400, {"error": f"Unsupported group_by: {group_by}"})
                return
            text, count = self.api_keys_csv(start, end, grouped=group_by == "model")
        elif kind == "models":
            text, count = self.models_csv(start, end)
        else:
            _send_json(handler, 400, {"error": f"Unsupported export type: {kind}"})
            return
        if count == 0:
            _send_json(handler, 404, {"error": "No data found"})
            return
        if count > self.max_rows:
            _send_json(
                handler,
                400,
                {
                    "error": f"Export too large: {count} rows exceeds limit of"
                    f" {self.max_rows}. Please narrow the date range."
                },
            )
            return
        token = secrets.token_hex(8)
        expires = int((self.clock() + self.url_ttl).timestamp())
        with self._lock:
            self._files[token] = text.encode("utf-8")
        signature = self._sign(token, expires)
        url = f"{self.base_url}/download/{token}?expires={expires}&signature={signature}"
        _send_json(
            handler,
            200,
            {
                "success": True,
                "data": {
                    "filePath": f"api-usage/org_sim/{kind}-{token}.csv",
                    "downloadUrl": url,
                    "dataType": kind,
                    "recordCount": count,
                    "dateRange": {"from": body["from"]["date"], "to": body["to"]["date"]},
                },
            },
        )

    def _sign(self, token: str, expires: int) -> str:
        return hmac.new(self._secret, f"{token}:{expires}".encode(), hashlib.sha256).hexdigest()[
            :32
        ]

    def _download(
        self, handler: BaseHTTPRequestHandler, token: str, headers: dict[str, str]
    ) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        expires = int(query.get("expires", ["0"])[0])
        signature = query.get("signature", [""])[0]
        with self._lock:
            fault = self.download_faults.popleft() if self.download_faults else None
            data = self._files.get(token)
        if "authorization" in headers:
            _send(
                handler, 400, b"<Error>Only one auth mechanism allowed</Error>", "application/xml"
            )
            return
        expired = fault == "expire" or expires < self.clock().timestamp()
        if (
            data is None
            or expired
            or not hmac.compare_digest(signature, self._sign(token, expires))
        ):
            _send(
                handler,
                403,
                b"<Error><Code>AccessDenied</Code>Request has expired</Error>",
                "application/xml",
            )
            return
        if fault == "500":
            _send(handler, 500, b"internal error", "text/plain")
            return
        if fault == "429":
            _send(handler, 429, b"slow down", "text/plain", {"Retry-After": "3"})
            return
        if fault == "drip":  # the whole body announced, then a byte now and then, for ever
            handler.send_response(200)
            handler.send_header("Content-Type", "text/csv")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            try:
                for byte in data[: len(data) - 1]:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(self.drip_interval)
            except OSError:
                pass  # the client gave up: what the test wants
            return
        if fault == "drop":  # half the announced body, then the connection closes
            handler.close_connection = True
            handler.send_response(200)
            handler.send_header("Content-Type", "text/csv")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            return
        if fault == "redirect":  # storage pointing elsewhere: must not be followed
            _send(handler, 302, b"", "text/plain", {"Location": "http://198.51.100.7/elsewhere"})
            return
        if fault == "garbage":
            data = b"\x00\xff\xfe garbage \x00" * 20
        if fault == "missing_column":
            header, _, rest = data.partition(b"\r\n")
            header = header.replace(b"api_key_id", b"key_ident").replace(b",name,", b",label,")
            data = header + b"\r\n" + rest
        if fault == "bom_extra":
            lines = data.split(b"\r\n")
            data = b"\xef\xbb\xbf" + b"\r\n".join(
                (line + (b",extra_col" if i == 0 else b',"x, y"')) if line else line
                for i, line in enumerate(lines)
            )
        if fault == "truncate":
            cut = data[: max(1, len(data) // 2)]
            data = cut[: cut.rfind(b"\n") + 1] if b"\n" in cut else cut
        if fault == "short_row":
            data = _last_row(data, lambda cells: cells[: len(cells) // 2])
        if fault == "stray_quote":
            data = _last_row(data, lambda cells: [*cells[:3], b'"' + cells[3], *cells[4:]])
        if fault is not None and fault.startswith("poison"):
            column, _, value = (fault.partition(":")[2] or "total_cost_usd=1e20").partition("=")
            index = data.partition(b"\r\n")[0].split(b",").index(column.encode())
            data = _last_row(data, lambda cells: _replaced(cells, index, value.encode()))
        if fault is not None and fault.startswith("oversized"):
            data += b"\r\n" * (1 << 20)  # blank lines: the same rows, in over 2 MiB
        if fault == "oversized_unannounced":  # no length: the size shows only while reading
            handler.close_connection = True
            handler.send_response(200)
            handler.send_header("Content-Type", "text/csv")
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(data)
            return
        _send(handler, 200, data, "text/csv")


def _last_row(data: bytes, change: Callable[[list[bytes]], list[bytes]]) -> bytes:
    """``data`` with the cells of its last row changed (the row keeps its line ending)."""
    head, _, last = data.rstrip(b"\r\n").rpartition(b"\r\n")
    return head + b"\r\n" + b",".join(change(last.split(b","))) + b"\r\n"


def _replaced(cells: list[bytes], index: int, value: bytes) -> list[bytes]:
    return [value if i == index else cell for i, cell in enumerate(cells)]


def _parse_point(point: dict[str, str]) -> datetime:
    text = point["date"].removesuffix("Z")
    local = datetime.fromisoformat(text)
    return local.replace(tzinfo=ZoneInfo(point.get("timezone") or "UTC")).astimezone(UTC)


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    data: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: Any,
    headers: dict[str, str] | None = None,
) -> None:
    _send(handler, status, json.dumps(payload).encode(), "application/json", headers)
