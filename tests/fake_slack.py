"""A loopback fake of Slack: incoming webhooks and the Web API (chat.postMessage, chat.update,
conversations.history and conversations.replies with message metadata, conversations.list).

Records every request and keeps each channel's messages (with their metadata, by channel id:
``#llm-costs`` is ``C0123``, other names get ids in order of first use). Answers can be
scripted per request (status, body, headers) to play rate limits, outages and refusals, and
to play the uncertain cases: Slack handles the request but the answer is an error (``handle``),
never comes before the client gives up (``hang``: held until `release`), or the connection is
dropped (``drop``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SCOPES = frozenset(
    {"chat:write", "channels:history", "groups:history", "channels:read", "groups:read"}
)
_POSTING = ("chat.postMessage", "chat.update")  # what `posts` counts when Slack took it


@dataclass
class Answer:
    status: int = 200
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)
    handle: bool = False  # do what Slack would (post it), then answer as scripted (if a body)
    hang: bool = False  # answer only after `release` (the client has timed out by then)
    drop: bool = False  # close the connection without an answer
    first: bool = False  # with hang and handle: post at once, answer only after `release`

    @classmethod
    def late(cls) -> Answer:
        """Slack posts the message after the client gave up waiting (when released)."""
        return cls(hang=True, handle=True)

    @classmethod
    def slow(cls) -> Answer:
        """Slack posts the message at once and answers only when released."""
        return cls(hang=True, handle=True, first=True)

    @classmethod
    def lost(cls) -> Answer:
        """The request arrives, Slack never posts it, the client gets no answer in time."""
        return cls(hang=True)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def method(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class FakeSlack:
    def __init__(
        self,
        token: str = "xoxb-test-token",
        first_ts: int = 1700000000,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``clock``: message timestamps follow it (else they count up from ``first_ts``)."""
        self.token = token
        self.clock = clock
        self.scopes = set(SCOPES)
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self.script_for: dict[str, deque[Answer]] = {}  # per Web API method, before `script`
        self.channels: dict[str, str] = {"#llm-costs": "C0123"}  # name -> id
        self.messages: dict[str, list[dict[str, Any]]] = {}  # channel id -> messages
        self._ts = first_ts
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._held = 0
        self._idle = threading.Condition(self._lock)
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

            def do_GET(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def release(self, timeout: float = 5.0) -> None:
        """Let held requests go on, and wait until they are handled."""
        self._released.set()
        with self._idle:
            assert self._idle.wait_for(lambda: self._held == 0, timeout), "held requests stuck"
        self._released = threading.Event()

    # what tests look at
    def wait_until(self, test: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Until ``test()`` holds (checked whenever a request arrives), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while not test():  # never under the lock: ``test`` may read through the methods
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._idle:
                self._idle.wait(min(left, 0.5))
        return True

    def posts(self) -> list[Received]:
        """Messages that were accepted (webhook 200, chat.postMessage or chat.update ok)."""
        with self._lock:
            return [r for r in self.received if r.headers.get("x-fake-accepted") == "1"]

    def texts(self) -> list[str]:
        return [r.body.get("text", "") for r in self.posts() if not r.path.endswith("chat.update")]

    def calls(self, method: str) -> list[Received]:
        """Requests to one Web API method (``conversations.history``...), accepted or not."""
        with self._lock:
            return [r for r in self.received if r.method == method]

    def channel_texts(self, channel: str) -> list[str]:
        """The texts of the messages in a channel (by name or id), threads included."""
        with self._lock:
            return [m["text"] for m in self.messages.get(self.channels.get(channel, channel), [])]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        url = urlsplit(handler.path)
        body: dict[str, Any] = dict(parse_qsl(url.query))
        if "application/x-www-form-urlencoded" in headers.get("content-type", ""):
            body.update(parse_qsl(raw))
        elif raw:
            try:
                body.update(json.loads(raw))
            except json.JSONDecodeError:
                body["raw"] = raw
        record = Received(url.path, headers, body)
        with self._idle:
            self.received.append(record)
            scripted = self.script_for.get(record.method)
            if scripted:
                answer: Answer | None = scripted.popleft()
            else:
                answer = self.script.popleft() if self.script else None
            self._idle.notify_all()
        if answer is not None and answer.hang:
            with self._lock:
                self._held += 1
            handled = self._answer(record, url.path) if answer.first else None
            with self._idle:
                self._idle.notify_all()
            try:
                self._released.wait()
                if answer.handle and handled is None:
                    self._answer(record, url.path)
            finally:
                with self._idle:
                    self._held -= 1
                    self._idle.notify_all()
            if handled is not None:
                with contextlib.suppress(OSError):  # the client may be gone
                    self._write(handler, handled)
            handler.close_connection = True
            return
        if answer is not None and answer.drop:
            if answer.handle:
                self._answer(record, url.path)
            handler.close_connection = True
            return
        if answer is None or answer.handle:
            handled = self._answer(record, url.path)
            answer = handled if answer is None or not answer.body else answer
        self._write(handler, answer)
        with self._idle:
            self._idle.notify_all()

    def _answer(self, record: Received, path: str) -> Answer:
        answer = self._default(path, record.headers, record.body)
        posting = path.startswith("/services/") or record.method in _POSTING
        if (
            posting
            and answer.status == 200
            and (answer.body == "ok" or (isinstance(answer.body, dict) and answer.body.get("ok")))
        ):
            record.headers["x-fake-accepted"] = "1"
        return answer

    @staticmethod
    def _write(handler: BaseHTTPRequestHandler, answer: Answer) -> None:
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

    def _channel_id(self, name: str, *, create: bool) -> str | None:
        if name in self.channels.values():
            return name
        if name not in self.channels and create and name != "#missing":
            self.channels[name] = f"C{0x0124 + len(self.channels) - 1:04X}"
        return self.channels.get(name)

    def _default(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.startswith("/services/"):
            return Answer(200, "ok")
        if headers.get("authorization") != f"Bearer {self.token}":
            return Answer(200, {"ok": False, "error": "invalid_auth"})
        method = path.rsplit("/", 1)[-1]
        with self._lock:
            if method == "chat.postMessage":
                return self._post(body)
            if method == "chat.update":
                updated = {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
                return Answer(200, updated)
            if method == "conversations.list":
                if "channels:read" not in self.scopes:
                    return Answer(200, {"ok": False, "error": "missing_scope"})
                found = [{"id": i, "name": n.lstrip("#")} for n, i in self.channels.items()]
                return Answer(200, {"ok": True, "channels": found})
            if method in ("conversations.history", "conversations.replies"):
                if "channels:history" not in self.scopes:
                    return Answer(200, {"ok": False, "error": "missing_scope"})
                return self._history(method, body)
        return Answer(404, {"ok": False, "error": "unknown_method"})

    def _post(self, body: dict[str, Any]) -> Answer:
        channel = self._channel_id(str(body.get("channel")), create=True)
        if channel is None:
            return Answer(200, {"ok": False, "error": "channel_not_found"})
        self._ts = max(self._ts + 1, int(self.clock().timestamp()) if self.clock else 0)
        ts = f"{self._ts}.000100"
        message: dict[str, Any] = {"type": "message", "ts": ts, "text": body.get("text", "")}
        if body.get("thread_ts"):
            message["thread_ts"] = body["thread_ts"]
        if body.get("metadata"):
            message["metadata"] = body["metadata"]
        self.messages.setdefault(channel, []).append(message)
        return Answer(200, {"ok": True, "channel": channel, "ts": ts})

    def _history(self, method: str, body: dict[str, Any]) -> Answer:
        """Like Slack: the channel by id only; history newest first without thread replies,
        replies oldest first with their parent; metadata only with include_all_metadata."""
        channel = str(body.get("channel"))
        if channel not in self.channels.values():
            return Answer(200, {"ok": False, "error": "channel_not_found"})
        found = list(self.messages.get(channel, []))
        if method == "conversations.history":
            found = [m for m in found if m.get("thread_ts") in (None, m["ts"])][::-1]
        else:
            ts = body.get("ts")
            found = [m for m in found if ts in (m["ts"], m.get("thread_ts"))]
        oldest = float(body.get("oldest") or 0)
        found = [m for m in found if float(m["ts"]) >= oldest or m["ts"] == body.get("ts")]
        start = int(body.get("cursor") or 0)
        limit = int(body.get("limit") or 100)
        page = found[start : start + limit]
        if body.get("include_all_metadata") not in ("1", "true", True):
            page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
        more = start + limit < len(found)
        return Answer(
            200,
            {
                "ok": True,
                "messages": page,
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""},
            },
        )
