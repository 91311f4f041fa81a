"""The engine's vocabulary, defined once: what a rule measures (`Metric`), whom an alert is
about (`Member`, `MemberKind`), how loud it is (`Severity`), and what a rule says about one
alert at one evaluation (`Condition`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from daemon.rules.lifecycle import AlertKey

Metric = Literal["cost_usd", "requests", "tokens", "error_rate", "response_time_ms"]
KEY_METRICS: tuple[Metric, ...] = ("cost_usd", "requests", "tokens")  # from the key export
MemberKind = Literal["api_key", "model"]  # what a rule's `each` splits by
Severity = Literal["info", "warning", "critical"]
WORKSPACE = "*"  # the id of the one member of a rule without `each`


@dataclass(frozen=True, slots=True)
class Member:
    """One alert series of a rule: the workspace (``*``), an API key id, or a model name."""

    id: str
    label: str
    dimension: Literal["workspace"] | MemberKind


@dataclass(frozen=True, slots=True)
class Condition:
    """Whether one alert's condition holds at this evaluation, and at which severity."""

    key: AlertKey
    holds: bool
    severity: Severity
