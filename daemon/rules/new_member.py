"""`new_member` rules: an API key or model shows spend for the first time.

"First" means after the initial backfill (`UsageIndex.new_after`), so a fresh install does not
announce every key it finds. The alert holds for the rule's `window` after the first use and
then clears quietly (the notifier sends neither repeats nor a resolve for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from daemon.rules.lifecycle import AlertKey
from daemon.rules.members import MemberUsage
from daemon.rules.schema import NewMemberRule
from daemon.rules.types import Condition, Member
from daemon.rules.usage import UsageIndex


@dataclass(frozen=True)
class NewMemberEvaluation:
    rule: str
    member: Member
    first_seen: datetime
    now: datetime
    conditions: tuple[Condition, ...]
    usage: MemberUsage | None = field(default=None, compare=False, repr=False)

    @property
    def spend(self) -> Decimal:
        return self.usage.value.total(self.first_seen, self.now) if self.usage else Decimal(0)

    @property
    def top_parts(self) -> tuple[tuple[str, Decimal], ...]:
        return self.usage.top_parts(self.first_seen, self.now) if self.usage else ()


def evaluate_new_member(
    rule: NewMemberRule, usage: UsageIndex, now: datetime
) -> list[NewMemberEvaluation]:
    first_seen = usage.first_seen.get(rule.each, {})
    results = []
    for member_usage in usage.members(rule, "cost_usd"):
        seen = first_seen.get(member_usage.member.id)
        if seen is None:
            continue
        holds = usage.new_after is not None and seen >= usage.new_after and now - seen < rule.window
        condition = Condition(
            AlertKey(rule.name, member_usage.member.id, "new", ""), holds, rule.severity
        )
        results.append(
            NewMemberEvaluation(
                rule.name, member_usage.member, seen, now, (condition,), member_usage
            )
        )
    return results
