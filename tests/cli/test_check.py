"""`check`: a valid and an invalid config."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli.app import main
from tests.cli.conftest import SECRET, config_for


def test_check_valid_and_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TEST_KEY", SECRET)
    path = config_for(tmp_path, "https://api.langdock.com")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(valid)" in out and "Europe/Berlin" in out and SECRET not in out
    path.write_text(path.read_text() + "rules: [{name: x, kind: budget, window: 2 weeks}]\n")
    monkeypatch.setenv("LANGDOCK_BUDGET_CONFIG", str(path))  # the default when --config is absent
    assert main(["check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{path}: rules[0].window: unknown window '2 weeks'")
