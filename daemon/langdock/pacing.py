"""Client-side pacing of Langdock export calls: a sliding log of call times.

Langdock allows 500 export calls a minute, shared with the workspace's real traffic; the daemon
keeps itself far below that. A token bucket only bounds the *average* rate (its burst can put
more than N calls into some 60 s window); this pacer counts the calls of the last 60 seconds,
so **no 60-second window ever holds more than** ``per_minute`` **calls**, whatever the pattern.

Several clients may share one pacer. A caller passes ``reserve``: it waits until fewer than
``per_minute - reserve`` calls were made in the last minute, so a background backfill with
``reserve=2`` leaves two calls a minute that only the regular poll (``reserve=0``) can take.
No lock is held while waiting: each waiter sleeps, then checks again and records its call
without an ``await`` in between (atomic in asyncio), so a poll is never queued behind a
backfill.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

WINDOW = 60.0


class Pacer:
    """At most ``per_minute`` export calls in any 60-second window (a sliding log of call times).

    ``per_minute`` is a plain attribute: the service may raise it while backfilling and lower it
    afterwards; a caller already waiting sees the new value at its next check. It must stay at
    least 1. ``waited`` is the total number of seconds callers spent waiting.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        self.per_minute = per_minute
        self.waited = 0.0
        self._clock, self._sleep = clock, sleep
        # When each call of the last minute leaves the window (call time + 60 s), oldest first.
        # Comparing ``expiry <= now`` and sleeping ``expiry - now`` use the same float values,
        # so a waiter that sleeps exactly that long is never left a rounding error short.
        self._expiries: deque[float] = deque()

    def used(self) -> int:
        """Calls recorded in the last 60 s."""
        self._forget(self._clock())
        return len(self._expiries)

    def limit_for(self, reserve: int) -> int:
        """How many calls a minute a caller with ``reserve`` may make: at least one, so a
        reserve as large as ``per_minute`` slows a caller down instead of stopping it."""
        return max(1, int(self.per_minute) - max(0, reserve))

    async def acquire(self, reserve: int = 0) -> None:
        """Wait until fewer than ``per_minute - reserve`` calls were made in the last 60 s,
        then record one call (now)."""
        while True:
            now = self._clock()
            self._forget(now)
            limit = self.limit_for(reserve)
            used = len(self._expiries)
            if used < limit:
                self._expiries.append(now + WINDOW)  # no await since the check: atomic
                return
            # the window holds `used` calls; once the oldest `used - limit + 1` have left it,
            # fewer than `limit` remain
            wait = self._expiries[used - limit] - now
            self.waited += wait
            await self._sleep(wait)

    def _forget(self, now: float) -> None:
        while self._expiries and self._expiries[0] <= now:
            self._expiries.popleft()
