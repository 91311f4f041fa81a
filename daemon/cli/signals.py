"""SIGTERM stops a command the way Ctrl-C does (`run` installs its own handlers)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopSignals:
    """While a command runs, SIGTERM stops it the way Ctrl-C does: inside `asyncio.run` the
    running cycle is cancelled at its next await (connections closed, no partial bucket,
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
