"""Made-up alerts for `test-alert`: one budget and one anomaly message, rendered as real ones."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from daemon.notify.slack.blocks import SlackMessage, anomaly_message, budget_message
from daemon.rules.anomaly import AnomalyEvaluation
from daemon.rules.budget import BudgetEvaluation, Forecast
from daemon.rules.lifecycle import AlertKey, AlertState
from daemon.rules.members import MemberUsage
from daemon.rules.series import Series
from daemon.rules.types import Member
from daemon.rules.windows import Period, bucket_start, calendar_period


def sample_messages(tz: ZoneInfo, now: datetime) -> list[SlackMessage]:
    """One budget and one anomaly message with made-up numbers, for `test-alert`."""
    member = Member("key_sample", "example-key (key_sample)", "api_key")
    month = calendar_period("month", now, tz)
    hour = bucket_start(now, tz)
    last_hour = int((hour - timedelta(hours=1)).timestamp())
    usage = MemberUsage(
        member,
        Series({}),
        parts={
            "gpt-4o": Series({last_hour: Decimal("45.00")}),
            "claude-sonnet-4": Series({last_hour: Decimal("3.20")}),
        },
    )
    budget = BudgetEvaluation(
        "test-alert-sample-budget",
        member,
        "month",
        month,
        now,
        "usd",
        Decimal("412.50"),
        Decimal(500),
        Forecast(Decimal("590.10"), "hour_of_week", now + timedelta(days=5)),
        (),
        usage,
    )
    budget_state = AlertState(
        AlertKey(budget.rule, member.id, "80", month.id), "firing", now, now, now, None, "warning"
    )
    anomaly = AnomalyEvaluation(
        "test-alert-sample-anomaly",
        member,
        "cost_usd",
        Period("w", hour - timedelta(hours=1), hour),
        Period("baseline", hour - timedelta(days=14, hours=1), hour - timedelta(hours=1)),
        "hour_of_week",
        336,
        Decimal("48.20"),
        Decimal("6.10"),
        9.4,
        (),
        "",
        usage,
    )
    anomaly_state = AlertState(
        AlertKey(anomaly.rule, member.id, "up", ""), "firing", now, now, now, None, "critical"
    )
    return [budget_message(budget, budget_state, tz), anomaly_message(anomaly, anomaly_state, tz)]
