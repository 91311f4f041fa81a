"""Usage rows and totals shared by the store's tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from daemon.langdock.csv import KeyUsage
from daemon.store import Store

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
H = timedelta(hours=1)


def usage(key: str, model: str, cost: str, requests: int = 1, name: str | None = None) -> KeyUsage:
    return KeyUsage(
        key, name or key, model, requests, Decimal(cost), prompt_tokens=10, completion_tokens=5
    )


def totals(store: Store, start: datetime, end: datetime) -> dict[tuple[str, str], Decimal]:
    return {(t.api_key_id, t.model): t.cost_usd for t in store.key_model_totals(start, end)}
