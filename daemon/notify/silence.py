"""The silence stage: which alerts the silences active at one instant cover.

One matcher for the whole program: planning sends nothing about a silenced alert (it is still
tracked), delivery drops a queued message whose alerts all became silenced before its turn,
and `status` and ``/metrics`` mark silenced alerts. A silence's member glob matches the
member's id or, for an API key, its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.store import Silence


class Silenced:
    """Whether a silence active at ``now`` covers an alert: call it with an `AlertKey`, or
    use `state` for an `AlertState`."""

    __slots__ = ("_active", "_names")

    def __init__(
        self, silences: Iterable[Silence], key_names: Mapping[str, str], now: datetime
    ) -> None:
        self._active = tuple(s for s in silences if s.active(now))
        self._names = key_names

    def __call__(self, key: AlertKey) -> bool:
        if not self._active:
            return False
        name = self._names.get(key.member, key.member)
        return any(s.matches(key.rule, key.member, name) for s in self._active)

    def state(self, state: AlertState) -> bool:
        return self(state.key)


def silence_matcher(
    silences: Iterable[Silence], key_names: Mapping[str, str], now: datetime
) -> Silenced:
    """The silences active at ``now`` as one matcher (see `Silenced`)."""
    return Silenced(silences, key_names, now)
