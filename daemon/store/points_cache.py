"""Hourly points of a selection's members kept between cycles, read again only where they
changed (docs/DESIGN.md "Steady cycles: sums kept between cycles").

Rules that read hourly series over a short window (an anomaly's hour and baseline day, a
budget over today or the last 24 hours) look at the same settled hours cycle after cycle;
only the running hour is new. Here each selection's points over its *settled* part
[start, fresh_from) are kept per bucket, and a cycle reads from SQLite only:

- the hours that settled since the last cycle;
- the hours a write changed (`written`, called by every rewrite of key usage, marks them);
- the running hour [fresh_from, end), never kept.

Hours that left the window are dropped. Anything else (an earlier start, a shorter range,
compaction, a new leader) reads the whole range again. The points are the same integers
(or exact `Decimal`s) SQLite summed: tests/store/test_points_cache.py holds the kept path
to a fresh read on random histories.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from daemon.rules.selection import Grouped
from daemon.rules.series import Raw

Read = Callable[[int, int], Grouped]  # the points of [lo, hi) (unix seconds), read now
ByBucket = dict[int, dict[str, Raw]]  # bucket start → member → value


@dataclass
class _Kept:
    start: int
    end: int  # the settled part [start, end) is in `buckets`
    buckets: ByBucket
    used: int  # the sweep it was last used in
    dirty: list[tuple[int, int]] = field(default_factory=list)  # ranges written since


class PointsCache:
    def __init__(self) -> None:
        self._kept: dict[Hashable, _Kept] = {}
        self._sweep = 0

    def clear(self) -> None:
        self._kept.clear()

    def points(self, key: Hashable, start: int, end: int, fresh_from: int, read: Read) -> Grouped:
        """Each member's points over [start, end); those of [start, fresh_from) kept under
        ``key`` (a new `Grouped` every call: the caller may keep it)."""
        settled = max(start, min(end, fresh_from))
        kept = self._kept.get(key)
        if kept is None or not kept.start <= start <= kept.end or settled < kept.end:
            kept = self._kept[key] = _Kept(start, settled, _by_bucket(read(start, settled)), 0)
        else:
            for bucket in [b for b in kept.buckets if b < start]:
                del kept.buckets[bucket]
            kept.start = start
            again = [(max(lo, start), min(hi, kept.end)) for lo, hi in kept.dirty]
            again.append((kept.end, settled))
            for lo, hi in again:
                if lo < hi:
                    for bucket in [b for b in kept.buckets if lo <= b < hi]:
                        del kept.buckets[bucket]
                    kept.buckets.update(_by_bucket(read(lo, hi)))
            kept.end, kept.dirty = settled, []
        kept.used = self._sweep
        grouped: Grouped = {}
        for bucket, members in kept.buckets.items():
            _add(grouped, bucket, members)
        if end > settled:
            for bucket, members in _by_bucket(read(settled, end)).items():
                _add(grouped, bucket, members)
        return grouped

    def written(self, lo: int, hi: int) -> None:
        """Usage of buckets that start in [lo, hi) was rewritten: read them again."""
        for kept in self._kept.values():
            if lo < kept.end and hi > kept.start:
                kept.dirty.append((lo, hi))

    def sweep(self) -> None:
        """Once a cycle: forget what the last two cycles did not use (a rule removed)."""
        self._sweep += 1
        self._kept = {k: v for k, v in self._kept.items() if v.used >= self._sweep - 2}


def _by_bucket(grouped: Grouped) -> ByBucket:
    buckets: ByBucket = {}
    for member, points in grouped.items():
        for bucket, value in points.items():
            members = buckets.get(bucket)
            if members is None:
                members = buckets[bucket] = {}
            members[member] = value
    return buckets


def _add(grouped: Grouped, bucket: int, members: dict[str, Raw]) -> None:
    for member, value in members.items():
        points = grouped.get(member)
        if points is None:
            points = grouped[member] = {}
        points[bucket] = value
