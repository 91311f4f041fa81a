"""Logs are JSON on stderr and never carry a secret."""

from __future__ import annotations

import io
import json

import structlog

from daemon.logs import REDACTED, configure_logging, redactor


def test_secrets_are_redacted_everywhere() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    redactor.set_secrets(["sk-live-123456", "https://hooks.slack.com/services/T/B/abc"])
    try:
        log = structlog.get_logger("test")
        log.info(
            "event",
            url="https://hooks.slack.com/services/T/B/abc",
            nested={"header": "Bearer sk-live-123456", "items": ["x sk-live-123456 y"]},
            token="xoxb-not-known-but-named",
        )
        try:
            raise RuntimeError("failed with key sk-live-123456")
        except RuntimeError:
            log.exception("boom")
        log.debug("debug level too", detail="sk-live-123456")
    finally:
        redactor.set_secrets([])
    text = stream.getvalue()
    assert "sk-live-123456" not in text and "hooks.slack.com" not in text
    assert "xoxb-not-known-but-named" not in text
    first = json.loads(text.splitlines()[0])
    assert first["url"] == REDACTED and first["token"] == REDACTED
    assert first["nested"]["header"] == f"Bearer {REDACTED}"
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert len(text.splitlines()) == 3


def test_level_filtering() -> None:
    stream = io.StringIO()
    configure_logging("console", "warning", stream=stream)
    structlog.get_logger("test").info("hidden")
    structlog.get_logger("test").warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
