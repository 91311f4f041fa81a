"""The alert lifecycle: for, keep_firing_for, period ends, removed rules, restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from daemon.rules.engine import evaluate
from daemon.rules.lifecycle import AlertKey, step
from daemon.store import Store
from tests.rules.helpers import H, budget, hourly, index

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
KEY = AlertKey("r", "*", "100", "2026-11")
MIN = timedelta(minutes=1)


def run(holds: list[bool], **kw: timedelta) -> list[str]:
    state, out = None, []
    for i, h in enumerate(holds):
        state, transition = step(state, KEY, h, T0 + i * 5 * MIN, **kw)
        out.append(f"{state.status if state else '-'}{'!' + transition.kind if transition else ''}")
    return out


def test_fires_at_once_without_for() -> None:
    assert run([False, True, True, False, False]) == [
        "-",
        "firing!firing",
        "firing",
        "resolved!resolved",
        "resolved",
    ]


def test_for_waits_in_pending_and_a_blip_resets() -> None:
    assert run([True, False, True, True, True], for_=10 * MIN) == [
        "pending",
        "-",
        "pending",
        "pending",
        "firing!firing",
    ]


def test_keep_firing_for_bridges_flapping() -> None:
    assert run([True, False, True, False, False, False], keep_firing_for=10 * MIN) == [
        "firing!firing",
        "firing",
        "firing",
        "firing",
        "resolved!resolved",
        "resolved",
    ]


def test_engine_persists_and_resumes_without_realerting(tmp_path: Path) -> None:
    tz = ZoneInfo("UTC")
    rules = [budget(window="month", limit_usd=10, thresholds=[50, 100])]
    usage = index(hourly(T0 - 5 * H, T0, lambda _: "3"))
    first = evaluate(rules, usage, {}, T0, tz)
    assert sorted(n.transition.state.key.condition for n in first.notices) == ["100", "50"]
    store = Store.open(tmp_path / "s.db")
    store.save_alerts(first.states)
    store.close()
    reopened = Store.open(tmp_path / "s.db")
    restored = reopened.load_alerts()
    reopened.close()
    assert restored == first.states
    again = evaluate(rules, usage, restored, T0 + 5 * MIN, tz)
    assert again.notices == [] and len(again.firing) == 2
    # the rule is removed from the config: its alerts are forgotten without messages
    assert evaluate([], usage, again.states, T0 + 10 * MIN, tz).states == {}


def test_a_vanished_member_resolves() -> None:
    tz = ZoneInfo("UTC")
    rules = [budget(window="24h", limit_usd=1, each="api_key")]
    usage = index(hourly(T0 - 2 * H, T0, lambda _: "3", key="a"))
    first = evaluate(rules, usage, {}, T0, tz)
    assert len(first.firing) == 1
    later = evaluate(
        rules,
        index(hourly(T0 + 30 * H, T0 + 31 * H, lambda _: "0", key="b")),
        first.states,
        T0 + 31 * H,
        tz,
    )
    assert [n.transition.kind for n in later.notices] == ["resolved"]
