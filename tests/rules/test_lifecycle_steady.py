"""A steady alert stays the same object (nothing to make, nothing to write again) where no
field that is read would change; `last_true` moves where `keep_firing_for` reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.rules.lifecycle import AlertKey, step, step_firing

KEY = AlertKey("r", "k1", "80", "2026-12")
T0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)


def test_a_firing_alert_that_holds_is_kept_as_it_is() -> None:
    fired, _ = step(None, KEY, True, T0)
    assert fired is not None and fired.status == "firing"
    assert step(fired, KEY, True, LATER) == (fired, None)
    assert step_firing(fired, KEY, True, LATER, timedelta(0), timedelta(0), "warning")[0] is fired


def test_a_pending_alert_that_holds_is_kept_and_fires_on_time() -> None:
    pending, _ = step(None, KEY, True, T0, for_=timedelta(minutes=10))
    assert pending is not None and pending.status == "pending"
    kept, _ = step(pending, KEY, True, LATER, for_=timedelta(minutes=10))
    assert kept is pending
    due = T0 + timedelta(minutes=10)
    fired, transition = step(kept, KEY, True, due, for_=timedelta(minutes=10))
    assert fired is not None and fired.status == "firing" and transition is not None


def test_keep_firing_for_counts_from_the_last_evaluation_that_held() -> None:
    hold = timedelta(minutes=15)
    fired, _ = step(None, KEY, True, T0, keep_firing_for=hold)
    assert fired is not None
    held, _ = step(fired, KEY, True, T0 + timedelta(minutes=30), keep_firing_for=hold)
    assert held is not None and held.last_true == T0 + timedelta(minutes=30)
    # cleared 10 minutes after it last held: still held; 20 minutes after: resolved
    still, none = step(held, KEY, False, T0 + timedelta(minutes=40), keep_firing_for=hold)
    assert still is held and none is None
    resolved, transition = step(held, KEY, False, T0 + timedelta(minutes=50), keep_firing_for=hold)
    assert resolved is not None and resolved.status == "resolved"
    assert transition is not None and transition.kind == "resolved"


def test_a_new_severity_makes_a_new_state() -> None:
    fired, _ = step(None, KEY, True, T0)
    assert fired is not None
    raised, _ = step(fired, KEY, True, LATER, severity="critical")
    assert raised is not None and raised is not fired and raised.severity == "critical"
    assert raised.last_true == LATER
