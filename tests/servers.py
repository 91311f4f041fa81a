"""Real servers the tests start (Prometheus, Chromium, PostgreSQL): where their binaries are.

Locally a test whose server is not installed is skipped with a one-line reason. CI
(`.ci/run`) installs the servers and sets ``LANGDOCK_BUDGET_REQUIRE_SERVERS=1``: there a
missing binary fails the test instead, so nothing that needs a real server is skipped in CI.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("LANGDOCK_BUDGET_REQUIRE_SERVERS") == "1"


def binary(name: str, package: str, *candidates: str) -> str:
    """The path of ``name`` (or the first of ``candidates`` that exists); a skip with a
    one-line reason when absent, or a failure where CI requires the server."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    reason = f"{name} not installed (Debian package {package}; CI installs it)"
    if REQUIRED:
        pytest.fail(f"{reason}: required here (LANGDOCK_BUDGET_REQUIRE_SERVERS=1)")
    pytest.skip(reason)
