"""A configuration's problems as lines a user reads: file, key path, what, and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

# a key whose value is never echoed back in an error line
_SECRET_KEYS = {"api_key", "webhook_url", "token", "admin_token", "read_token"}


class ConfigError(Exception):
    """Invalid configuration; ``lines`` holds one self-contained message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def join_path(where: str, key: str) -> str:
    """``where.key``, or ``key`` at the top level."""
    return f"{where}.{key}" if where else key


def format_errors(exc: ValidationError, name: str, prefix: str) -> list[str]:
    """One line per pydantic error in the file ``name``; ``prefix`` is the key path of what was
    validated (``rules[3]`` for one rule, empty for the whole file)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = _loc(prefix, error["loc"])
        if loc.rsplit(".", 1)[-1] in _SECRET_KEYS:
            error = {**error, "input": "<secret>"}  # never echo a secret back
        message = _explain(error)
        if loc and message.startswith(f"{loc}."):  # "poll: poll.interval ...": say it once
            lines.append(f"{name}: {message}")
        else:
            lines.append(f"{name}: {loc or '(top level)'}: {message}")
    return lines


def _loc(prefix: str, parts: Iterable[int | str]) -> str:
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("budget", "anomaly", "function-after[_one_key()]"):
            continue  # discriminator tags and validator names say nothing to a user
        elif not str(part).startswith("function-"):
            text = join_path(text, str(part))
    return text


def _explain(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key; remove it or fix its spelling (see config.example.yaml)"
    if kind == "missing":
        return "required key is missing; add it (see config.example.yaml)"
    if kind == "union_tag_invalid":
        return f"unknown kind {error['input'].get('kind')!r}; use kind: budget or kind: anomaly"
    if kind == "union_tag_not_found":
        return "rule has no kind; add kind: budget or kind: anomaly"
    if kind == "literal_error":
        return f"invalid value {error['input']!r}: {msg.lower()}"
    if msg.startswith(("Value error, ", "Assertion failed, ")):
        return msg.split(", ", 1)[1]
    return f"{msg} (got {error.get('input')!r})"
