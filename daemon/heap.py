"""The heap between cycles: what a cycle leaves behind is frozen out of garbage collection.

A steady daemon holds a million long-lived objects (kept window sums and points, alert states
and keys, the last snapshot). Python's cyclic collector walks all of them whenever its oldest
generation grows by a quarter, several times a cycle at 1,000 keys, and that walk cost a
quarter of a steady cycle (docs/PERFORMANCE.md, "Steady state"). After each cycle
`CycleHeap.cycle_ended` moves every object alive into the permanent generation
(`gc.freeze`), which collections skip: the next cycle's collections look at its own objects
only. Frozen objects are still freed by reference counting when dropped; only garbage held
in reference cycles waits, until the full collection every `FULL_EVERY` cycles (an hour at
the default 5-minute poll) unfreezes everything and collects it.
"""

from __future__ import annotations

import gc

FULL_EVERY = 12  # cycles between full collections of everything


class CycleHeap:
    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.cycles = 0

    def cycle_ended(self) -> None:
        """After a cycle (its result published): freeze what is alive; every `full_every`
        cycles, first collect everything (cyclic garbage of the last cycles included)."""
        self.cycles += 1
        if self.cycles % self.full_every == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()
