"""One message per rule, member and evaluation: the highest threshold speaks for the lower
ones, going back under is said once, and a forecast that came true is folded into the
threshold that took over (never "resolved")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.notify import plan
from daemon.rules.engine import EngineResult, evaluate
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.schema import AnyRule
from daemon.rules.usage import KeyPoint
from daemon.store import OutboxItem
from tests.properties import examples
from tests.rules.helpers import H, budget, hourly, index

UTCZ = ZoneInfo("UTC")
MONTH = datetime(2026, 11, 1, tzinfo=UTC)
T0 = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)


@dataclass
class World:
    """Evaluates rules cycle after cycle and plans their messages, as the daemon does."""

    rules: list[AnyRule]
    repeat_interval: timedelta = timedelta(0)
    send_resolved: bool = True
    states: dict[str, AlertState] = field(default_factory=dict)
    notified: dict[str, datetime] = field(default_factory=dict)
    last: EngineResult = field(default_factory=EngineResult)

    def cycle(self, points: list[KeyPoint], now: datetime, **kw: Any) -> list[OutboxItem]:
        result = evaluate(self.rules, index(points, history_start=MONTH), self.states, now, UTCZ)
        items, notified = plan(
            result,
            {r.name: r for r in self.rules},
            lambda _rule: "console",
            self.notified,
            now,
            UTCZ,
            repeat_interval=self.repeat_interval,
            send_resolved=self.send_resolved,
            labels={},
            **kw,
        )
        self.states, self.last = result.states, result
        self.notified = {
            k: v for k, v in {**self.notified, **notified}.items() if k in result.states
        }
        return items


def at(amount: str | Decimal, when: datetime = MONTH, key: str = "k1") -> list[KeyPoint]:
    return [KeyPoint(when, key, "gpt-4o", Decimal(amount), 1, 1)]


def texts(items: list[OutboxItem]) -> list[str]:
    return [i.payload["text"] for i in items]


def fields(item: OutboxItem) -> dict[str, str]:
    out = {}
    for block in item.payload["blocks"]:
        for f in block.get("fields", []):
            label, _, value = f["text"].partition("\n")
            out[label.strip("*")] = value
    return out


def test_a_first_start_over_every_threshold_sends_one_message_for_the_highest() -> None:
    world = World([budget(window="month", limit_usd=100, thresholds=[50, 80, 100])])
    (item,) = world.cycle(at("130"), T0)
    assert item.kind == "firing" and item.alert_ids == ["r|*|100|2026-11"]
    assert texts([item])[0].startswith("[WARNING] Budget 100% reached: r")
    assert fields(item)["Also reached"] == "50%, 80%"
    # all three are recorded as reached (state, metrics, status) ...
    assert sorted(s.key.condition for s in world.last.firing) == ["100", "50", "80"]
    # ... and count as announced, so none of them is sent on its own later
    assert set(world.notified) == {"r|*|50|2026-11", "r|*|80|2026-11", "r|*|100|2026-11"}
    assert world.cycle(at("130"), T0 + H) == []


def test_many_members_over_the_limit_make_one_message_each() -> None:
    world = World([budget(window="month", limit_usd=10, thresholds=[50, 80, 100], each="api_key")])
    points = at("20", key="a") + at("9", key="b") + at("6", key="c")
    items = world.cycle(points, T0)
    assert sorted((i.alert_ids[0]) for i in items) == [
        "r|a|100|2026-11",
        "r|b|80|2026-11",
        "r|c|50|2026-11",
    ]


def test_a_higher_threshold_later_is_one_new_message_and_only_the_highest_repeats() -> None:
    world = World(
        [budget(window="month", limit_usd=100, thresholds=[50, 80, 100])],
        repeat_interval=timedelta(hours=4),
    )
    (first,) = world.cycle(at("60"), T0)
    assert "Budget 50% reached" in texts([first])[0]
    (second,) = world.cycle(at("85"), T0 + H)
    assert "Budget 80% reached" in texts([second])[0] and fields(second)["Also reached"] == "50%"
    assert world.cycle(at("85"), T0 + 2 * H) == []
    (repeat,) = world.cycle(at("85"), T0 + 5 * H + timedelta(minutes=1))
    assert repeat.kind == "repeat" and repeat.alert_ids == ["r|*|80|2026-11"]
    assert "Still firing: Budget 80% reached" in texts([repeat])[0]


def test_going_back_under_is_said_once_for_the_highest_and_names_what_still_holds() -> None:
    world = World([budget(window="24h", limit_usd=100, thresholds=[50, 80, 100])])
    day = T0 - 20 * H
    assert len(world.cycle(hourly(day, T0, lambda _: "6"), T0)) == 1  # $120: 100 %
    # the window is recomputed lower: $90, so 100 % clears while 50 % and 80 % still hold
    (down,) = world.cycle(hourly(day, T0, lambda _: "4.5"), T0 + timedelta(minutes=5))
    assert down.kind == "resolved" and down.alert_ids == ["r|*|100|rolling-24h"]
    assert texts([down])[0].startswith("[RESOLVED] r (100%)")
    assert fields(down)["Still reached"] == "50%, 80%"
    # everything clears at once: one message, for the highest that was still firing
    (clear,) = world.cycle(hourly(day, T0, lambda _: "1"), T0 + timedelta(minutes=10))
    assert clear.alert_ids == ["r|*|80|rolling-24h"] and "Still reached" not in fields(clear)
    assert world.cycle(hourly(day, T0, lambda _: "1"), T0 + timedelta(minutes=15)) == []


def test_the_period_end_is_one_neutral_message_not_a_resolve() -> None:
    world = World([budget(window="month", limit_usd=100, thresholds=[50, 100])])
    world.cycle(at("130"), T0)
    (ended,) = world.cycle(at("130"), datetime(2026, 12, 1, 0, 5, tzinfo=UTC))
    assert ended.kind == "resolved" and ended.alert_ids == ["r|*|100|2026-11"]
    assert ended.payload["text"].startswith("[PERIOD ENDED] r (100%)")
    assert ":white_check_mark:" not in str(ended.payload["blocks"])


def forecasting(**kw: Any) -> World:
    rule = budget(
        window="month",
        limit_usd=100,
        forecast=True,
        severity={80: "warning", 100: "critical"},
        thresholds=[80, 100],
        **kw,
    )
    return World([rule])


def spend_by(total: str, now: datetime) -> list[KeyPoint]:
    """``total`` spread evenly over the month so far (a linear forecast extends it)."""
    hours = int((now - MONTH) / H)
    return hourly(MONTH, MONTH + hours * H, lambda _: Decimal(total) / hours)


def test_a_forecast_that_comes_true_is_folded_into_the_100_percent_message() -> None:
    world = forecasting()
    (forecast,) = world.cycle(spend_by("70", T0), T0)  # 70 by the 20th: 105 projected
    assert "Budget forecast over 100%" in texts([forecast])[0]
    assert forecast.alert_ids == ["r|*|forecast|2026-11"]
    later = T0 + 5 * 24 * H
    (came_true,) = world.cycle(spend_by("101", later), later)
    assert came_true.kind == "superseded"
    assert came_true.alert_ids == ["r|*|100|2026-11", "r|*|forecast|2026-11"]
    assert came_true.thread_alert == "r|*|forecast|2026-11"  # its thread, updated in place
    text = texts([came_true])[0]
    assert text.startswith("[CRITICAL] Budget 100% reached: r (forecast came true)")
    assert "RESOLVED" not in text and fields(came_true)["Also reached"] == "80%"
    (notice,) = [n for n in world.last.notices if n.transition.state.key.condition == "forecast"]
    assert notice.transition.kind == "superseded"
    assert notice.transition.reason == "spend reached the limit"
    assert world.cycle(spend_by("101", later), later + H) == []


def test_a_forecast_waits_for_a_pending_100_percent_before_it_is_superseded() -> None:
    world = forecasting(**{"for": "30m"})
    assert world.cycle(spend_by("70", T0), T0) == []  # pending
    (forecast,) = world.cycle(spend_by("70", T0), T0 + H)
    assert forecast.alert_ids == ["r|*|forecast|2026-11"]
    later = T0 + 5 * 24 * H
    assert world.cycle(spend_by("101", later), later) == []  # 100 % pending, forecast held
    assert world.states["r|*|forecast|2026-11"].status == "firing"
    (came_true,) = world.cycle(spend_by("101", later), later + H)
    assert came_true.kind == "superseded" and came_true.alert_ids[0] == "r|*|100|2026-11"


def test_a_forecast_without_a_100_percent_threshold_says_the_limit_was_reached() -> None:
    rule = budget(window="month", limit_usd=100, forecast=True, thresholds=[50])
    world = World([rule])
    world.cycle(spend_by("70", T0), T0)
    later = T0 + 5 * 24 * H
    (came_true,) = world.cycle(spend_by("101", later), later)
    assert came_true.kind == "superseded" and came_true.alert_ids == ["r|*|forecast|2026-11"]
    assert "Budget limit reached: r (forecast came true)" in texts([came_true])[0]
    assert ":white_check_mark:" not in str(came_true.payload["blocks"])


def test_a_forecast_that_really_goes_back_under_is_resolved() -> None:
    world = forecasting()
    world.cycle(spend_by("70", T0), T0)
    # the month is recomputed lower: the projection falls under the limit
    (resolved,) = world.cycle(spend_by("30", T0), T0 + H)
    assert resolved.kind == "resolved" and resolved.alert_ids == ["r|*|forecast|2026-11"]
    assert texts([resolved])[0].startswith("[RESOLVED] r (forecast)")


def test_a_silenced_lead_says_nothing_and_is_announced_when_the_silence_ends() -> None:
    world = World([budget(window="month", limit_usd=100, thresholds=[50, 100])])
    assert world.cycle(at("130"), T0, silenced=lambda _s: True) == []
    (item,) = world.cycle(at("130"), T0 + H)
    assert item.kind == "firing" and item.alert_ids == ["r|*|100|2026-11"]
    assert fields(item)["Also reached"] == "50%"


# --------------------------------------------------------------------- property: many paths

THRESHOLDS = [Decimal(50), Decimal(80), Decimal(100)]


@settings(max_examples=examples(75), deadline=None)
@given(spends=st.lists(st.integers(0, 160), min_size=1, max_size=12))
def test_at_most_one_message_per_evaluation_and_exactly_when_the_highest_changes(
    spends: list[int],
) -> None:
    """Spend moving up and down (recomputed windows) within one month: a message goes out
    exactly when the highest firing threshold changes; up is a firing message for the new
    highest, down a resolve of the old one; the other thresholds are never sent."""
    world = World([budget(window="month", limit_usd=100, thresholds=[50, 80, 100])])
    before: Decimal | None = None
    for i, amount in enumerate(spends):
        reached = {t for t in THRESHOLDS if amount >= t}
        after = max(reached, default=None)
        items = world.cycle(at(str(amount)), T0 + i * H)
        assert len(items) <= 1
        if after is not None and (before is None or after > before):
            (item,) = items
            assert (item.kind, item.alert_ids) == ("firing", [f"r|*|{after}|2026-11"])
            lower = ", ".join(f"{t}%" for t in sorted(reached - {after}))
            assert fields(item).get("Also reached", "") == lower
        elif before is not None and (after is None or after < before):
            (item,) = items
            assert (item.kind, item.alert_ids) == ("resolved", [f"r|*|{before}|2026-11"])
        else:
            assert items == []
        assert {Decimal(s.key.condition) for s in world.last.firing} == reached
        before = after


def test_alert_ids_parse_back_into_keys() -> None:
    key = AlertKey("rule-1", "model|with|bars", "80", "2026-11")
    assert AlertKey.parse(key.id) == key
    assert AlertKey.parse(AlertKey("a", "k", "up", "").id) == AlertKey("a", "k", "up", "")
