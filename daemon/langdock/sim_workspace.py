"""The simulated workspace behind `daemon.langdock.simulator`: keys, models and their usage.

Usage is synthetic but deterministic: each (key, model) pair has a request rate that follows
an hour-of-week profile, and counts come from integrating that rate, so any split of a range
into parts adds up to exactly the whole. One key ("nightly-batch") spikes on one model from
``spike_start`` on, so the demo shows movement within a minute. `SimWorkspace` writes the
export CSVs the simulator serves; it knows nothing of HTTP.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

_ORIGIN = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: hour-of-week 0
_WEEK = 168
_PERIOD = 7 * _WEEK  # the traffic pattern repeats every 7 weeks
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class SimKey:
    id: str
    name: str
    weight: float


@dataclass(frozen=True)
class SimModel:
    name: str
    provider: str
    input_price: Decimal  # USD per 1M tokens
    output_price: Decimal
    prompt_per_request: int
    completion_per_request: int
    error_rate: float
    latency_ms: int


DEFAULT_KEYS = (
    SimKey("key_4f1a9c", "prod-web", 1.0),
    SimKey("key_7b22d0", "prod-search", 0.6),
    SimKey("key_0c93e1", "staging", 0.15),
    SimKey("key_a5e870", "nightly-batch", 0.3),
    SimKey("key_d61f2b", "intern-sandbox", 0.05),
)
DEFAULT_MODELS = (
    SimModel("gpt-4o", "openai", Decimal("2.50"), Decimal("10.00"), 900, 350, 0.01, 1800),
    SimModel(
        "claude-sonnet-4", "anthropic", Decimal("3.00"), Decimal("15.00"), 1200, 420, 0.008, 2400
    ),
    SimModel("mistral-large", "mistral", Decimal("2.00"), Decimal("6.00"), 700, 260, 0.015, 1300),
    SimModel("text-embedding-3-small", "openai", Decimal("0.02"), Decimal("0"), 500, 0, 0.002, 120),
)
SPIKE_KEY = "nightly-batch"
SPIKE_MODEL = "claude-sonnet-4"


def _hour_profile() -> list[float]:
    """Relative traffic per hour (UTC): busy office hours, quiet weekends, +-15 % noise.

    The noise is fixed (seeded) and the pattern repeats every `_PERIOD` hours, which keeps
    the integral in closed form: any range is counted exactly, whatever its length.
    """
    noise = random.Random(20261123)
    profile = []
    for index in range(_PERIOD):
        day, hour = divmod(index % _WEEK, 24)
        daily = (
            0.25 + 0.75 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.25
        )
        profile.append(daily * (0.35 if day >= 5 else 1.0) * noise.uniform(0.85, 1.15))
    return profile


_PROFILE = _hour_profile()
_PREFIX = [0.0]
for _value in _PROFILE:
    _PREFIX.append(_PREFIX[-1] + _value)


def _profile_integral(t: datetime) -> float:
    """∫ profile from the origin to ``t``, in profile-hours."""
    hours = (t - _ORIGIN).total_seconds() / 3600
    periods, rest = divmod(hours, _PERIOD)
    whole = int(rest)
    return periods * _PREFIX[_PERIOD] + _PREFIX[whole] + (rest - whole) * _PROFILE[whole]


class SimWorkspace:
    """The keys and models of a simulated workspace, their usage, and its export CSVs."""

    def __init__(
        self,
        *,
        keys: tuple[SimKey, ...] = DEFAULT_KEYS,
        models: tuple[SimModel, ...] = DEFAULT_MODELS,
        byok: bool = True,
        requests_per_hour: float = 1200.0,
        spike_start: datetime | None = None,
        spike_factor: float = 40.0,
        spike_duration: timedelta = timedelta(minutes=45),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        model_header: str = "model",
    ) -> None:
        self.keys, self.models, self.byok = keys, models, byok
        self.requests_per_hour = requests_per_hour
        self.spike_start, self.spike_factor, self.spike_duration = (
            spike_start,
            spike_factor,
            spike_duration,
        )
        self.clock = clock
        self.model_header = model_header

    def _mix(self, key_index: int, model_index: int) -> float:
        """How much of a key's traffic goes to a model (deterministic, sums to ~1 per key)."""
        weights = [((key_index + 1) * (m + 2)) % 5 + 1 for m in range(len(self.models))]
        return weights[model_index] / sum(weights)

    def _cumulative_requests(self, key_index: int, model_index: int, t: datetime) -> float:
        key, model = self.keys[key_index], self.models[model_index]
        rate = self.requests_per_hour * key.weight * self._mix(key_index, model_index)
        total = rate * _profile_integral(t)
        if self.spike_start is not None and key.name == SPIKE_KEY and model.name == SPIKE_MODEL:
            spike_end = self.spike_start + self.spike_duration
            overlap = (min(t, spike_end) - self.spike_start).total_seconds()
            total += max(0.0, overlap) / 3600 * self.requests_per_hour * self.spike_factor
        return total

    def pair_usage(
        self, key_index: int, model_index: int, start: datetime, end: datetime
    ) -> dict[str, Any]:
        """Exact usage of one (key, model) over [start, end), clamped to the simulator's now."""
        end = min(end, self.clock())
        if end <= start:
            return {"requests": 0, "prompt": 0, "completion": 0, "errors": 0, "cost": Decimal(0)}
        model = self.models[model_index]
        a = self._cumulative_requests(key_index, model_index, start)
        b = self._cumulative_requests(key_index, model_index, end)
        requests = math.floor(b) - math.floor(a)
        prompt = math.floor(b * model.prompt_per_request) - math.floor(a * model.prompt_per_request)
        completion = math.floor(b * model.completion_per_request) - math.floor(
            a * model.completion_per_request
        )
        errors = math.floor(b * model.error_rate) - math.floor(a * model.error_rate)
        cost = prompt * model.input_price / _MILLION + completion * model.output_price / _MILLION
        return {
            "requests": requests,
            "prompt": prompt,
            "completion": completion,
            "errors": errors,
            "cost": cost,
        }

    def api_keys_csv(self, start: datetime, end: datetime, *, grouped: bool) -> tuple[str, int]:
        header = ["period_start", "period_end", "org_id", "api_key_id", "api_key_name"]
        if grouped:
            header.append(self.model_header)
        header += ["requests", "total_cost_usd"]
        if self.byok:
            header += [
                "sum_prompt_tokens",
                "sum_completion_tokens",
                "cached_prompt_tokens",
                "cache_creation_tokens",
                "no_cache_tokens",
            ]
        lines = [",".join(header)]
        for ki, key in enumerate(self.keys):
            groups = (
                [[mi] for mi in range(len(self.models))]
                if grouped
                else [list(range(len(self.models)))]
            )
            for group in groups:
                usages = [self.pair_usage(ki, mi, start, end) for mi in group]
                requests = sum(u["requests"] for u in usages)
                cost = sum((u["cost"] for u in usages), Decimal(0))
                if requests == 0 and not cost:  # a sliver of a call still has its tokens
                    continue
                row = [start.isoformat(), end.isoformat(), "org_sim", key.id, _csv_text(key.name)]
                if grouped:
                    row.append(self.models[group[0]].name)
                row += [str(requests), str(cost)]
                if self.byok:
                    prompt = sum(u["prompt"] for u in usages)
                    completion = sum(u["completion"] for u in usages)
                    row += [str(prompt), str(completion), "0", "0", str(prompt)]
                lines.append(",".join(row))
        return "\r\n".join(lines) + "\r\n", len(lines) - 1

    def models_csv(self, start: datetime, end: datetime) -> tuple[str, int]:
        header = [
            "period_start",
            "period_end",
            "org_id",
            "name",
            "provider",
            "bring_your_keys",
            "requests",
        ]
        if self.byok:
            header += [
                "sum_prompt_tokens",
                "sum_completion_tokens",
                "sum_cached_prompt_tokens",
                "sum_cache_creation_tokens",
                "no_cache_tokens",
                "total_cost_usd",
            ]
        header += ["error_count", "avg_response_time_ms"]
        lines = [",".join(header)]
        for mi, model in enumerate(self.models):
            usages = [self.pair_usage(ki, mi, start, end) for ki in range(len(self.keys))]
            requests = sum(u["requests"] for u in usages)
            if requests == 0 and not any(u["cost"] or u["errors"] for u in usages):
                continue
            row = [
                start.isoformat(),
                end.isoformat(),
                "org_sim",
                model.name,
                model.provider,
                str(self.byok).lower(),
                str(requests),
            ]
            if self.byok:
                prompt = sum(u["prompt"] for u in usages)
                completion = sum(u["completion"] for u in usages)
                cost = sum((u["cost"] for u in usages), Decimal(0))
                row += [str(prompt), str(completion), "0", "0", str(prompt), str(cost)]
            row += [str(sum(u["errors"] for u in usages)), str(model.latency_ms)]
            lines.append(",".join(row))
        return "\r\n".join(lines) + "\r\n", len(lines) - 1


def _csv_text(value: str) -> str:
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
