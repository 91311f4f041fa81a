"""structlog set-up: JSON (or console) lines on stderr, with secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]
REDACTED = "[redacted]"
_SECRET_KEYS = {"api_key", "token", "webhook_url", "authorization", "password", "secret"}
# shaped like a credential whoever's it is: a bearer token, a Slack token, a webhook path
_SHAPES = (
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]{6,}"), rf"\1{REDACTED}"),
    (re.compile(r"\bxox[a-z]-[A-Za-z0-9-]{6,}"), REDACTED),
    (re.compile(r"(hooks\.slack\.com/services/)[^\s\"'<>]+"), rf"\1{REDACTED}"),
)


class SecretRedactor:
    """A processor that blanks known secret values anywhere in an event, and secret-named keys."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def redact(self, value: Any) -> Any:
        """``value`` without any configured secret or credential-shaped text (strings, and
        strings inside dicts, lists and exceptions)."""
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            for pattern, replacement in _SHAPES:
                value = pattern.sub(replacement, value)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in _SECRET_KEYS else self.redact(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        for key in list(event):
            event[key] = REDACTED if key.lower() in _SECRET_KEYS else self.redact(event[key])
        return event


redactor = SecretRedactor()


def redact(text: str) -> str:
    """Text from outside (an error body, Slack's answer) made safe to print, store, log or
    send: every configured secret and anything shaped like a credential is replaced."""
    return str(redactor.redact(text))


def default_log_format(env: str | None = None, stream: Any = None) -> LogFormat:
    """``$LANGDOCK_BUDGET_LOG_FORMAT`` when set, else console lines for a person at a
    terminal and JSON for everything else (journald, containers, files, pipes)."""
    if env == "console" or env == "json":
        return "console" if env == "console" else "json"
    stream = sys.stderr if stream is None else stream
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """Looks ``sys.stderr`` up at logging time, so a replaced stderr (tests) is honoured."""
    return structlog.PrintLogger(sys.stderr)


def configure_logging(fmt: LogFormat = "json", level: str = "info", stream: Any = None) -> None:
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=_stderr_logger if stream is None else structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
