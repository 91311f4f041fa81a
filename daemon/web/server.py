"""uvicorn serving the status page in the daemon's own event loop.

The socket is bound up front (so a port of 0 is known at once, and a port in use fails the
start with one line); `stop()` lets requests in flight finish for up to five seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

GRACE_SECONDS = 5


class _Server(uvicorn.Server):
    """The daemon owns SIGTERM, SIGINT and SIGHUP (daemon/cli/signals.py): uvicorn must not
    take them over while it serves. Nor does it wake ten times a second to look for a stop
    (its main loop's tick, which also refreshes a Date header we don't send): an idle daemon
    sleeps until a request, a job or `stop`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopped = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the default headers, once
        await self.stopped.wait()


class WebServer:
    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_config=None,  # our structlog setup; uvicorn's own loggers stay quiet
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACE_SECONDS,
            server_header=False,
            date_header=False,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> WebServer:
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket])
        )
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        self._server.stopped.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close()
