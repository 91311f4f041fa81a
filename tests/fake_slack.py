"""A loopback fake of Slack: incoming webhooks and the Web API (chat.postMessage/update).

Records every request; answers can be scripted per request (status, body, headers) to play
rate limits, outages and refusals.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeSlack:
    def __init__(self, token: str = "xoxb-test-token") -> None:
        self.token = token
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self._ts = 1700000000
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # what tests look at
    def posts(self) -> list[Received]:
        """Messages that were accepted (webhook 200 or chat.postMessage ok)."""
        with self._lock:
            return [r for r in self.received if r.headers.get("x-fake-accepted") == "1"]

    def texts(self) -> list[str]:
        return [r.body.get("text", "") for r in self.posts() if not r.path.endswith("chat.update")]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"raw": raw}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = Received(handler.path, headers, body)
        with self._lock:
            self.received.append(record)
            answer = self.script.popleft() if self.script else None
        if answer is None:
            answer = self._default(handler.path, headers, body)
        if answer.status == 200 and (
            answer.body == "ok" or (isinstance(answer.body, dict) and answer.body.get("ok"))
        ):
            record.headers["x-fake-accepted"] = "1"
        data = (
            answer.body.encode()
            if isinstance(answer.body, str)
            else json.dumps(answer.body).encode()
        )
        handler.send_response(answer.status)
        handler.send_header(
            "Content-Type", "text/plain" if isinstance(answer.body, str) else "application/json"
        )
        handler.send_header("Content-Length", str(len(data)))
        for k, v in answer.headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _default(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.startswith("/services/"):
            return Answer(200, "ok")
        if headers.get("authorization") != f"Bearer {self.token}":
            return Answer(200, {"ok": False, "error": "invalid_auth"})
        if path.endswith("/chat.postMessage"):
            if body.get("channel") == "#missing":
                return Answer(200, {"ok": False, "error": "channel_not_found"})
            with self._lock:
                self._ts += 1
                ts = f"{self._ts}.000100"
            return Answer(200, {"ok": True, "channel": "C0123", "ts": ts})
        if path.endswith("/chat.update"):
            return Answer(200, {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})
        return Answer(404, {"ok": False, "error": "unknown_method"})
