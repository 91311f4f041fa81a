"""docs/CONFIG.md is what the models say today, and every key in it is described."""

from __future__ import annotations

from pathlib import Path

from daemon.config_reference import render, undocumented

ROOT = Path(__file__).resolve().parent.parent


def test_every_key_is_described() -> None:
    assert undocumented() == []


def test_docs_config_md_is_current() -> None:
    assert (ROOT / "docs" / "CONFIG.md").read_text() == render(), "run `make docs`"


def test_the_reference_knows_the_bounds_the_validator_enforces() -> None:
    text = render()
    assert "| `backfill_max_requests_per_minute` | integer | 90 | ≥ 1, ≤ 10,000 |" in text
    assert "| `window` | duration | 1h |" in text  # anomaly
    assert "| `for` | duration | 0s |" in text  # the alias, not the Python name
