"""The YAML configuration (reference: docs/CONFIG.md): `models` holds the pydantic models and
their checks, `load` reads the file (``${VAR}``, ``*_file`` secrets, `rule_files`) and
validates it, `errors` turns every problem into one line (file, key path, what, and the fix).

`load_config` collects all problems and raises them together as one `ConfigError`.
"""

from daemon.config.errors import ConfigError
from daemon.config.load import DEFAULT_CONFIG_PATH, load_config
from daemon.config.models import (
    BACKFILL_PACE_LIMIT,
    Config,
    DigestConfig,
    LangdockConfig,
    MetricsConfig,
    PollConfig,
    SlackConfig,
    StateConfig,
    WebConfig,
    check_header_value,
    check_url,
)

__all__ = [
    "BACKFILL_PACE_LIMIT",
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DigestConfig",
    "LangdockConfig",
    "MetricsConfig",
    "PollConfig",
    "SlackConfig",
    "StateConfig",
    "WebConfig",
    "check_header_value",
    "check_url",
    "load_config",
]
