"""Reading the configuration (reference: docs/CONFIG.md): the YAML file, ``${VAR}`` from the
environment, ``*_file`` secrets, `rule_files`, then the models' validation.

All problems are collected and raised together as one `ConfigError` whose lines each say:
file, key path, what, and the fix.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from daemon.config.errors import ConfigError, format_errors, join_path
from daemon.config.models import Config, check_url
from daemon.rules.schema import Rule

DEFAULT_CONFIG_PATH = Path("/etc/langdock-budget/config.yaml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate ``path``; raise `ConfigError` listing every problem."""
    env = os.environ if env is None else env
    name = str(path)
    raw = _read_yaml(path, name)
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{name}: (top level): expected a mapping of settings; see config.example.yaml"]
        )
    errors: list[str] = []
    data = _interpolate(raw, env, name, "", errors)
    # a missing variable is the cause: the value it left empty is not reported again
    unset = {line.split(": ")[1] for line in errors}
    base = path.parent
    rules: list[Any] = []
    if isinstance(data.get("rules"), list):
        rules = list(data["rules"])
    elif data.get("rules") is not None:
        errors.append(f"{name}: rules: expected a list of rules (each starting with `- name:`)")
    rule_sources: list[tuple[str, int]] = [(name, len(rules))]
    for pattern in data.get("rule_files") or []:
        matches = [
            m
            for m in sorted(glob.glob(str(base / str(pattern))))
            if Path(m).resolve() != path.resolve()
        ]  # a broad glob may hit this file
        if not matches:
            errors.append(
                f"{name}: rule_files: {pattern!r} matches no file (relative to {base});"
                " fix the glob"
            )
        for match in matches:
            loaded = _interpolate(_read_rule_file(Path(match), errors), env, match, "", errors)
            rules.extend(loaded)
            rule_sources.append((match, len(loaded)))
    _resolve_secret_files(data, base, name, errors)
    config_data = {k: v for k, v in data.items() if k != "rules"}
    try:
        config = Config.model_validate(config_data)
    except ValidationError as exc:
        errors.extend(
            line for line in format_errors(exc, name, "") if line.split(": ")[1] not in unset
        )
    rule_list = _validate_rules(rules, rule_sources, errors)
    if errors:
        raise ConfigError(errors)
    config = config.model_copy(update={"rules": rule_list})
    errors.extend(f"{name}: rules: {problem}" for problem in _route_problems(config))
    if errors:
        raise ConfigError(errors)
    config = _resolve_paths(config, base)
    config._source = path
    config._warnings = _inline_secret_warnings(path, raw) + _short_recheck(config)
    return config


def _short_recheck(config: Config) -> list[str]:
    """A send can take up to 30 s (`SEND_TIMEOUT`): looking for it sooner may miss it."""
    if config.slack is None or config.slack.recheck_after >= timedelta(seconds=35):
        return []
    return [
        f"slack.recheck_after {config.slack.recheck_after.total_seconds():g}s is shorter than"
        " a send may take (30s): after a crash or a failover a message still on its way may"
        " be posted twice; 60s (the default) is safe"
    ]


def _inline_secret_warnings(path: Path, raw: dict[str, Any]) -> list[str]:
    """An inline secret in a file others can read is a leak waiting to happen."""
    try:
        readable = path.stat().st_mode & 0o004
    except OSError:
        return []
    if not readable:
        return []
    warnings = []
    inline = (
        ("langdock", "api_key"),
        ("slack", "webhook_url"),
        ("slack", "token"),
        ("web", "admin_token"),
        ("web", "read_token"),
        ("state", "password"),
    )
    for section, key in inline:
        block = raw.get(section)
        value = block.get(key) if isinstance(block, dict) else None
        if isinstance(value, str) and value and not _VAR.fullmatch(value.strip()):
            warnings.append(
                f"{path}: {section}.{key}: a secret is written inline in a world-readable file;"
                f" use ${{VAR}} or {key}_file, or chmod 600 {path}"
            )
    return warnings


def _route_problems(config: Config) -> list[str]:
    """Per-rule Slack overrides need a route that can carry them."""
    problems = []
    bot = config.slack is not None and config.slack.token is not None
    for rule in config.rules:
        if rule.channel is not None and not bot:
            problems.append(
                f"rule {rule.name} sets channel, which needs a bot token: set slack.token and"
                " slack.channel, or use webhook_url for this rule"
            )
        if rule.webhook_url is not None:
            try:
                check_url(rule.webhook_url)
            except ValueError:
                problems.append(f"rule {rule.name}: webhook_url must be an https URL")
    return problems


def _read_yaml(path: Path, name: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{name}: file not found; pass --config PATH or set LANGDOCK_BUDGET_CONFIG"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"{name}: cannot read ({exc.strerror}); check the path and permissions"]
        ) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{name}: {where}: invalid YAML ({problem}); fix the syntax"]) from None


def _read_rule_file(path: Path, errors: list[str]) -> list[Any]:
    try:
        data = _read_yaml(path, str(path))
    except ConfigError as exc:
        errors.extend(exc.lines)
        return []
    if isinstance(data, dict) and set(data) <= {"rules"}:
        data = data.get("rules") or []
    if not isinstance(data, list):
        errors.append(f"{path}: (top level): expected a list of rules or a mapping with `rules:`")
        return []
    return data


def _interpolate(
    value: Any, env: Mapping[str, str], name: str, where: str, errors: list[str]
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                errors.append(
                    f"{name}: {where or '(top level)'}: environment variable {var} is not set;"
                    f" export it or use the *_file form"
                )
                return ""
            return env[var]

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, name, join_path(where, str(k)), errors)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, name, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    return value


_SECRET_FILES = (
    ("langdock", "api_key_file", "api_key"),
    ("slack", "webhook_url_file", "webhook_url"),
    ("slack", "token_file", "token"),
    ("web", "admin_token_file", "admin_token"),
    ("web", "read_token_file", "read_token"),
    ("state", "password_file", "password"),
)


def _resolve_secret_files(data: dict[str, Any], base: Path, name: str, errors: list[str]) -> None:
    """Replace ``*_file`` settings by the secret they hold (systemd LoadCredential, mounts)."""
    for section, file_key, key in _SECRET_FILES:
        block = data.get(section)
        if not isinstance(block, dict) or block.get(file_key) is None:
            continue
        if block.get(key) is not None:
            errors.append(f"{name}: {section}: both {key} and {file_key} are set; keep one")
            continue
        secret_path = base / str(block[file_key])
        try:
            secret = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            errors.append(
                f"{name}: {section}.{file_key}: cannot read {secret_path} ({exc.strerror});"
                " check the path and that the service may read it"
            )
            continue
        if not secret:
            errors.append(
                f"{name}: {section}.{file_key}: {secret_path} is empty; put the secret in it"
            )
            continue
        block[key] = secret
        del block[file_key]


def _resolve_paths(config: Config, base: Path) -> Config:
    state = config.state
    if not state.path.is_absolute():
        state = state.model_copy(update={"path": base / state.path})
    return config.model_copy(update={"state": state})


def _validate_rules(
    rules: list[Any], sources: list[tuple[str, int]], errors: list[str]
) -> list[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(Rule)
    validated: list[Any] = []
    index = 0
    seen: dict[str, str] = {}
    for source, count in sources:
        for local_index in range(count):
            where = f"rules[{local_index}]"
            item = rules[index]
            index += 1
            try:
                rule = adapter.validate_python(item)
            except ValidationError as exc:
                errors.extend(format_errors(exc, source, where))
                continue
            if rule.name in seen:
                errors.append(
                    f"{source}: {where}.name: duplicate rule name {rule.name!r} (also in"
                    f" {seen[rule.name]}); give each rule a unique name"
                )
            seen[rule.name] = f"{source}"
            validated.append(rule)
    return validated
