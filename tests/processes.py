"""For the tests that start real processes: a free loopback port, a client for their HTTP
endpoints, and the daemon's systemd notifications (READY, STATUS after every cycle) on a test
NOTIFY_SOCKET, so a test waits for events, never for time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

# one client for every request to a process a test started, a new connection each time as
# with `httpx.get`, which would make a client, and read the CA bundle for it, every call
LOCAL = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Notifications:
    """The daemon's sd_notify datagrams; ``logs`` adds the daemon's log to a failure."""

    def __init__(
        self, path: Path, timeout: float = 60, logs: Callable[[], str] = lambda: ""
    ) -> None:
        self.path, self.timeout, self.logs = path, timeout, logs
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(timeout)
        self.seen: list[str] = []

    def wait_for(self, needle: str, within: float | None = None) -> str:
        """The first datagram from now on that contains ``needle`` (at most ``timeout``
        seconds apart; with ``within``, at most that long in all)."""
        deadline = None if within is None else time.monotonic() + within
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise AssertionError(
                    f"the daemon sent no {needle!r} within {within:.0f} s;"
                    f" last seen: {self.seen[-5:]}\n{self.logs()}"
                )
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(
                    f"the daemon sent no {needle!r} within {self.timeout:.0f} s;"
                    f" last seen: {self.seen[-5:]}\n{self.logs()}"
                ) from None
            self.seen.append(message)
            if needle in message:
                return message

    def next_cycle(self) -> str:
        """The STATUS of the next cycle to end; it must have gone well."""
        status = self.wait_for("STATUS=cycle ")
        assert ": ok: " in status, f"the cycle did not go well: {status!r}"
        return status

    def close(self) -> None:
        self.sock.close()
