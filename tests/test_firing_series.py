"""The firing alerts' series are taken from the last snapshot while its alerts are the same
objects (`daemon.metric_series.firing_series`), and made afresh otherwise: the same series
either way."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from daemon.metric_series import firing_series
from daemon.rules.lifecycle import AlertKey, AlertState

T = datetime(2026, 11, 30, tzinfo=UTC)
states = st.builds(
    lambda rule, member, condition, severity: AlertState(
        AlertKey(rule, member, condition, "2026-11"), "firing", T, T, T, None, severity
    ),
    st.sampled_from(["r1", "r2"]),
    st.sampled_from(["*", "k1", "k2"]),
    st.sampled_from(["80", "100", "forecast"]),
    st.sampled_from(["warning", "critical"]),
)


@given(st.lists(states, max_size=8), st.data())
def test_series_kept_or_made_are_the_series_made_afresh(
    last: list[AlertState], data: st.DataObject
) -> None:
    kept = (last, firing_series(last))
    now = list(last)
    for _ in range(data.draw(st.integers(0, 3))):
        change = data.draw(st.sampled_from(["copy", "severity", "drop", "add", "swap"]))
        if change == "add" or not now:
            now.insert(data.draw(st.integers(0, len(now))), data.draw(states))
            continue
        i = data.draw(st.integers(0, len(now) - 1))
        if change == "copy":  # an equal state, another object: made again, the same series
            now[i] = replace(now[i])
        elif change == "severity":
            now[i] = replace(now[i], severity="info")
        elif change == "drop":
            del now[i]
        else:
            now[0], now[i] = now[i], now[0]
    made = firing_series(now, kept)
    assert made == firing_series(now)
    if len(now) == len(last) and all(a is b for a, b in zip(now, last, strict=True)):
        assert made is kept[1]
