"""new_member rules: announce a key's first spend once, never for what the backfill found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.notify import plan
from daemon.rules.engine import EngineResult, evaluate
from daemon.rules.schema import AnyRule
from daemon.rules.usage import UsageIndex
from daemon.store import OutboxItem
from tests.rules.helpers import H, hourly, rule

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
NEW_AFTER = T0 - 5 * H


def usage(now: datetime) -> UsageIndex:
    old = hourly(T0 - 30 * H, now, lambda _: "1", key="old")
    new = hourly(T0 - 2 * H, now, lambda _: "2", key="new", model="claude")
    return UsageIndex(
        old + new,
        key_names={"old": "legacy", "new": "fresh-team"},
        history_start=T0 - 30 * H,
        new_after=NEW_AFTER,
        first_seen={"api_key": {"old": T0 - 30 * H, "new": T0 - 2 * H}},
    )


def plan_console(
    result: EngineResult, rules: list[AnyRule], notified: dict[str, datetime], now: datetime
) -> tuple[list[OutboxItem], dict[str, datetime]]:
    return plan(
        result,
        {r.name: r for r in rules},
        lambda _r: "console",
        notified,
        now,
        ZoneInfo("UTC"),
        repeat_interval=timedelta(hours=1),
        send_resolved=True,
        labels={},
    )


def test_only_keys_first_seen_after_backfill_fire_once_then_clear_quietly() -> None:
    tz = ZoneInfo("UTC")
    rules = [rule(kind="new_member", each="api_key")]
    first = evaluate(rules, usage(T0), {}, T0, tz)
    assert [(n.transition.kind, n.transition.state.key.member) for n in first.notices] == [
        ("firing", "new")
    ]
    (fresh,) = [e for e in first.evaluations if e.member.id == "new"]
    assert fresh.spend == 4 and fresh.top_parts == (("claude", 4),)  # type: ignore[union-attr]
    outbox, notified = plan_console(first, rules, {}, T0)
    assert len(outbox) == 1 and "New API key in use" in outbox[0].payload["text"]
    assert "fresh-team (new)" in outbox[0].payload["text"]
    # an hour later: still up, but no repeat
    later = evaluate(rules, usage(T0 + H), first.states, T0 + H, tz)
    again, _ = plan_console(later, rules, notified, T0 + 2 * H)
    assert again == []
    # after the rule's window the alert clears without a resolve message
    done = evaluate(rules, usage(T0 + 25 * H), later.states, T0 + 25 * H, tz)
    assert [n.transition.kind for n in done.notices] == ["resolved"]
    quiet, _ = plan_console(done, rules, notified, T0 + 25 * H)
    assert quiet == []


def test_new_member_needs_each() -> None:
    with pytest.raises(ValueError, match="each"):
        rule(kind="new_member")


def test_shipped_example_loads(tmp_path: Path) -> None:
    from daemon.config import load_config

    (tmp_path / "c.yaml").write_text(
        "langdock: {api_key: x}\nrules:\n  - {name: new-keys, kind: new_member, each: api_key,"
        " severity: info, window: 12h}\n"
    )
    (loaded,) = load_config(tmp_path / "c.yaml", {}).rules
    assert loaded.kind == "new_member" and loaded.window == timedelta(hours=12)
