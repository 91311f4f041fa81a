"""Silences: Slack stays quiet for a rule's alerts (or some members') until they end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from daemon.store.db import StoreBase, _dt, _ts


@dataclass(frozen=True)
class Silence:
    """Slack stays quiet for alerts of ``rule`` (and ``member``, a glob) until ``ends``."""

    id: int
    rule: str
    member: str | None
    starts: datetime
    ends: datetime
    reason: str
    created_by: str | None = None

    def active(self, now: datetime) -> bool:
        return self.starts <= now < self.ends

    def matches(self, rule: str, member_id: str, label: str) -> bool:
        return rule == self.rule and (
            self.member is None
            or fnmatchcase(member_id, self.member)
            or fnmatchcase(label, self.member)
        )


class Silences(StoreBase):
    """Silences, kept until they end (and after, for `silence list --all`)."""

    def add_silence(
        self,
        rule: str,
        member: str | None,
        starts: datetime,
        ends: datetime,
        reason: str,
        created_by: str | None = None,
    ) -> int:
        with self._transaction():
            row = self._conn.execute(
                "INSERT INTO silences (rule, member, starts, ends, reason, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (rule, member, _ts(starts), _ts(ends), reason, _ts(starts), created_by),
            ).fetchone()
        return int(row[0])

    def silences(self, now: datetime, *, include_expired: bool = False) -> list[Silence]:
        rows = self._conn.execute(
            "SELECT id, rule, member, starts, ends, reason, created_by FROM silences"
            + ("" if include_expired else " WHERE ends > ?")
            + " ORDER BY id",
            () if include_expired else (_ts(now),),
        )
        return [Silence(i, r, m, _dt(s), _dt(e), reason, by) for i, r, m, s, e, reason, by in rows]

    def expire_silence(self, silence_id: int, now: datetime) -> bool:
        with self._transaction():
            cur = self._conn.execute(
                "UPDATE silences SET ends = ? WHERE id = ? AND ends > ?",
                (_ts(now), silence_id, _ts(now)),
            )
        return bool(cur.rowcount == 1)
