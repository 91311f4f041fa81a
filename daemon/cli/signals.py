"""SIGTERM stops a command the way Ctrl-C does (`run` installs its own handlers)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


class StopSignals:
    """While a command runs, SIGTERM stops it the way Ctrl-C does: inside `run_async` the
    running coroutine is cancelled at its next await (connections closed, no partial bucket,
    `demo` removes its store), elsewhere KeyboardInterrupt is raised; `main` then logs one
    line and exits 0 for SIGTERM, 130 for Ctrl-C. `run` installs its own handlers."""

    def __init__(self) -> None:
        self.received = "SIGINT"
        self._previous: Any = None
        self._installed = False
        self._in_loop = False  # inside `run`'s asyncio.run
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._deferred = False  # a SIGTERM came while the loop started or shut down

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def _on_sigterm(self, _signum: int, frame: FrameType | None) -> None:
        self.received = "SIGTERM"
        if self._running is not None:  # the loop cancels the command's coroutine
            loop, task = self._running
            loop.call_soon_threadsafe(task.cancel)
            return
        if self._in_loop:  # asyncio's own set-up or clean-up: stop once it is done
            self._deferred = True
            return
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):  # SIGINT ignored (a background job): stop all the same
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """`asyncio.run(main)`, ``main`` cancelled by SIGTERM (see `run_async`)."""

        async def watched() -> T:
            task = asyncio.current_task()
            assert task is not None
            if self._deferred:  # a SIGTERM while the loop started: stop before beginning
                main.close()
                raise asyncio.CancelledError
            self._running = (asyncio.get_running_loop(), task)
            try:
                return await main
            finally:
                self._running = None

        self._in_loop, self._deferred = True, False
        try:
            result = asyncio.run(watched())
        except asyncio.CancelledError:
            if self.received == "SIGTERM":
                raise KeyboardInterrupt from None
            raise
        finally:
            self._in_loop = False
        if self._deferred:
            raise KeyboardInterrupt
        return result


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` for a command: SIGTERM cancels ``main`` at its next await, as Ctrl-C
    does; if that ends ``main`` (CancelledError), KeyboardInterrupt is raised for `main` (the
    CLI's) to log one line (the demo catches the cancellation itself and says it stopped).
    This holds where SIGINT is ignored too (a job a shell started in the background):
    asyncio.run installs no handler of its own then, and KeyboardInterrupt raised by the
    signal handler between any two bytecodes left tracebacks from wherever the loop was."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(owner, StopSignals) and threading.current_thread() is threading.main_thread():
        return owner.run(main)
    return asyncio.run(main)  # not a command's main thread: no handler of ours
