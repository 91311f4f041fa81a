"""A member's usage as the rules evaluate it: its series for one metric (a ratio's numerator
and denominator), its contributors on demand, and one window's members ranked by total."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from daemon.rules.selection import PartsQuery
from daemon.rules.series import Raw, Series
from daemon.rules.types import Member


@dataclass(slots=True)  # slots: 10,000 keys x every window a cycle
class MemberUsage:
    """A member's series for one metric (ratio metrics carry numerator and denominator)."""

    member: Member
    value: Series  # the metric itself, or the numerator of a ratio
    weight: Series | None = None  # the denominator of a ratio metric (requests)
    parts: dict[str, Series] = field(default_factory=dict)  # contributors (keys or models)
    # usage the shell loaded: what it loads for `parts` once a message names the member (see
    # `PartsQuery`); most members never need them
    parts_query: PartsQuery | None = None
    # an index built from rows: `parts` from its own rows, when first asked for (pure)
    rows_parts: Callable[[], dict[str, Series]] | None = field(default=None, repr=False)

    def top_parts(
        self, start: datetime, end: datetime, n: int = 3
    ) -> tuple[tuple[str, Decimal], ...]:
        """The ``n`` biggest contributors (models of a key, keys of a model) over [start, end)."""
        if self.rows_parts is not None and not self.parts:
            self.parts = self.rows_parts()
        totals = [(label, series.total(start, end)) for label, series in self.parts.items()]
        return tuple(sorted((t for t in totals if t[1]), key=lambda t: (-t[1], t[0]))[:n])

    def total(self, start: datetime, end: datetime) -> Decimal | None:
        """The metric over [start, end): a sum, or a ratio (None with no requests)."""
        numerator = self.value.total(start, end)
        if self.weight is None:
            return numerator
        denominator = self.weight.total(start, end)
        return numerator / denominator if denominator else None


class WindowTotals:
    """Members and their totals over one window, with the ranking computed once."""

    __slots__ = ("_ascending", "_index", "_ranking", "members", "raws")

    def __init__(self, members: list[MemberUsage], raws: list[Raw]) -> None:
        self.members, self.raws = members, raws
        self._ranking: list[int] | None = None
        self._ascending: list[Raw] | None = None
        self._index: dict[str, int] | None = None

    def indexes_of(self, member_ids: Iterable[str]) -> set[int]:
        """Indexes of the members with these ids (the ones present)."""
        if self._index is None:
            self._index = {usage.member.id: i for i, usage in enumerate(self.members)}
        index = self._index
        return {index[m] for m in member_ids if m in index}

    def ranking(self) -> list[int]:
        """Member indexes, the biggest total first (ties by id)."""
        if self._ranking is None:
            self._ranking = sorted(range(len(self.raws)), key=self.raws.__getitem__, reverse=True)
        return self._ranking

    def at_least(self, bound: Raw) -> list[int]:
        """Indexes of the members whose total is at least ``bound`` (a binary search)."""
        ranking = self.ranking()
        if self._ascending is None:
            self._ascending = [self.raws[i] for i in reversed(ranking)]
        return ranking[: len(self._ascending) - bisect_left(self._ascending, bound)]
