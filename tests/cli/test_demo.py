"""`demo`: one cycle in-process, and its banner."""

from __future__ import annotations

import argparse

import pytest

from daemon.cli.app import main
from daemon.cli.demo import banner_lines


@pytest.mark.usefixtures("demo_port")
def test_demo_runs_a_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--cycles", "1", "--backfill", "2h", "--log-level", "warning"]) == 0
    out = capsys.readouterr().out
    assert "demo: simulator at http://127.0.0.1:" in out
    assert "prod-web (key_4f1a9c)" in out and "--- poll 1 ---" in out
    assert "per-key-daily" in out and "model-spend-spike" in out


def test_the_demo_banner_has_room_for_the_metrics_urls() -> None:
    args = argparse.Namespace(interval="15s", backfill="26h", spike_after="30s")
    lines = banner_lines(args, "http://127.0.0.1:5000", "/tmp/demo-x")
    assert lines[0] == (
        "demo: simulator at http://127.0.0.1:5000, throw-away store in /tmp/demo-x; Ctrl-C stops."
    )
    assert len(lines) == 2 and "'nightly-batch' key starts spiking 30s in:" in lines[1]
    more = banner_lines(
        args,
        "http://127.0.0.1:5000",
        "/tmp/demo-x",
        metrics_url="http://127.0.0.1:9464/metrics",
        health_url="http://127.0.0.1:9464/healthz",
    )
    assert more[1:3] == [
        "demo: Prometheus metrics at http://127.0.0.1:9464/metrics",
        "demo: health check at http://127.0.0.1:9464/healthz",
    ]
