"""`status` without a store (with one: tests/cli/test_once.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli.app import main
from tests.cli.conftest import SECRET, config_for


def test_status_without_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", SECRET)
    assert main(["status", "--config", str(config_for(tmp_path, "https://api.langdock.com"))]) == 0
    assert "run `langdock-budget once` first" in capsys.readouterr().out
