"""langdock-budget: budget and anomaly alerting for Langdock API usage."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("langdock-budget")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+src"
