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
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):  # SIGINT ignored (a background job): stop all the same
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)  # asyncio.run's handler cancels its main task


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` for a command: SIGTERM cancels ``main`` at its next await, as Ctrl-C
    does, then KeyboardInterrupt is raised for `main` (the CLI's) to log one line. This holds
    where SIGINT is ignored too (a job a shell started in the background): asyncio.run then
    installs no handler of its own, and KeyboardInterrupt raised by the signal handler between
    any two bytecodes left tracebacks from wherever the loop was."""
    stopped = False

    async def cancelled_by_sigterm() -> T:
        handler = signal.getsignal(signal.SIGTERM)
        owner = getattr(handler, "__self__", None)
        task = asyncio.current_task()
        if not isinstance(owner, StopSignals) or task is None:  # no StopSignals: not a command
            return await main
        loop = asyncio.get_running_loop()

        def stop() -> None:
            nonlocal stopped
            stopped, owner.received = True, "SIGTERM"
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await main
        finally:  # back to StopSignals' handler; a SIGTERM meanwhile waits for it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                loop.remove_signal_handler(signal.SIGTERM)  # (which leaves SIG_DFL)
                signal.signal(signal.SIGTERM, handler)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    try:
        return asyncio.run(cancelled_by_sigterm())
    except asyncio.CancelledError:
        if stopped:
            raise KeyboardInterrupt from None
        raise
