"""Rule definitions as written in YAML (docs/CONFIG.md, `rules[]`), validated with pydantic v2.

Budget rules cap spend (or requests, tokens) over a calendar or rolling window; anomaly rules
compare a recent window of a series with its learned baseline. Unknown keys are errors.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from daemon.rules.durations import format_duration, parse_duration
from daemon.rules.types import MemberKind, Metric, Severity
from daemon.rules.windows import is_calendar, validate_window


def _to_timedelta(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_to_timedelta),
    PlainSerializer(format_duration, return_type=str),
]
WindowSpec = Annotated[str, BeforeValidator(lambda v: validate_window(str(v)))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Strict):
    """Which usage a rule looks at: globs on the key (name or id) and/or the model."""

    api_key: str | None = None
    model: str | None = None


class _RuleBase(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    scope: Scope = Scope()
    each: MemberKind | None = None
    exclude: list[str] = []
    for_: Duration = Field(default=timedelta(0), alias="for")
    keep_firing_for: Duration = timedelta(0)
    channel: str | None = None
    webhook_url: str | None = None
    mention: str | None = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _each_matches_scope(self) -> _RuleBase:
        if self.each is None:
            return self
        pattern = getattr(self.scope, self.each)
        if pattern is not None and not any(ch in pattern for ch in "*?["):
            raise ValueError(
                f"each: {self.each} contradicts scope.{self.each}: {pattern!r} names a single"
                f" {self.each}; drop `each` or make the scope a glob such as 'prod-*'"
            )
        return self


class BudgetRule(_RuleBase):
    kind: Literal["budget"]
    window: WindowSpec
    limit_usd: Decimal | None = Field(default=None, gt=0)
    limit_requests: int | None = Field(default=None, gt=0)
    limit_tokens: int | None = Field(default=None, gt=0)
    thresholds: list[Decimal] = [Decimal(100)]
    severity: Severity | dict[int, Severity] = "warning"
    forecast: bool = False

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, values: list[Decimal]) -> list[Decimal]:
        if not values:
            raise ValueError("thresholds is empty: give at least one percentage, e.g. [80, 100]")
        for value in values:
            if not Decimal(1) <= value <= Decimal(1000):
                raise ValueError(f"threshold {value} is outside 1-1000 (percent of the limit)")
        if len(set(values)) != len(values):
            raise ValueError("thresholds repeat a value: list each percentage once")
        return sorted(values)

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetRule:
        limits = [self.limit_usd, self.limit_requests, self.limit_tokens]
        if sum(limit is not None for limit in limits) != 1:
            raise ValueError(
                "a budget rule needs exactly one of limit_usd, limit_requests, limit_tokens"
            )
        if self.forecast and not is_calendar(self.window):
            raise ValueError(
                "forecast needs a calendar window (day, week, month),"
                f" not the rolling {self.window}"
            )
        if isinstance(self.severity, dict):
            missing = [t for t in self.thresholds if int(t) not in self.severity]
            if missing:
                raise ValueError(
                    f"severity has no entry for threshold(s) {', '.join(str(m) for m in missing)}:"
                    " map every threshold, e.g. {80: warning, 100: critical}"
                )
        return self

    def severity_for(self, threshold: Decimal) -> Severity:
        if isinstance(self.severity, dict):
            return self.severity[int(threshold)]
        return self.severity


class AnomalyRule(_RuleBase):
    kind: Literal["anomaly"]
    metric: Metric = "cost_usd"
    window: Duration = timedelta(hours=1)
    baseline: Duration = timedelta(days=14)
    seasonality: Literal["auto", "hour_of_week", "hour_of_day", "none"] = "auto"
    sensitivity: float = Field(default=4.0, gt=0)
    min_delta_usd: Decimal = Decimal(0)
    min_delta: float = 0.0
    min_baseline_points: int = Field(default=24, ge=1)
    direction: Literal["up", "down", "both"] = "up"
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _metric_fits_scope(self) -> AnomalyRule:
        if self.metric in ("error_rate", "response_time_ms") and (
            self.scope.api_key is not None or self.each == "api_key"
        ):
            raise ValueError(
                f"metric {self.metric} exists only per model: use scope.model / each: model,"
                " not an api_key scope"
            )
        if self.baseline <= self.window:
            raise ValueError("baseline must be longer than window, e.g. window: 1h, baseline: 14d")
        return self


class NewMemberRule(_RuleBase):
    """Fires once when an API key (or model) first shows spend after the initial backfill."""

    kind: Literal["new_member"]
    each: MemberKind
    window: Duration = timedelta(hours=24)  # how long the alert stays up; it then clears quietly
    severity: Severity = "info"


AnyRule = BudgetRule | AnomalyRule | NewMemberRule
Rule = Annotated[AnyRule, Field(discriminator="kind")]
