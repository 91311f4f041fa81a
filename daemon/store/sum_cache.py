"""Window sums kept between cycles, moved with the data instead of summed again
(docs/DESIGN.md "Steady cycles: sums kept between cycles").

A steady poll rewrites the running hour, now and then one older hour (late data), and time
moves a rolling window's start by an hour. Summing a month of 10,000 keys again for that is
the cost of a cycle; here each window's sums over its *settled* part [start, fresh_from) are
kept per group (member, or key and model), and only differences are read from SQLite:

- the window's start moved forward: the hours that left are subtracted;
- ``fresh_from`` moved forward: the hours that settled are added;
- a write changes a kept range: the store calls `before_write` (the range's old sums are
  subtracted) and `after_write` (its new sums added), inside the write's transaction;
- anything else (another start, a shorter range, compaction, a new zone): summed again.

The part from ``fresh_from`` on (the running hour) is always read. Every value is additive:
a row count and an exact raw sum (integer nano-dollars, or a `Decimal` for finer amounts),
so a group whose count drops to zero is gone, as in a fresh sum.
tests/store/test_sum_cache.py checks the kept path against a fresh sum on random histories.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from daemon.rules.series import Raw

Sums = dict[Hashable, tuple[int, Raw]]  # group → (rows, exact sum)
Compute = Callable[[int, int], Sums]  # the sums of [lo, hi) (unix seconds), read now


def add(into: Sums, delta: Sums, sign: int = 1) -> None:
    for group, (rows, value) in delta.items():
        old_rows, old_value = into.get(group, (0, 0))
        rows, value = old_rows + sign * rows, old_value + sign * value
        if rows:
            into[group] = (rows, value)
        else:
            into.pop(group, None)


def merged(kept: Sums, rest: Sums) -> Sums:
    """The sums of two parts of a range, in a new dict."""
    total = dict(kept)
    add(total, rest)
    return total


@dataclass
class _Kept:
    start: int
    end: int  # the settled part [start, end) is summed in `sums`
    sums: Sums
    compute: Compute
    used: int  # the sweep it was last used in


class SumCache:
    def __init__(self) -> None:
        self._kept: dict[Hashable, _Kept] = {}
        self._sweep = 0
        self._pending: list[tuple[_Kept, int, int]] = []

    def clear(self) -> None:
        self._kept.clear()
        self._pending.clear()

    def parts(
        self,
        key: Hashable,
        start: int,
        end: int,
        fresh_from: int,
        compute: Compute,
        fresh: Sums | None = None,
        seed: Sums | None = None,
    ) -> tuple[Sums, Sums]:
        """The sums over [start, end) in two parts: those of [start, settled) kept under
        ``key`` (the cache's own: read them, never change them; `merged` adds the parts up)
        and those of the rest, read now. ``fresh``, when given, is what
        ``compute(fresh_from, end)`` would return (windows that end together share it);
        ``seed`` what ``compute(start, settled(...))`` would, for a key that is `stale`
        (several are read in one pass)."""
        settled = self.settled(start, end, fresh_from)
        kept = self._kept.get(key)
        if self.stale(key, start, end, fresh_from):
            summed = seed if seed is not None else compute(start, settled)
            kept = self._kept[key] = _Kept(start, settled, summed, compute, 0)
        else:
            assert kept is not None
            if start > kept.start:
                add(kept.sums, compute(kept.start, start), -1)
                kept.start = start
            if settled > kept.end:
                add(kept.sums, compute(kept.end, settled))
                kept.end = settled
        kept.compute, kept.used = compute, self._sweep
        if end <= settled:
            return kept.sums, {}
        return kept.sums, compute(settled, end) if fresh is None or settled != fresh_from else fresh

    @staticmethod
    def settled(start: int, end: int, fresh_from: int) -> int:
        """Where the kept part of [start, end) ends."""
        return max(start, min(end, fresh_from))

    def stale(self, key: Hashable, start: int, end: int, fresh_from: int) -> bool:
        """Whether `parts` would sum [start, settled) from scratch (nothing kept to move)."""
        kept = self._kept.get(key)
        settled = self.settled(start, end, fresh_from)
        return kept is None or not kept.start <= start <= kept.end or settled < kept.end

    def before_write(self, lo: int, hi: int) -> None:
        """[lo, hi) is about to be rewritten: take its old sums out of every kept range."""
        for kept in self._kept.values():
            a, b = max(lo, kept.start), min(hi, kept.end)
            if a < b:
                add(kept.sums, kept.compute(a, b), -1)
                self._pending.append((kept, a, b))

    def after_write(self) -> None:
        """The rewrite is in (same transaction): put the new sums of those ranges in."""
        pending, self._pending = self._pending, []
        for kept, a, b in pending:
            add(kept.sums, kept.compute(a, b))

    def sweep(self) -> None:
        """Once a cycle: forget what the last two cycles did not use (a rule removed)."""
        self._sweep += 1
        self._kept = {k: v for k, v in self._kept.items() if v.used >= self._sweep - 2}
