"""The generated references in docs/ are what the code says today (`make docs`), and every
configuration key in them is described."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon import config_reference, metrics_reference
from daemon.cli import reference as cli_reference
from daemon.config_reference import render, undocumented

ROOT = Path(__file__).resolve().parent.parent


def test_every_key_is_described() -> None:
    assert undocumented() == []


@pytest.mark.parametrize(
    ("name", "renderer"),
    [
        ("CONFIG.md", config_reference.render),
        ("CLI.md", cli_reference.render),
        ("METRICS.md", metrics_reference.render),
    ],
)
def test_the_generated_docs_are_current(name: str, renderer: Callable[[], str]) -> None:
    assert (ROOT / "docs" / name).read_text() == renderer(), f"docs/{name}: run `make docs`"


def test_the_references_name_what_users_rely_on() -> None:
    text = render()
    assert "| `backfill_max_requests_per_minute` | integer | 90 | ≥ 1, ≤ 10,000 |" in text
    assert "| `for` | duration | 0s |" in text  # the alias, not the Python name
    cli = cli_reference.render()
    for command in ("run", "once", "status", "check", "silence add", "rules export-prometheus"):
        assert f"## `langdock-budget {command}`" in cli
    metrics = metrics_reference.render()
    for name in ("langdock_budget_spend_usd", "langdock_rule_ready", "langdock_outbox_pending"):
        assert f"| `{name}` |" in metrics


def test_every_test_the_docs_cite_exists() -> None:
    """docs/RELIABILITY.md and the others name the test that proves each row: it must exist."""
    cited = set()
    for doc in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        cited |= set(re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", doc.read_text()))
    assert len(cited) > 30
    for path, name in sorted(cited):
        assert (ROOT / path).is_file(), path
        if name:
            assert f"def {name}(" in (ROOT / path).read_text(), f"{path}::{name}"
